#!/usr/bin/env python3
"""Writes the fuzz seeds that no other fixture provides (Fixtures/fuzz/<target>/seed-*).

Standard library only. Needs the model cache of `make models` for the tokenizer seeds (real
tokenizer.json files cut to their first entries). Re-running it rewrites the same bytes.

  ggml-blocks     one seed per ggml type with a dequantizer: its id byte, then two blocks of
                  bytes from a fixed-seed generator
  peft-adapter    the committed PEFT adapter fixtures packed as the target reads them
                  (2-byte little-endian config length, adapter_config.json,
                  adapter_model.safetensors)
  training-data   the first lines of real training files, after the task byte
  tokenizer-json  MiniLM (WordPiece), XLM-R (Unigram) and SmolLM2 (byte-level BPE) tokenizers
                  cut to their first entries, every other section kept
  flare-config    flare_config.json variants: each fusion, each source setting
  shard-index     variants of the committed shard index
  dicts           libFuzzer dictionaries of format keywords (json, safetensors, gguf)
  llama-config, bert-config   the config tests' semantic cases (Fixtures/llama and
                  Fixtures/encoders malformed-config.json), each as a whole config.json
"""
import json
import os
import random
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(ROOT, "Fixtures")
OUT = os.path.join(FIX, "fuzz")
CACHE = os.environ.get("FLARE_CACHE", os.path.expanduser("~/.cache/flare"))

# (id, name, elements per block, bytes per block) of the ggml types Flare dequantizes.
GGML = [
    (0, "f32", 1, 4), (1, "f16", 1, 2), (2, "q4_0", 32, 18), (3, "q4_1", 32, 20),
    (6, "q5_0", 32, 22), (7, "q5_1", 32, 24), (8, "q8_0", 32, 34), (10, "q2_k", 256, 84),
    (11, "q3_k", 256, 110), (12, "q4_k", 256, 144), (13, "q5_k", 256, 176),
    (14, "q6_k", 256, 210), (15, "q8_k", 256, 292), (20, "iq4_nl", 32, 18),
    (23, "iq4_xs", 256, 136), (24, "i8", 1, 1), (25, "i16", 1, 2), (26, "i32", 1, 4),
    (27, "i64", 1, 8), (28, "f64", 1, 8), (30, "bf16", 1, 2), (39, "mxfp4", 32, 17),
]


def write(target, name, data):
    folder = os.path.join(OUT, target)
    os.makedirs(folder, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def ggml_blocks():
    rng = random.Random(20261204)
    for type_id, name, block, size in GGML:
        count = 2 if block > 1 else 64
        write("ggml-blocks", f"seed-{name}", bytes([type_id]) + bytes(rng.getrandbits(8) for _ in range(count * size)))


def peft_adapters():
    peft = os.path.join(FIX, "peft")
    for entry in sorted(os.listdir(peft)):
        folder = os.path.join(peft, entry)
        config = os.path.join(folder, "adapter_config.json")
        weights = os.path.join(folder, "adapter_model.safetensors")
        if not (os.path.isfile(config) and os.path.isfile(weights)):
            continue
        if os.path.getsize(weights) > 64 * 1024:
            continue
        config_bytes = open(config, "rb").read()
        write("peft-adapter", f"seed-{entry}", struct.pack("<H", len(config_bytes)) + config_bytes + open(weights, "rb").read())


def training_data():
    sources = [
        ("encoder-run-train", os.path.join(FIX, "training/encoder-run/train.jsonl"), 1),
        ("llama-run-train", os.path.join(FIX, "training/llama-run/train.jsonl"), 0),
        ("bible-lm", os.path.join(FIX, "data/bible/lm-train.jsonl"), 0),
        ("bible-train-es-mt", os.path.join(FIX, "data/bible/train.es-mt"), 3),
        ("bible-test-es", os.path.join(FIX, "data/bible/test.es"), 3),
    ]
    for name, path, task in sources:
        lines = open(path, "rb").read().split(b"\n")[:12]
        write("training-data", f"seed-{name}", bytes([task]) + b"\n".join(lines) + b"\n")


def cut_tokenizer(path, keep):
    tok = json.load(open(path, encoding="utf-8"))
    model = tok["model"]
    if model["type"] == "Unigram":
        model["vocab"] = model["vocab"][:keep]
        kept = {piece for piece, _ in model["vocab"]}
        ids = set(range(len(model["vocab"])))
    else:
        model["vocab"] = {p: i for p, i in model["vocab"].items() if i < keep}
        kept = set(model["vocab"])
        ids = set(model["vocab"].values())
        if "merges" in model:
            def parts(m):
                return m.split(" ", 1) if isinstance(m, str) else m
            model["merges"] = [m for m in model["merges"]
                               if all(p in kept for p in parts(m)) and "".join(parts(m)) in kept]
    tok["added_tokens"] = [t for t in tok.get("added_tokens", []) if t["id"] in ids]
    return json.dumps(tok, ensure_ascii=False, indent=None).encode("utf-8")


def tokenizers():
    sources = [
        ("wordpiece-minilm", os.path.join(CACHE, "models/all-MiniLM-L6-v2/tokenizer.json"), 400),
        ("unigram-xlmr", os.path.join(CACHE, "models/xlmr-tokenizer/tokenizer.json"), 400),
        ("bpe-smollm2", os.path.join(CACHE, "models/smollm2-hf/tokenizer.json"), 600),
        # 64 entries: the vocabulary size of Fixtures/peft/base-llama (the kill tests convert
        # that model with this tokenizer).
        ("bpe-smollm2-64", os.path.join(CACHE, "models/smollm2-hf/tokenizer.json"), 64),
    ]
    for name, path, keep in sources:
        if not os.path.isfile(path):
            raise SystemExit(f"{path} is missing: run `make models` (and the SmolLM2 conversion) first")
        write("tokenizer-json", f"seed-{name}.json", cut_tokenizer(path, keep))


def flare_configs():
    base = {
        "flare_version": 1, "fusion": "add_relu", "fused_modules": ["q_proj", "v_proj"],
        "causal": True,
        "source": {"state": "block_input", "normalize": False, "padding_side": "left",
                   "max_length": 128, "weights": "without_adapter"},
        "cross_attention": {"heads": 1, "dropout": 0.0},
    }
    for fusion in ["add", "mul", "add_relu", "matmul", "matmul_relu", "cross-attention"]:
        config = json.loads(json.dumps(base))
        config["fusion"] = fusion
        if fusion == "cross-attention":
            config["cross_attention"] = {"heads": 2, "dropout": 0.1}
        write("flare-config", f"seed-{fusion}.json", json.dumps(config, indent=2))
    encoder = json.loads(json.dumps(base))
    encoder.update(causal=False, fused_modules=["query", "value"])
    encoder["source"].update(padding_side="right", normalize=True)
    write("flare-config", "seed-encoder.json", json.dumps(encoder, indent=2))


def shard_indexes():
    index = json.load(open(os.path.join(FIX, "safetensors/sharded/model.safetensors.index.json")))
    write("shard-index", "seed-no-metadata.json", json.dumps({"weight_map": index["weight_map"]}))
    one = dict(index)
    one["weight_map"] = {k: v for k, v in list(index["weight_map"].items())[:2]}
    write("shard-index", "seed-partial.json", json.dumps(one))


def config_cases():
    # The semantic cases of the config tests, each written out as a whole config.json.
    for target, cases in [("llama-config", "llama/malformed-config.json"),
                          ("bert-config", "encoders/malformed-config.json")]:
        spec = json.load(open(os.path.join(FIX, cases)))
        base = json.load(open(os.path.join(FIX, spec["base"], "config.json")))
        for case in spec["cases"]:
            config = dict(base)
            config.update(case.get("set") or {})
            for key in case.get("drop") or []:
                config.pop(key, None)
            write(target, f"seed-case-{case['name']}.json", json.dumps(config, indent=2))


def dictionaries():
    # libFuzzer dictionaries (scripts/fuzz.sh picks one per target): format keywords, byte
    # escapes for everything outside printable ASCII.
    def write_dict(name, words):
        folder = os.path.join(OUT, "dicts")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, name), "w") as f:
            f.write(f"# libFuzzer dictionary for the {name[:-5]} targets (Fixtures/fuzz/make_seeds.py)\n")
            for i, word in enumerate(words):
                data = word.encode("utf-8") if isinstance(word, str) else word
                text = "".join(chr(b) if 32 <= b < 127 and b not in (0x22, 0x5C) else "\\x%02x" % b for b in data)
                f.write(f'k{i}="{text}"\n')
    json_tokens = ['{', '}', '[', ']', ':', ',', '"', 'true', 'false', 'null', '-0', '1e309', '0.5',
                   '\\u0000', '\\ud800', '\\"', '"":', '18446744073709551616', '-9223372036854775809']
    quoted = lambda words: [f'"{w}"' for w in words]
    safetensors = quoted(['dtype', 'shape', 'data_offsets', '__metadata__', 'F32', 'F16', 'BF16', 'F64', 'I8',
                          'U8', 'I16', 'I32', 'I64', 'BOOL', 'F8_E4M3', 'F8_E5M2', 'F4', 'F6_E2M3', 'F6_E3M2',
                          'E8M0', 'format', 'pt', 'weight_map', 'metadata', 'total_size',
                          'model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'])
    config = quoted(['hidden_size', 'num_hidden_layers', 'num_attention_heads', 'num_key_value_heads',
                     'intermediate_size', 'vocab_size', 'max_position_embeddings', 'rms_norm_eps', 'rope_theta',
                     'rope_scaling', 'head_dim', 'tie_word_embeddings', 'model_type', 'llama', 'bert',
                     'xlm-roberta', 'layer_norm_eps', 'type_vocab_size', 'hidden_act', 'gelu', 'silu', 'id2label',
                     'label2id', 'pad_token_id', 'bos_token_id', 'eos_token_id', 'architectures', 'torch_dtype'])
    peft = quoted(['r', 'lora_alpha', 'target_modules', 'modules_to_save', 'use_rslora', 'use_dora',
                   'fan_in_fan_out', 'bias', 'none', 'all', 'lora_only', 'rank_pattern', 'alpha_pattern',
                   'init_lora_weights', 'peft_type', 'LORA', 'task_type', 'CAUSAL_LM', 'SEQ_CLS',
                   'base_model.model.', '.lora_A.weight', '.lora_B.weight', 'lora_magnitude_vector',
                   'layers_to_transform', 'layers_pattern'])
    flare = quoted(['flare_version', 'fusion', 'fused_modules', 'causal', 'source', 'state', 'block_input',
                    'normalize', 'padding_side', 'left', 'right', 'max_length', 'weights', 'without_adapter',
                    'cross_attention', 'heads', 'dropout', 'add', 'mul', 'add_relu', 'matmul', 'matmul_relu',
                    'cross-attention'])
    tokenizer = quoted(['model', 'type', 'BPE', 'WordPiece', 'Unigram', 'vocab', 'merges', 'added_tokens',
                        'normalizer', 'pre_tokenizer', 'post_processor', 'decoder', 'ByteLevel', 'Metaspace',
                        'Sequence', 'Split', 'BertPreTokenizer', 'TemplateProcessing', 'RobertaProcessing',
                        'precompiled_charsmap', 'unk_token', 'unk_id', 'continuing_subword_prefix', '##',
                        'byte_fallback', 'special', 'content', '\u2581', '\u0120'])
    training = quoted(['text', 'label', 'prompt', 'completion', 'text_pair', 'source']) + ['\n', '\r\n']
    gguf = ['GGUF', 'general.architecture', 'general.alignment', 'general.type', 'adapter', 'adapter.type',
            'lora', 'adapter.lora.alpha', 'llama', 'llama.block_count', 'llama.context_length',
            'llama.embedding_length', 'llama.feed_forward_length', 'llama.attention.head_count',
            'llama.attention.head_count_kv', 'llama.rope.freq_base', 'llama.attention.layer_norm_rms_epsilon',
            'llama.vocab_size', 'llama.rope.dimension_count', 'tokenizer.ggml.model', 'gpt2',
            'tokenizer.ggml.pre', 'smollm', 'tokenizer.ggml.tokens', 'tokenizer.ggml.scores',
            'tokenizer.ggml.token_type', 'tokenizer.ggml.merges', 'tokenizer.ggml.bos_token_id',
            'tokenizer.ggml.eos_token_id', 'token_embd.weight', 'output.weight', 'blk.0.attn_q.weight',
            'blk.0.attn_q.weight.lora_a', 'blk.0.attn_q.weight.lora_b',
            # value types as u32 (string 8, array 9, uint64 10, float64 12) and a u64 count
            bytes([8, 0, 0, 0]), bytes([9, 0, 0, 0]), bytes([10, 0, 0, 0]), bytes([12, 0, 0, 0]),
            bytes([8, 0, 0, 0, 0, 0, 0, 0])]
    write_dict("json.dict", json_tokens + safetensors + config + peft + flare + tokenizer + training)
    write_dict("safetensors.dict", json_tokens + safetensors + peft)
    write_dict("gguf.dict", gguf)


if __name__ == "__main__":
    dictionaries()
    config_cases()
    ggml_blocks()
    peft_adapters()
    training_data()
    tokenizers()
    flare_configs()
    shard_indexes()

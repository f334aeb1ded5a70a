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


if __name__ == "__main__":
    config_cases()
    ggml_blocks()
    peft_adapters()
    training_data()
    tokenizers()
    flare_configs()
    shard_indexes()

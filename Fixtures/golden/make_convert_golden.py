#!/usr/bin/env python3
"""Regenerate Fixtures/golden/convert-smollm2.json, the oracle for `flare-convert`.

`flare-convert` turns a GGUF file into a Hugging Face folder (config.json,
tokenizer.json, tokenizer_config.json, model.safetensors) and back. This file
states what that conversion must produce for the real SmolLM2 GGUF,
${FLARE_CACHE:-~/.cache/flare}/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
(run scripts/fetch-models.sh first). Sections:

quantized
    Every tensor of the GGUF in file order. Its values are dequantized with
    `gguf.quants.dequantize` (float32, GGUF layout). `dequant_crc32` is the
    CRC-32 of those float32 bytes. `requant_crc32[TYPE]` is the CRC-32 of
    `gguf.quants.quantize(values, TYPE)` for F32, F16, BF16, Q8_0, Q4_0, Q4_1,
    Q5_0 and Q5_1; 1-D tensors (the norms) get F32 only, since converters keep
    them F32. This is what re-quantizing a converted F32 SmolLM2 must give, in
    GGUF layout, that is after attn_q/attn_k are permuted back for RoPE.
    `source_crc32` is the CRC-32 of the tensor's bytes in the file; when the
    re-quantized bytes of the source type equal them, `requant_matches_source`
    is true. Each tensor also gets its Hugging Face name, its HF shape and
    `hf_f32_crc32`: the CRC-32 of the float32 bytes a faithful F32 conversion
    writes to model.safetensors (attn_q/attn_k rows un-permuted, as
    transformers' GGUF loader does it).

hf_config
    The config.json of a faithful GGUF -> HF conversion, for transformers'
    LlamaConfig, with `hf_config_sources` naming the GGUF key behind each
    field. Cross-checked against transformers' own GGUF config loader, whose
    raw output is kept in `transformers_gguf_config`.

tokenizer
    Built by transformers: AutoTokenizer.from_pretrained(folder, gguf_file=...),
    then save_pretrained. The fields of the tokenizer.json it writes (all but
    the vocabulary and merges, which are given as CRC-32s), and the token ids
    of test strings from tok(text, add_special_tokens=False)["input_ids"].
    transformers' GGUF code imports torch at module level although building a
    tokenizer never uses it; when torch is missing, a stub module stands in
    for it (see `_torch_stub`). Nothing the stub returns reaches the tokenizer.
    `smollm_variant` is the same tokenizer with the pre-tokenizer llama.cpp
    uses for `tokenizer.ggml.pre = "smollm"` (digits split one by one, then
    the GPT-2 regex), which transformers does not map, and which the upstream
    SmolLM2 tokenizer.json has as Digits(individual_digits) + ByteLevel. It is
    built twice, from transformers' tokenizer.json and independently from the
    GGUF arrays with the `tokenizers` library, and the two must agree.

tokenizer_config
    bos/eos/pad/unk token strings, add_bos_token, add_prefix_space and the
    chat template, from the GGUF keys (cross-checked with transformers).

Needs numpy, gguf 0.19.0, tokenizers and transformers (no torch). The output
is deterministic for fixed package versions, which it records. Run from
anywhere:

    scripts/fetch-models.sh
    python3 Fixtures/golden/make_convert_golden.py
"""

import importlib.metadata
import json
import os
import re
import sys
import tempfile
import types
import zlib

import numpy as np
import gguf
from gguf import GGUFReader
from gguf.constants import GGMLQuantizationType as QT
from gguf.quants import dequantize, quantize

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "convert-smollm2.json")
CACHE = os.environ.get("FLARE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "flare")
MODEL_DIR = os.path.join(CACHE, "models", "smollm2-135m-instruct")
MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL = os.path.join(MODEL_DIR, MODEL_NAME)

REQUANT_TYPES = [QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1]
MAX_BYTES = 400_000

# GGUF tensor name -> HF name for a llama model. `None` in the second slot: no
# permutation; "q"/"k": undo llama.cpp's RoPE row permutation with n_head / n_head_kv.
LLAMA_NAMES = [
    (r"token_embd\.weight", "model.embed_tokens.weight", None),
    (r"output_norm\.weight", "model.norm.weight", None),
    (r"output\.weight", "lm_head.weight", None),
    (r"blk\.(\d+)\.attn_norm\.weight", "model.layers.{}.input_layernorm.weight", None),
    (r"blk\.(\d+)\.attn_q\.weight", "model.layers.{}.self_attn.q_proj.weight", "q"),
    (r"blk\.(\d+)\.attn_k\.weight", "model.layers.{}.self_attn.k_proj.weight", "k"),
    (r"blk\.(\d+)\.attn_v\.weight", "model.layers.{}.self_attn.v_proj.weight", None),
    (r"blk\.(\d+)\.attn_output\.weight", "model.layers.{}.self_attn.o_proj.weight", None),
    (r"blk\.(\d+)\.ffn_norm\.weight", "model.layers.{}.post_attention_layernorm.weight", None),
    (r"blk\.(\d+)\.ffn_gate\.weight", "model.layers.{}.mlp.gate_proj.weight", None),
    (r"blk\.(\d+)\.ffn_up\.weight", "model.layers.{}.mlp.up_proj.weight", None),
    (r"blk\.(\d+)\.ffn_down\.weight", "model.layers.{}.mlp.down_proj.weight", None),
]

TEST_STRINGS = [
    "Hello world",
    "Hello, world! How are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "¿Dónde está la biblioteca? Mañana será un día mejor.",
    "Él comió piña y jalapeños en Málaga.",
    "café",
    "cafe\u0301",
    "12345 3.14",
    "x  42",
    "Call 555-0199 or +1 (800) 123-4567.",
    "$1,000,000.00 and 50%",
    "2024-11-24T23:25:00Z",
    "x²+y³=z¹⁰ ½",
    "٣٤٥ and ４２",
    "def add(a, b):\n    return a + b\n",
    "for (int i = 0; i < n; ++i) { sum += v[i]; }",
    "import numpy as np\nx = np.zeros((3, 4), dtype=np.float32)",
    "<html><body class=\"x\">Hi</body></html>",
    "don't, I'm, we'll, they've, she'd",
    "DON'T SHOUT",
    "🙂 emoji 🚀🔥",
    "👨\u200d👩\u200d👧 family",
    "日本語のテキスト",
    "Привет, мир!",
    "a\u00a0b",
    " leading space",
    "trailing space ",
    "  two leading and two trailing  ",
    "   ",
    "\n\nnewlines\n\n",
    "tabs\tand\ttabs",
    "",
    "<|endoftext|>",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>assistant\n",
]

# llama.cpp's pre-tokenizer for tokenizer.ggml.pre = "smollm" (llama-vocab.cpp): these
# regexes are applied in turn, each to the pieces the one before left.
SMOLLM_REGEXES = [
    r"\p{N}",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
]
SMOLLM_PRE_TOKENIZER = {
    "type": "Sequence",
    "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    ],
}


def die(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


def crc(data):
    return zlib.crc32(data) & 0xFFFFFFFF


def crc_array(a):
    return crc(np.ascontiguousarray(a).tobytes())


def version(pkg):
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------- GGUF

def field_value(reader, key):
    """A KV's value as Python data (str, int, float, bool or list), or None if absent."""
    f = reader.fields.get(key)
    if f is None:
        return None
    vtype = f.types[0]
    if vtype == gguf.GGUFValueType.ARRAY:
        etype = f.types[1]
        if etype == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]
    if vtype == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    v = f.parts[f.data[0]].tolist()[0]
    if vtype == gguf.GGUFValueType.BOOL:
        return bool(v)
    return v


def kv_type(reader, key):
    f = reader.fields.get(key)
    return None if f is None else f.types[0].name


def hf_name_of(name):
    for pattern, hf, perm in LLAMA_NAMES:
        m = re.fullmatch(pattern, name)
        if m:
            return hf.format(*m.groups()), perm
    die(f"no HF name for GGUF tensor {name}")


def reverse_permute(w, n_head):
    """Undo llama.cpp's RoPE permutation of q/k rows (numpy layout [rows, cols])."""
    rows = w.shape[0]
    half = rows // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def forward_permute(w, n_head):
    """llama.cpp's convert_hf_to_gguf permutation (the inverse of reverse_permute)."""
    rows = w.shape[0]
    half = rows // n_head // 2
    return w.reshape(n_head, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def check_names_with_gguf_py(block_count, pairs):
    """Every HF name must map back to its GGUF name through gguf-py's TensorNameMap."""
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, block_count)
    for gguf_name, hf in pairs:
        base = gguf_name[: -len(".weight")]
        got = tmap.get_name(hf, try_suffixes=(".weight",))
        if got != gguf_name and got != base:
            die(f"gguf-py maps {hf} to {got}, expected {gguf_name}")


def quantized_section(reader, n_head, n_head_kv):
    tensors = []
    pairs = []
    for t in reader.tensors:
        qtype = QT(int(t.tensor_type))
        dims = [int(d) for d in t.shape]  # GGUF order, innermost first
        values = dequantize(t.data, qtype)
        values = np.ascontiguousarray(values, dtype=np.float32).reshape(list(reversed(dims)))
        hf, perm = hf_name_of(t.name)
        pairs.append((t.name, hf))

        hf_values = values
        if perm == "q":
            hf_values = reverse_permute(values, n_head)
        elif perm == "k":
            hf_values = reverse_permute(values, n_head_kv)
        if perm is not None and not np.array_equal(forward_permute(hf_values, n_head if perm == "q" else n_head_kv), values):
            die(f"{t.name}: permute does not invert reverse_permute")

        requant = {}
        source_bytes = bytes(np.ascontiguousarray(t.data).tobytes())
        matches = None
        types_here = REQUANT_TYPES if len(dims) > 1 else [QT.F32]
        for q in types_here:
            qbytes = np.ascontiguousarray(quantize(values, q)).tobytes()
            requant[q.name] = crc(qbytes)
            if q == qtype:
                matches = qbytes == source_bytes
        tensors.append({
            "name": t.name,
            "type": qtype.name,
            "dims": dims,
            "n_elements": int(t.n_elements),
            "source_crc32": crc(source_bytes),
            "dequant_crc32": crc_array(values),
            "requant_crc32": requant,
            "requant_matches_source": matches,
            "hf_name": hf,
            "hf_shape": list(hf_values.shape),
            "hf_permuted": perm,
            "hf_f32_crc32": crc_array(hf_values),
        })
    return tensors, pairs


# --------------------------------------------------------------------- transformers

class _StubValue:
    """Whatever transformers' GGUF modules ask torch for at import time."""

    itemsize = 4

    def __getattr__(self, name):
        return _StubValue()

    def __call__(self, *args, **kwargs):
        return _StubValue()

    def __getitem__(self, key):
        return _StubValue()


def _torch_stub():
    """Install a stand-in `torch` module if the real one is missing; returns True if it did.

    transformers.integrations.gguf.reader and .dequant import torch at module level
    (dtypes in annotations and defaults). The tokenizer path only reads metadata, and
    the legacy config path (load_gguf_checkpoint with return_tensors=False) only checks
    `is_torch_available()`; neither touches a tensor.
    """
    try:
        import torch  # noqa: F401
        return False
    except ImportError:
        pass
    import transformers  # noqa: F401  (decides is_torch_available() before the stub exists)
    stub = types.ModuleType("torch")
    stub.__getattr__ = lambda name: _StubValue()
    sys.modules["torch"] = stub
    return True


def transformers_oracle():
    stubbed = _torch_stub()
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers import AutoTokenizer

    if stubbed:
        gguf_utils.is_torch_available = lambda: True
    config = gguf_utils.load_gguf_checkpoint(MODEL, return_tensors=False)["config"]
    tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=MODEL_NAME)
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        with open(os.path.join(tmp, "tokenizer.json"), encoding="utf-8") as f:
            tokenizer_json = json.load(f)
        with open(os.path.join(tmp, "tokenizer_config.json"), encoding="utf-8") as f:
            tokenizer_config = json.load(f)
        template_path = os.path.join(tmp, "chat_template.jinja")
        chat_template = None
        if os.path.exists(template_path):
            with open(template_path, encoding="utf-8") as f:
                chat_template = f.read()
    ids = [tok(s, add_special_tokens=False)["input_ids"] for s in TEST_STRINGS]
    return {
        "stubbed_torch": stubbed,
        "config": config,
        "tokenizer_json": tokenizer_json,
        "tokenizer_config": tokenizer_config,
        "chat_template": chat_template if chat_template is not None else tokenizer_config.get("chat_template"),
        "ids": ids,
        "class": type(tok).__name__,
    }


def check_permutation_with_transformers(reader, tensors, config):
    """attn_q/attn_k in HF layout must match transformers' LlamaTensorProcessor."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    processor = LlamaTensorProcessor(config=config)
    by_name = {t["name"]: t for t in tensors}
    checked = 0
    for t in reader.tensors:
        entry = by_name[t.name]
        if entry["hf_permuted"] is None:
            continue
        values = dequantize(t.data, QT(int(t.tensor_type))).astype(np.float32, copy=False)
        got = processor.process(values, t.name).weights
        if crc_array(np.asarray(got, dtype=np.float32)) != entry["hf_f32_crc32"]:
            die(f"{t.name}: transformers un-permutes it differently")
        checked += 1
    return checked


# ------------------------------------------------------------------------ tokenizer

def tokenizer_fields(tj):
    model = {k: v for k, v in tj["model"].items() if k not in ("vocab", "merges")}
    vocab = sorted(tj["model"]["vocab"].items(), key=lambda kv: kv[1])
    if [i for _, i in vocab] != list(range(len(vocab))):
        die("tokenizer.json vocab ids are not 0..n-1")
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    return {
        "version": tj.get("version"),
        "truncation": tj.get("truncation"),
        "padding": tj.get("padding"),
        "normalizer": tj.get("normalizer"),
        "pre_tokenizer": tj.get("pre_tokenizer"),
        "post_processor": tj.get("post_processor"),
        "decoder": tj.get("decoder"),
        "added_tokens": tj.get("added_tokens"),
        "model": model,
        "vocab": {"size": len(vocab), "crc32": crc("\n".join(t for t, _ in vocab).encode("utf-8"))},
        "merges": {"count": len(merges), "crc32": crc("\n".join(merges).encode("utf-8")),
                   "serialized_as": "pairs" if merges and not isinstance(tj["model"]["merges"][0], str)
                   else "strings"},
    }, [t for t, _ in vocab], merges


def smollm_from_transformers(tj):
    from tokenizers import Tokenizer

    tj = json.loads(json.dumps(tj))
    tj["pre_tokenizer"] = SMOLLM_PRE_TOKENIZER
    return Tokenizer.from_str(json.dumps(tj))


def smollm_from_gguf(tokens, token_types, merges):
    """The same tokenizer built only from the GGUF arrays with the tokenizers library."""
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ")) for m in merges]
    tok = Tokenizer(BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    control = [AddedToken(t, special=True, normalized=False)
               for t, ty in zip(tokens, token_types) if ty == 3]
    tok.add_special_tokens(control)
    return tok


def tokenizer_section(reader, tf):
    fields, hf_vocab, hf_merges = tokenizer_fields(tf["tokenizer_json"])
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    token_types = field_value(reader, "tokenizer.ggml.token_type")
    merges = field_value(reader, "tokenizer.ggml.merges")
    if hf_vocab != tokens:
        die("transformers' vocabulary differs from tokenizer.ggml.tokens")
    if hf_merges != merges:
        die("transformers' merges differ from tokenizer.ggml.merges")

    variant_a = smollm_from_transformers(tf["tokenizer_json"])
    variant_b = smollm_from_gguf(tokens, token_types, merges)
    encodings = []
    for text, ids in zip(TEST_STRINGS, tf["ids"]):
        a = variant_a.encode(text, add_special_tokens=False).ids
        b = variant_b.encode(text, add_special_tokens=False).ids
        if a != b:
            die(f"the two smollm builds disagree on {text!r}: {a} vs {b}")
        if variant_b.decode(b, skip_special_tokens=False) != text:
            die(f"smollm build does not round-trip {text!r}")
        entry = {"text": text, "ids": ids}
        if a != ids:
            entry["ids_smollm"] = a
        encodings.append(entry)

    differing = [e["text"] for e in encodings if "ids_smollm" in e]
    return {
        "oracle": "transformers AutoTokenizer.from_pretrained(folder, gguf_file=name), then "
                  "save_pretrained(); ids from tok(text, add_special_tokens=False)['input_ids']",
        "transformers_class": tf["class"],
        "torch_stubbed": tf["stubbed_torch"],
        **fields,
        "vocab_equals_gguf_tokens": True,
        "merges_equal_gguf_merges": True,
        "control_token_ids": [i for i, ty in enumerate(token_types) if ty == 3],
        "encodings": encodings,
        "smollm_variant": {
            "why": "transformers has no split regex for tokenizer.ggml.pre 'smollm' and falls back to "
                   "the GPT-2 ByteLevel regex. llama.cpp splits digits one by one first; the upstream "
                   "SmolLM2 tokenizer.json does the same with Digits(individual_digits) before ByteLevel. "
                   "Encodings whose ids differ carry 'ids_smollm'.",
            "llama_cpp_regexes": SMOLLM_REGEXES,
            "pre_tokenizer": SMOLLM_PRE_TOKENIZER,
            "cross_check": "built from transformers' tokenizer.json with this pre_tokenizer, and from the "
                           "GGUF arrays with tokenizers' BPE + this pre_tokenizer + the CONTROL tokens as "
                           "special added tokens; both give identical ids and decode back to the text",
            "strings_that_differ": differing,
        },
    }


# ---------------------------------------------------------------------- hf config

def shortest_f32(x):
    """The shortest decimal that reads back as the same float32, as a Python float."""
    return float(str(np.float32(x)))


def hf_config_section(reader, tensor_names, tf_config):
    arch = field_value(reader, "general.architecture")
    if arch != "llama":
        die(f"expected a llama GGUF, got {arch}")

    def need(key):
        v = field_value(reader, key)
        if v is None:
            die(f"missing key {key}")
        return v

    n_embd = need("llama.embedding_length")
    n_head = need("llama.attention.head_count")
    key_length = field_value(reader, "llama.attention.key_length")
    tokens = need("tokenizer.ggml.tokens")
    vocab_size = field_value(reader, "llama.vocab_size")
    eps32 = need("llama.attention.layer_norm_rms_epsilon")
    theta32 = need("llama.rope.freq_base")
    tied = "output.weight" not in tensor_names

    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": n_embd,
        "intermediate_size": need("llama.feed_forward_length"),
        "num_hidden_layers": need("llama.block_count"),
        "num_attention_heads": n_head,
        "num_key_value_heads": field_value(reader, "llama.attention.head_count_kv") or n_head,
        "head_dim": key_length if key_length is not None else n_embd // n_head,
        "rms_norm_eps": shortest_f32(eps32),
        "rope_theta": shortest_f32(theta32),
        "max_position_embeddings": need("llama.context_length"),
        "vocab_size": vocab_size if vocab_size is not None else len(tokens),
        "tie_word_embeddings": tied,
        "bos_token_id": need("tokenizer.ggml.bos_token_id"),
        "eos_token_id": need("tokenizer.ggml.eos_token_id"),
        "pad_token_id": field_value(reader, "tokenizer.ggml.padding_token_id"),
        "hidden_act": "silu",
        "torch_dtype": "float32",
    }
    sources = {
        "architectures": "general.architecture = 'llama'",
        "model_type": "general.architecture = 'llama'",
        "hidden_size": "llama.embedding_length",
        "intermediate_size": "llama.feed_forward_length",
        "num_hidden_layers": "llama.block_count",
        "num_attention_heads": "llama.attention.head_count",
        "num_key_value_heads": "llama.attention.head_count_kv",
        "head_dim": "llama.attention.key_length" if key_length is not None else
                    "llama.embedding_length / llama.attention.head_count (no llama.attention.key_length; "
                    "equals llama.rope.dimension_count)",
        "rms_norm_eps": "llama.attention.layer_norm_rms_epsilon (FLOAT32), shortest decimal that reads back "
                        "as the same float32",
        "rope_theta": "llama.rope.freq_base (FLOAT32), shortest decimal that reads back as the same float32",
        "max_position_embeddings": "llama.context_length",
        "vocab_size": "llama.vocab_size" if vocab_size is not None else "len(tokenizer.ggml.tokens)",
        "tie_word_embeddings": "no output.weight tensor" if tied else "output.weight tensor present",
        "bos_token_id": "tokenizer.ggml.bos_token_id",
        "eos_token_id": "tokenizer.ggml.eos_token_id",
        "pad_token_id": "tokenizer.ggml.padding_token_id",
        "hidden_act": "fixed for llama (no GGUF key)",
        "torch_dtype": "the conversion's --outtype f32 (transformers >= 4.56 also reads it as 'dtype')",
    }

    # consistency checks against the tensors and other keys
    rope_dims = field_value(reader, "llama.rope.dimension_count")
    if rope_dims is not None and rope_dims != config["head_dim"]:
        die(f"rope.dimension_count {rope_dims} != head_dim {config['head_dim']}")
    if config["vocab_size"] != len(tokens):
        die("llama.vocab_size differs from the token count")
    if np.float32(config["rms_norm_eps"]) != np.float32(eps32) or np.float32(config["rope_theta"]) != np.float32(theta32):
        die("shortest float32 decimal does not round-trip")

    # cross-check with transformers' GGUF config loader
    checked = {}
    for k, v in config.items():
        if k in tf_config:
            tv = tf_config[k]
            same = (np.float32(tv) == np.float32(v)) if isinstance(v, float) else tv == v
            if not same:
                die(f"transformers' GGUF loader gives {k} = {tv!r}, this script {v!r}")
            checked[k] = True
    float_bits = {
        "rms_norm_eps": int(np.float32(eps32).view(np.uint32)),
        "rope_theta": int(np.float32(theta32).view(np.uint32)),
    }
    return config, sources, float_bits, sorted(checked)


def tokenizer_config_section(reader, tf):
    tokens = field_value(reader, "tokenizer.ggml.tokens")

    def token(key):
        i = field_value(reader, key)
        return None if i is None else tokens[i]

    cfg = {
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        "eos_token": token("tokenizer.ggml.eos_token_id"),
        "pad_token": token("tokenizer.ggml.padding_token_id"),
        "unk_token": token("tokenizer.ggml.unknown_token_id"),
        "add_bos_token": field_value(reader, "tokenizer.ggml.add_bos_token"),
        "add_eos_token": field_value(reader, "tokenizer.ggml.add_eos_token"),
        "add_prefix_space": field_value(reader, "tokenizer.ggml.add_space_prefix"),
        "chat_template": field_value(reader, "tokenizer.chat_template"),
    }
    sources = {
        "bos_token": "tokens[tokenizer.ggml.bos_token_id]",
        "eos_token": "tokens[tokenizer.ggml.eos_token_id]",
        "pad_token": "tokens[tokenizer.ggml.padding_token_id]",
        "unk_token": "tokens[tokenizer.ggml.unknown_token_id]",
        "add_bos_token": "tokenizer.ggml.add_bos_token",
        "add_eos_token": "tokenizer.ggml.add_eos_token (null: key absent)",
        "add_prefix_space": "tokenizer.ggml.add_space_prefix",
        "chat_template": "tokenizer.chat_template",
    }
    tc = tf["tokenizer_config"]
    for k in ("bos_token", "eos_token", "pad_token", "unk_token"):
        if tc.get(k) != cfg[k]:
            die(f"transformers' tokenizer_config {k} = {tc.get(k)!r}, GGUF gives {cfg[k]!r}")
    if tf["chat_template"] != cfg["chat_template"]:
        die("transformers' chat template differs from tokenizer.chat_template")
    return cfg, sources, tc


# ---------------------------------------------------------------------------- main

def dump_json(obj, depth=0):
    """json.dumps with one-space indentation, but lists of scalars on one line."""
    pad, inner = " " * depth, " " * (depth + 1)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [inner + json.dumps(k, ensure_ascii=False) + ": " + dump_json(v, depth + 1)
                 for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list):
        if all(not isinstance(v, (dict, list)) for v in obj):
            return json.dumps(obj, separators=(", ", ": "), ensure_ascii=False, allow_nan=False)
        return "[\n" + ",\n".join(inner + dump_json(v, depth + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False, allow_nan=False)


def main():
    if not os.path.isfile(MODEL):
        die(f"{MODEL} not found; run scripts/fetch-models.sh first")
    if version("gguf") != "0.19.0":
        print(f"warning: gguf {version('gguf')} installed; the golden was made with 0.19.0",
              file=sys.stderr)

    reader = GGUFReader(MODEL)
    n_head = field_value(reader, "llama.attention.head_count")
    n_head_kv = field_value(reader, "llama.attention.head_count_kv") or n_head
    tensors, pairs = quantized_section(reader, n_head, n_head_kv)
    check_names_with_gguf_py(field_value(reader, "llama.block_count"), pairs)
    names = [t["name"] for t in tensors]

    tf = transformers_oracle()
    permuted_checked = check_permutation_with_transformers(reader, tensors, tf["config"])
    hf_config, hf_sources, float_bits, checked = hf_config_section(reader, names, tf["config"])
    tok = tokenizer_section(reader, tf)
    tok_cfg, tok_cfg_sources, tf_tok_cfg = tokenizer_config_section(reader, tf)

    with open(MODEL, "rb") as f:
        file_crc = 0
        size = 0
        while chunk := f.read(1 << 22):
            file_crc = zlib.crc32(chunk, file_crc)
            size += len(chunk)

    out = {
        "file": MODEL_NAME,
        "file_size": size,
        "crc32": file_crc & 0xFFFFFFFF,
        "generator": "Fixtures/golden/make_convert_golden.py",
        "versions": {k: version(k) for k in ("gguf", "numpy", "tokenizers", "transformers")},
        "quantized": {
            "types": [q.name for q in REQUANT_TYPES],
            "notes": [
                "values = gguf.quants.dequantize(tensor.data, tensor.tensor_type) as float32, GGUF layout "
                "(numpy shape = reversed dims); dequant_crc32 = CRC-32 of those float32 bytes",
                "requant_crc32[T] = CRC-32 of gguf.quants.quantize(values, T) bytes; 1-D tensors: F32 only",
                "requant_matches_source: quantize(values, source type) gives the file's bytes exactly",
                "hf_f32_crc32 = CRC-32 of the float32 bytes in HF layout (shape hf_shape = reversed dims); "
                "hf_permuted 'q'/'k' = rows un-permuted for RoPE with n_head / n_head_kv: "
                "w.reshape(n, rows/n/2, 2, cols).swapaxes(1, 2).reshape(rows, cols)",
                "HF names are cross-checked with gguf-py's TensorNameMap for llama; the %d un-permuted "
                "tensors with transformers' LlamaTensorProcessor" % permuted_checked,
            ],
            "n_head": n_head,
            "n_head_kv": n_head_kv,
            "tensors": tensors,
        },
        "hf_config": hf_config,
        "hf_config_sources": hf_sources,
        "hf_config_float32_bits": float_bits,
        "hf_config_checked_against_transformers": checked,
        "transformers_gguf_config": tf["config"],
        "tokenizer": tok,
        "tokenizer_config": tok_cfg,
        "tokenizer_config_sources": tok_cfg_sources,
        "transformers_tokenizer_config": {k: v for k, v in tf_tok_cfg.items()
                                          if k not in ("is_local", "local_files_only")},
    }
    text = dump_json(out) + "\n"
    data = text.encode("utf-8")
    if len(data) > MAX_BYTES:
        die(f"golden would be {len(data)} bytes, over the {MAX_BYTES} limit")
    with open(OUT, "wb") as f:
        f.write(data)
    print(f"wrote {OUT}: {len(data)} bytes, {len(tensors)} tensors, "
          f"{len(tok['encodings'])} encodings ({len(tok['smollm_variant']['strings_that_differ'])} "
          f"differ under the smollm pre-tokenizer)")


if __name__ == "__main__":
    main()

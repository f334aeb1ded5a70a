#!/usr/bin/env python3
"""Regenerate Flare's GGUF test fixtures and golden values.

This script is the oracle for Flare's GGUF tests. It makes:

  Fixtures/gguf/
    metadata-all-types.gguf   one KV of every GGUF metadata type, 2 F32 tensors
    quant-types.gguf          one [256, 4] tensor per tensor type gguf-py can
                              quantize or dequantize, plus I8..I64 and F64
    alignment-{8,64,256}.gguf the same 4 small tensors under general.alignment
                              8, 64 and 256
    alignment-padding.gguf    the same tensors, default alignment (no key)
    tiny-llama.gguf           a 1-block llama-like model with a gpt2 tokenizer
    malformed/                raw-byte corpus: bad-* break exactly one rule,
                              ok-* are borderline but valid; manifest.json
  Fixtures/golden/
    gguf-values.json          what a reader must see in every valid file
    gguf-quantize.json        float32 inputs and the exact bytes gguf-py's
                              quantizers make of them
    gguf-dump-*.txt|json      stdout of the gguf-dump script
    gguf-smollm2.json         header, KVs and all 272 tensors of the real
                              SmolLM2-135M-Instruct Q4_1 file

Oracles: gguf-py 0.19.0 (GGUFWriter writes the valid files, GGUFReader
cross-checks them, gguf.quants quantizes and dequantizes, the gguf-dump
script gives the dump goldens) and numpy.

Regenerate from the repository root with

    scripts/fetch-models.sh                  # the real SmolLM2 file
    python3 Fixtures/gguf/make_fixtures.py

`--no-real-model` skips the goldens of the real file (gguf-dump-smollm2.*,
gguf-smollm2.json) and leaves them as they are. The real file is looked for
where scripts/fetch-models.sh puts it, under ${FLARE_CACHE:-~/.cache/flare}.

The output is deterministic (fixed seeds, no timestamps) and is committed.

The malformed corpus is also run through `strict_parse` below, this script's
own statement of Flare's rules, which must report exactly the expected code
for every case; that guards against a case breaking two rules at once. The
script prints where gguf-py's GGUFReader disagrees with the manifest.
"""

import argparse
import importlib.metadata
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import warnings
import zlib

import numpy as np

logging.disable(logging.WARNING)  # GGUFWriter logs every file it plans

import gguf  # noqa: E402
from gguf import GGMLQuantizationType as QT  # noqa: E402
from gguf import GGUFReader, GGUFWriter  # noqa: E402
from gguf import GGUFValueType as VT  # noqa: E402
from gguf.constants import GGML_QUANT_SIZES  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.dirname(HERE)
GOLDEN = os.path.join(FIXTURES, "golden")
MALFORMED = os.path.join(HERE, "malformed")

CACHE = os.environ.get("FLARE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "flare")
SMOLLM2_DIR = os.path.join(CACHE, "models", "smollm2-135m-instruct")
SMOLLM2_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SIZE = 98362432

warnings.simplefilter("ignore")
np.seterr(all="ignore")

INT64_MAX = 2**63 - 1
MAX_NAME = 64          # GGML_MAX_NAME: a tensor name must be at most 63 bytes
MAX_DIMS = 4           # GGML_MAX_DIMS
TYPE_COUNT = 42        # first ggml type id past the end (gguf-py 0.19.0: Q1_0 = 41)
REMOVED_TYPES = {4, 5, 31, 32, 33, 36, 37, 38}
DEFAULT_ALIGNMENT = 32

# GGUF scalar value types: struct format, size
SCALAR = {
    VT.UINT8: ("<B", 1), VT.INT8: ("<b", 1), VT.UINT16: ("<H", 2), VT.INT16: ("<h", 2),
    VT.UINT32: ("<I", 4), VT.INT32: ("<i", 4), VT.FLOAT32: ("<f", 4), VT.BOOL: ("<B", 1),
    VT.UINT64: ("<Q", 8), VT.INT64: ("<q", 8), VT.FLOAT64: ("<d", 8),
}


def crc(b):
    return zlib.crc32(b) & 0xFFFFFFFF


def f32_bits(x):
    return struct.unpack("<I", struct.pack("<f", x))[0]


def pad_to(n, align):
    return (n + align - 1) // align * align


# ---------------------------------------------------------------------------
# Writing valid files with gguf-py
# ---------------------------------------------------------------------------

class Writer(GGUFWriter):
    """GGUFWriter that can also write an empty array.

    The stock 0.19.0 writer raises on an empty array and add_array() silently
    drops one; add_string() likewise drops an empty string. Both are legal
    GGUF (llama.cpp reads them), so empty values go through add_key_value()
    and this one override."""

    def _pack_val(self, val, vtype, add_vtype, sub_type=None):
        if vtype == VT.ARRAY and len(val) == 0:
            out = self._pack("I", vtype) if add_vtype else b""
            return out + self._pack("I", sub_type) + self._pack("Q", 0)
        return super()._pack_val(val, vtype, add_vtype, sub_type)


def tensor_payload(values, qt):
    """(array to hand to GGUFWriter.add_tensor, raw_dtype) for float32 values."""
    if qt == QT.F32:
        return values.astype(np.float32), None
    if qt == QT.F16:
        return quantize(values, QT.F16), None
    return quantize(values, qt), qt


def write_file(path, arch, build, alignment=None):
    """build(writer) adds KVs and tensors; everything else is the package's."""
    w = Writer(path, arch)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    build(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def make_metadata_all_types():
    rng = np.random.default_rng(1001)
    non_ascii = "Grüße, naïve café — 日本語 🚀"
    long100 = ("flare-" * 17)[:100]
    quote_nl = 'she said "hi"\nand left\ttabbed'

    def build(w):
        w.add_uint8("test.uint8", 200)
        w.add_int8("test.int8", -100)
        w.add_uint16("test.uint16", 65535)
        w.add_int16("test.int16", -32768)
        w.add_uint32("test.uint32", 4294967295)
        w.add_int32("test.int32", -2147483648)
        w.add_float32("test.float32", 3.14159)
        w.add_bool("test.bool.true", True)
        w.add_bool("test.bool.false", False)
        w.add_string("test.string.ascii", "hello")
        w.add_string("test.string.non_ascii", non_ascii)
        w.add_string("test.string.long100", long100)
        w.add_string("test.string.quote_newline", quote_nl)
        w.add_key_value("test.string.empty", "", VT.STRING)
        arrays = [
            ("uint8", VT.UINT8, [0, 1, 127, 128, 255]),
            ("int8", VT.INT8, [-128, -1, 0, 1, 127]),
            ("uint16", VT.UINT16, [0, 1, 32768, 65535]),
            ("int16", VT.INT16, [-32768, -1, 0, 32767]),
            ("uint32", VT.UINT32, [0, 1, 2147483648, 4294967295]),
            ("int32", VT.INT32, [-2147483648, -1, 0, 2147483647]),
            ("float32", VT.FLOAT32, [0.0, -0.0, 1.5, 0.1, 1e-45, 1.17549435e-38,
                                     3.4028234663852886e38, -2.5e-3]),
            ("bool", VT.BOOL, [True, False, True, True]),
            ("uint64", VT.UINT64, [0, 1, 2**53 + 1, 2**64 - 1]),
            ("int64", VT.INT64, [-2**63, -1, 0, 2**63 - 1]),
            ("float64", VT.FLOAT64, [0.1, -2.5, 1e300, 5e-324, -0.0]),
        ]
        for name, sub, vals in arrays:
            w.add_key_value("test.array." + name, vals, VT.ARRAY, sub_type=sub)
        w.add_key_value("test.array.string",
                        ["alpha", "", "β-gamma", 'quote " and \\ backslash', "new\nline", "🙂"],
                        VT.ARRAY, sub_type=VT.STRING)
        w.add_key_value("test.array.empty", [], VT.ARRAY, sub_type=VT.INT32)
        w.add_key_value("test.array.empty_string", [], VT.ARRAY, sub_type=VT.STRING)
        # What add_array() infers when no sub type is given.
        w.add_array("test.inferred.bools", [True, False])
        w.add_array("test.inferred.ints", [1, -2, 3])
        w.add_array("test.inferred.floats", [0.5, 0.1])
        w.add_uint64("test.uint64", 18446744073709551615)
        w.add_int64("test.int64", -9007199254740993)
        w.add_float64("test.float64", 0.1)
        w.add_float64("test.float64.subnormal", 4.9e-324)
        w.add_tensor("t.a", np.array([1.0, -2.0, 0.5], np.float32))
        w.add_tensor("t.b", rng.standard_normal((2, 3)).astype(np.float32))

    write_file(os.path.join(HERE, "metadata-all-types.gguf"), "llama", build)


QUANTIZABLE = [QT.F32, QT.F16, QT.BF16, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0,
               QT.TQ1_0, QT.TQ2_0, QT.MXFP4]
DEQUANT_ONLY = [QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.IQ2_XXS, QT.IQ2_XS,
                QT.IQ2_S, QT.IQ3_XXS, QT.IQ3_S, QT.IQ1_S, QT.IQ1_M, QT.IQ4_NL, QT.IQ4_XS,
                QT.NVFP4]
NUMPY_TYPES = {QT.I8: np.int8, QT.I16: np.int16, QT.I32: np.int32, QT.I64: np.int64,
               QT.F64: np.float64}
# Neither direction in gguf-py 0.19.0, so not in quant-types.gguf.
UNSUPPORTED = [QT.Q8_1, QT.Q8_K, QT.Q1_0]

# Byte offsets of the f16 scale fields (d, and dmin where there is one) inside
# one block, for the types whose blocks are made from random bytes.
F16_FIELDS = {
    QT.Q2_K: (80, 82), QT.Q3_K: (108,), QT.Q4_K: (0, 2), QT.Q5_K: (0, 2), QT.Q6_K: (208,),
    QT.IQ2_XXS: (0,), QT.IQ2_XS: (0,), QT.IQ2_S: (0,), QT.IQ3_XXS: (0,), QT.IQ3_S: (0,),
    QT.IQ1_S: (0,), QT.IQ4_NL: (0,), QT.IQ4_XS: (0,),
}


def check_type_support():
    """The three type lists above must match what this gguf-py really does."""
    x = np.zeros((1, 256), np.float32)
    for qt in QUANTIZABLE + DEQUANT_ONLY + UNSUPPORTED:
        bs, ts = GGML_QUANT_SIZES[qt]
        try:
            quantize(x, qt)
            can_q = True
        except NotImplementedError:
            can_q = False
        try:
            dequantize(np.zeros((1, 256 // bs * ts), np.uint8), qt)
            can_d = True
        except NotImplementedError:
            can_d = False
        want = (qt in QUANTIZABLE, qt not in UNSUPPORTED)
        assert (can_q, can_d) == want, (qt.name, can_q, can_d)
    listed = set(QUANTIZABLE) | set(DEQUANT_ONLY) | set(UNSUPPORTED) | set(NUMPY_TYPES)
    assert listed == set(QT), sorted(t.name for t in set(QT) - listed)


def quant_source_rows(qt, rng):
    """4 x 256 float32: normal, zeros, small with extremes, wide with specials."""
    x = np.empty((4, 256), np.float32)
    x[0] = rng.standard_normal(256)
    x[1] = 0.0
    x[2] = rng.standard_normal(256) * 1e-3
    x[2, [3, 40, 77]] = [1000.0, -1000.0, 1e-7]
    x[3] = rng.standard_normal(256) * 10.0
    if qt in (QT.F32, QT.F16, QT.BF16):
        x[3, :12] = [np.inf, -np.inf, np.nan, -0.0, 65504.0, 65520.0, 1e-40,
                     3e38, -3e38, 6e-8, 1.0 + 2**-9, 1.0 + 2**-8 + 2**-16]
    return x


def random_blocks(qt, rng, rows=4, row_len=256):
    bs, ts = GGML_QUANT_SIZES[qt]
    nb = row_len // bs
    raw = rng.integers(0, 256, size=(rows, nb, ts), dtype=np.uint8)
    scales = rng.uniform(0.001, 0.1, size=(rows, nb, 2)).astype(np.float16)
    for k, off in enumerate(F16_FIELDS.get(qt, ())):
        raw[:, :, off:off + 2] = np.ascontiguousarray(scales[:, :, k]).view(np.uint8).reshape(rows, nb, 2)
    if qt == QT.IQ1_M:
        # The f16 d is spread over the top nibbles of the four u16 scale words.
        words = np.ascontiguousarray(raw[:, :, 48:56]).view("<u2").copy()
        dbits = np.ascontiguousarray(scales[:, :, 0]).view("<u2")
        for k in range(4):
            words[:, :, k] = (words[:, :, k] & 0x0FFF) | (((dbits >> (4 * k)) & 0xF) << 12)
        raw[:, :, 48:56] = words.view(np.uint8).reshape(rows, nb, 8)
    raw[1] = 0
    return raw.reshape(rows, nb * ts)


def numpy_type_rows(qt, rng):
    dt = NUMPY_TYPES[qt]
    if qt == QT.F64:
        x = rng.standard_normal((4, 256))
        x[1] = 0.0
        x[2, :10] = [1e300, -1e300, 1e-320, np.nan, np.inf, -0.0, 0.1,
                     1.0 + 2**-30, 16777217.0, 3.4028235677973366e38]
        return x.astype(dt)
    info = np.iinfo(dt)
    lo, hi = max(info.min, -(2**40)), min(info.max, 2**40)
    x = rng.integers(lo, hi, size=(4, 256), dtype=dt, endpoint=True)
    x[1] = 0
    x[2, :2] = [info.min, info.max]
    if qt in (QT.I32, QT.I64):
        x[2, 2:6] = [16777217, -16777217, 2**31 - 1, 33554435]
    if qt == QT.I64:
        x[2, 6:8] = [2**53 + 1, -(2**62) - 1]
    return x


def make_quant_types():
    rng = np.random.default_rng(2002)

    def build(w):
        for qt in QUANTIZABLE:
            arr, raw = tensor_payload(quant_source_rows(qt, rng), qt)
            w.add_tensor(qt.name.lower(), arr, raw_dtype=raw)
        for qt in DEQUANT_ONLY:
            w.add_tensor(qt.name.lower(), random_blocks(qt, rng), raw_dtype=qt)
        for qt in NUMPY_TYPES:
            w.add_tensor(qt.name.lower(), numpy_type_rows(qt, rng))

    write_file(os.path.join(HERE, "quant-types.gguf"), "llama", build)


def make_alignment():
    rng = np.random.default_rng(3003)
    a = rng.standard_normal(5).astype(np.float32)                 # 20 bytes
    b = rng.standard_normal((3, 3)).astype(np.float16)            # 18 bytes
    c = quantize(rng.standard_normal((1, 32)).astype(np.float32), QT.Q8_0)  # 34 bytes
    d = rng.standard_normal((2, 4)).astype(np.float32)            # 32 bytes

    def build(w):
        w.add_string("general.name", "alignment test")
        w.add_tensor("a", a)
        w.add_tensor("b", b)
        w.add_tensor("c", c, raw_dtype=QT.Q8_0)
        w.add_tensor("d", d)

    for align in (8, 64, 256):
        write_file(os.path.join(HERE, "alignment-%d.gguf" % align), "llama", build, alignment=align)
    write_file(os.path.join(HERE, "alignment-padding.gguf"), "llama", build)


TINY_TOKENS = (
    ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    + ["Ġ", "a", "d", "e", "f", "h", "i", "l", "n", "o", "r", "s", "t", "w", ",", "."]
    + ["Ġt", "he", "Ġthe", "in", "or", "Ġa", "Ġw", "ll", "Ġf", "Ġs", "re", "Ġl", "Ġfl"]
)
TINY_MERGES = ["Ġ t", "h e", "Ġt he", "i n", "o r", "Ġ a", "Ġ w", "l l", "Ġ f", "Ġ s", "r e",
               "Ġ l", "Ġf l"]


def make_tiny_llama():
    rng = np.random.default_rng(4004)
    n_embd, n_head, n_head_kv, n_ff, n_vocab = 64, 4, 2, 128, 32
    head_dim = n_embd // n_head
    assert len(TINY_TOKENS) == n_vocab and len(set(TINY_TOKENS)) == n_vocab

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)

    def norm(n):
        return (1.0 + rng.standard_normal(n) * 0.01).astype(np.float32)

    names = gguf.TENSOR_NAMES
    M = gguf.MODEL_TENSOR

    def build(w):
        w.add_type("model")
        w.add_name("Flare Tiny Llama")
        w.add_size_label("tiny")
        w.add_context_length(128)
        w.add_embedding_length(n_embd)
        w.add_block_count(1)
        w.add_feed_forward_length(n_ff)
        w.add_rope_dimension_count(head_dim)
        w.add_head_count(n_head)
        w.add_head_count_kv(n_head_kv)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_rope_freq_base(10000.0)
        w.add_vocab_size(n_vocab)
        w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(TINY_TOKENS)
        w.add_token_types([gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL] * (n_vocab - 3))
        w.add_token_merges(TINY_MERGES)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_pad_token_id(0)
        w.add_add_bos_token(False)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)

        def q8(name, x):
            w.add_tensor(name, quantize(x, QT.Q8_0), raw_dtype=QT.Q8_0)

        blk = lambda t: names[t].format(bid=0) + ".weight"  # noqa: E731
        q8(names[M.TOKEN_EMBD] + ".weight", mat(n_vocab, n_embd))
        w.add_tensor(blk(M.ATTN_NORM), norm(n_embd))
        q8(blk(M.ATTN_Q), mat(n_embd, n_embd))
        q8(blk(M.ATTN_K), mat(n_head_kv * head_dim, n_embd))
        q8(blk(M.ATTN_V), mat(n_head_kv * head_dim, n_embd))
        q8(blk(M.ATTN_OUT), mat(n_embd, n_embd))
        w.add_tensor(blk(M.FFN_NORM), norm(n_embd))
        q8(blk(M.FFN_GATE), mat(n_ff, n_embd))
        q8(blk(M.FFN_UP), mat(n_ff, n_embd))
        w.add_tensor(blk(M.FFN_DOWN), mat(n_embd, n_ff).astype(np.float16))
        w.add_tensor(names[M.OUTPUT_NORM] + ".weight", norm(n_embd))

    write_file(os.path.join(HERE, "tiny-llama.gguf"), "llama", build)


# ---------------------------------------------------------------------------
# A strict parser: Flare's rules, and the source of the golden values
# ---------------------------------------------------------------------------

class Reject(Exception):
    def __init__(self, code, key=None, tensor=None, detail=""):
        super().__init__("%s key=%r tensor=%r %s" % (code, key, tensor, detail))
        self.code, self.key, self.tensor = code, key, tensor


MIN_KV_BYTES = 8 + 4 + 1          # empty key, type, 1-byte value
MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # empty name, n_dims 0, type, offset


class Cursor:
    def __init__(self, blob):
        self.b, self.pos = blob, 0

    def left(self):
        return len(self.b) - self.pos

    def take(self, n, key=None, tensor=None):
        if n > self.left():
            raise Reject("truncated", key, tensor, "need %d at %d" % (n, self.pos))
        out = self.b[self.pos:self.pos + n]
        self.pos += n
        return out

    def u32(self, key=None, tensor=None):
        return struct.unpack("<I", self.take(4, key, tensor))[0]

    def u64(self, key=None, tensor=None):
        return struct.unpack("<Q", self.take(8, key, tensor))[0]

    def string(self, key=None, tensor=None):
        n = self.u64(key, tensor)
        if n > self.left():
            raise Reject("stringTooLong", key, tensor, "length %d, %d left" % (n, self.left()))
        return self.take(n).decode("utf-8")


def read_value(cur, vtype, key):
    if vtype == VT.STRING:
        return cur.string(key)
    fmt, size = SCALAR[vtype]
    raw = cur.take(size, key)
    if vtype == VT.BOOL:
        if raw[0] > 1:
            raise Reject("invalidBool", key, detail="byte %d" % raw[0])
        return raw[0] == 1
    return struct.unpack(fmt, raw)[0]


def valid_vtype(t):
    return t in SCALAR or t == VT.STRING


def strict_parse(blob):
    """Parse a whole GGUF file by Flare's rules; raise Reject on the first error."""
    cur = Cursor(blob)
    magic = cur.take(4)
    if magic != b"GGUF":
        raise Reject("badMagic", detail=repr(magic))
    version = cur.u32()
    if version not in (2, 3):
        raise Reject("unsupportedVersion", detail=str(version))
    n_tensors = cur.u64()
    n_kv = cur.u64()
    if n_kv * MIN_KV_BYTES > cur.left():
        raise Reject("countTooLarge", detail="kv_count %d" % n_kv)
    if n_tensors * MIN_TENSOR_INFO_BYTES > cur.left():
        raise Reject("countTooLarge", detail="tensor_count %d" % n_tensors)

    kvs = []
    seen = set()
    for _ in range(n_kv):
        key = cur.string()
        if key == "":
            raise Reject("emptyKey")
        if key in seen:
            raise Reject("duplicateKey", key)
        seen.add(key)
        vtype = cur.u32(key)
        if vtype == VT.ARRAY:
            sub = cur.u32(key)
            count = cur.u64(key)
            if not valid_vtype(sub):
                raise Reject("invalidValueType", key, detail="array of %d" % sub)
            sub = VT(sub)
            elem = 8 if sub == VT.STRING else SCALAR[sub][1]
            if count * elem > cur.left():
                raise Reject("countTooLarge", key, detail="array count %d" % count)
            vals = [read_value(cur, sub, key) for _ in range(count)]
            kvs.append({"key": key, "type": VT.ARRAY, "array_type": sub, "value": vals})
        else:
            if not valid_vtype(vtype):
                raise Reject("invalidValueType", key, detail="type %d" % vtype)
            vtype = VT(vtype)
            kvs.append({"key": key, "type": vtype, "value": read_value(cur, vtype, key)})

    alignment = DEFAULT_ALIGNMENT
    for kv in kvs:
        if kv["key"] == "general.alignment":
            if kv["type"] != VT.UINT32:
                raise Reject("badAlignment", "general.alignment", detail="type " + kv["type"].name)
            alignment = kv["value"]
            if alignment == 0 or alignment & (alignment - 1):
                raise Reject("badAlignment", "general.alignment", detail=str(alignment))

    tensors = []
    names = set()
    for _ in range(n_tensors):
        name = cur.string()
        if len(name.encode("utf-8")) >= MAX_NAME:
            raise Reject("nameTooLong", tensor=name)
        if name in names:
            raise Reject("duplicateTensor", tensor=name)
        names.add(name)
        n_dims = cur.u32(tensor=name)
        if n_dims > MAX_DIMS:
            raise Reject("tooManyDims", tensor=name, detail=str(n_dims))
        dims = [cur.u64(tensor=name) for _ in range(n_dims)]
        n_el = 1
        for d in dims:
            n_el *= d
        if any(d > INT64_MAX for d in dims) or n_el > INT64_MAX:
            raise Reject("elementCountOverflow", tensor=name, detail=str(dims))
        ttype = cur.u32(tensor=name)
        if ttype in REMOVED_TYPES:
            raise Reject("removedTensorType", tensor=name, detail=str(ttype))
        if ttype >= TYPE_COUNT:
            raise Reject("invalidTensorType", tensor=name, detail=str(ttype))
        qt = QT(ttype)
        bs, ts = GGML_QUANT_SIZES[qt]
        if (dims[0] if dims else 1) % bs:
            raise Reject("blockSizeMismatch", tensor=name, detail="%s %s" % (qt.name, dims))
        offset = cur.u64(tensor=name)
        tensors.append({"name": name, "type": qt, "dims": dims, "n_elements": n_el,
                        "n_bytes": n_el // bs * ts, "offset": offset})

    info_end = cur.pos
    data_offset = pad_to(info_end, alignment)
    expect = 0
    for t in tensors:
        if t["offset"] != expect:
            raise Reject("badOffset", tensor=t["name"],
                         detail="offset %d, expected %d" % (t["offset"], expect))
        expect += pad_to(t["n_bytes"], alignment)
    for t in tensors:
        if data_offset + t["offset"] + t["n_bytes"] > len(blob):
            raise Reject("dataOutOfRange", tensor=t["name"])
    return {"version": version, "tensor_count": n_tensors, "kv_count": n_kv,
            "alignment": alignment, "tensor_info_end": info_end, "data_offset": data_offset,
            "kvs": kvs, "tensors": tensors}


# ---------------------------------------------------------------------------
# Golden values
# ---------------------------------------------------------------------------

def json_scalar(vtype, v):
    """The JSON form of one value (floats as Python floats: exact float64 repr)."""
    if vtype in (VT.FLOAT32, VT.FLOAT64):
        return float(v)
    return v


def kv_golden(kv, long_arrays=False):
    out = {"key": kv["key"], "type": kv["type"].name}
    if kv["type"] != VT.ARRAY:
        out["value"] = json_scalar(kv["type"], kv["value"])
        if kv["type"] == VT.FLOAT32:
            out["f32_bits"] = f32_bits(kv["value"])
        if kv["type"] in (VT.UINT64, VT.INT64):
            out["value_text"] = str(kv["value"])
        return out
    sub, vals = kv["array_type"], kv["value"]
    out["array_type"] = sub.name
    if long_arrays and len(vals) > 16:
        out["length"] = len(vals)
        if sub == VT.STRING:
            out["crc32"] = crc("\n".join(vals).encode("utf-8"))
        else:
            out["crc32"] = crc(b"".join(struct.pack(SCALAR[sub][0], v) for v in vals))
        return out
    out["value"] = [json_scalar(sub, v) for v in vals]
    if sub == VT.FLOAT32:
        out["f32_bits"] = [f32_bits(v) for v in vals]
    if sub in (VT.UINT64, VT.INT64):
        out["value_text"] = [str(v) for v in vals]
    return out


def dequant_f32(raw, t):
    """Dequantized values as a flat float32 array, and which code made them."""
    qt, dims = t["type"], t["dims"]
    if t["n_elements"] == 0:
        return np.zeros(0, np.float32), "empty"
    if qt in NUMPY_TYPES:
        vals = np.frombuffer(raw, dtype=np.dtype(NUMPY_TYPES[qt]).newbyteorder("<"))
        return vals.astype(np.float32).ravel(), "numpy astype(float32)"
    bs, ts = GGML_QUANT_SIZES[qt]
    row_bytes = (dims[0] if dims else 1) // bs * ts
    arr = np.frombuffer(raw, np.uint8).reshape(-1, row_bytes)
    return np.asarray(dequantize(arr, qt), np.float32).ravel(), "gguf.quants.dequantize"


def tensor_golden(blob, parsed, t, n_first):
    start = parsed["data_offset"] + t["offset"]
    raw = blob[start:start + t["n_bytes"]]
    vals, source = dequant_f32(raw, t)
    le = vals.astype("<f4")
    return {
        "name": t["name"], "type": t["type"].name, "type_id": int(t["type"]),
        "dims": t["dims"], "n_elements": t["n_elements"], "offset": t["offset"],
        "n_bytes": t["n_bytes"], "dequant_source": source,
        "dequant_crc32": crc(le.tobytes()),
        "first_values_f32_bits": [int(x) for x in le.view("<u4")[:n_first]],
    }


def header_golden(blob, parsed):
    return {
        "file_size": len(blob), "crc32": crc(blob), "version": parsed["version"],
        "tensor_count": parsed["tensor_count"], "kv_count": parsed["kv_count"],
        "alignment": parsed["alignment"], "tensor_info_end": parsed["tensor_info_end"],
        "data_offset": parsed["data_offset"],
    }


def cross_check(path, blob, parsed):
    """The strict parser and gguf-py's GGUFReader must agree on a valid file."""
    r = GGUFReader(path)
    assert r.data_offset == parsed["data_offset"], (path, r.data_offset, parsed["data_offset"])
    assert r.alignment == parsed["alignment"], path
    fields = [f for f in r.fields.values() if not f.name.startswith("GGUF.")]
    assert [f.name for f in fields] == [kv["key"] for kv in parsed["kvs"]], path
    for f, kv in zip(fields, parsed["kvs"]):
        got = f.contents()
        want = kv["value"]
        if kv["type"] == VT.ARRAY and kv["array_type"] in (VT.FLOAT32, VT.FLOAT64):
            assert [struct.pack("<d", x) for x in got] == [struct.pack("<d", x) for x in want], kv["key"]
        elif kv["type"] in (VT.FLOAT32, VT.FLOAT64):
            assert struct.pack("<d", got) == struct.pack("<d", want), kv["key"]
        else:
            assert got == want, (kv["key"], got, want)
    assert len(r.tensors) == len(parsed["tensors"]), path
    for rt, t in zip(r.tensors, parsed["tensors"]):
        assert rt.name == t["name"] and rt.tensor_type == t["type"], t["name"]
        assert [int(d) for d in rt.shape] == t["dims"], t["name"]
        assert rt.n_bytes == t["n_bytes"], t["name"]
        start = parsed["data_offset"] + t["offset"]
        assert rt.data_offset == start, t["name"]
        assert rt.data.tobytes() == blob[start:start + t["n_bytes"]], t["name"]


def describe(path, n_first=16, long_arrays=False, check=True):
    blob = open(path, "rb").read()
    parsed = strict_parse(blob)
    if check:
        cross_check(path, blob, parsed)
    out = header_golden(blob, parsed)
    out["kvs"] = [kv_golden(kv, long_arrays) for kv in parsed["kvs"]]
    out["tensors"] = [tensor_golden(blob, parsed, t, n_first) for t in parsed["tensors"]]
    return out


# ---------------------------------------------------------------------------
# Quantizer golden
# ---------------------------------------------------------------------------

QUANT_ROW_NOTES = [
    "seeded normal, sigma 1",
    "all zeros",
    "constant 0.75",
    "seeded normal with one outlier of 1e4 at index 100",
    "tiny: seeded normal times 1e-6 (F16 subnormal range)",
    "negative only: -(|normal| + 0.01)",
    "mixed scales: each 32-value block is normal times 10^(block % 5 - 2)",
    "half-integer grid: (i - 256) / 2 for i in 0..511, many exact rounding ties",
]


def quantize_inputs():
    rng = np.random.default_rng(5005)
    x = np.empty((8, 512), np.float32)
    x[0] = rng.standard_normal(512)
    x[1] = 0.0
    x[2] = 0.75
    x[3] = rng.standard_normal(512)
    x[3, 100] = 1e4
    x[4] = rng.standard_normal(512) * 1e-6
    x[5] = -(np.abs(rng.standard_normal(512)) + 0.01)
    scale = 10.0 ** (np.arange(16) % 5 - 2)
    x[6] = (rng.standard_normal((16, 32)) * scale[:, None]).ravel()
    x[7] = (np.arange(512) - 256) / 2.0
    return x


# Floats, or ("bits", u32) for NaNs: a Python float is a double, and the trip
# through it would quiet a signalling NaN.
SPECIALS = [
    0.0, -0.0, 1.0, -1.0, np.inf, -np.inf,
    ("bits", 0x7FC00000),   # quiet NaN
    ("bits", 0x7F800001),   # signalling NaN
    ("bits", 0xFFC12345),   # negative NaN with a payload
    65504.0, 65519.996, 65520.0, -65520.0, 6.1035156e-05, 6.0e-08, 2.9e-08, 3.0e-08,
    1e-45, 1.1754942e-38, 3.4028235e38,
    1.0 + 2**-8, 1.0 + 3 * 2**-8, 1.0 + 2**-8 + 2**-20, 1.0 + 2**-11, 1.0 + 3 * 2**-11,
    0.1, -0.1, 1.0 / 3.0,
]


def make_quantize_golden():
    x = quantize_inputs()
    specials = np.array([v[1] if isinstance(v, tuple) else f32_bits(v) for v in SPECIALS],
                        "<u4").view("<f4")
    out = {
        "note": "quantize(rows) from gguf.quants; each row is quantized on its own "
                "(gguf-py gives the same bytes for the whole 8 x 512 array). "
                "Bytes are little-endian, rows_hex[i] is row i.",
        "rows": int(x.shape[0]), "row_length": int(x.shape[1]),
        "row_notes": QUANT_ROW_NOTES,
        "input_f32_bits": [[int(v) for v in row.view("<u4")] for row in x],
        "specials_f32_bits": [int(v) for v in specials.view("<u4")],
        "types": {},
    }
    for qt in QUANTIZABLE:
        q = np.ascontiguousarray(quantize(x, qt))
        per_row = [np.ascontiguousarray(quantize(x[i:i + 1], qt)).tobytes() for i in range(len(x))]
        qb = q.view(np.uint8).reshape(len(x), -1)
        assert [row.tobytes() for row in qb] == per_row, qt.name
        bs, ts = GGML_QUANT_SIZES[qt]
        back = np.asarray(dequantize(qb, qt), np.float32)
        entry = {
            "type_id": int(qt), "block_size": bs, "type_size": ts,
            "rows_hex": [b.hex() for b in per_row],
            "dequant_crc32": crc(back.astype("<f4").tobytes()),
        }
        if qt in (QT.F32, QT.F16, QT.BF16):
            s = np.ascontiguousarray(quantize(specials.reshape(1, -1), qt))
            entry["specials_hex"] = s.view(np.uint8).tobytes().hex()
            entry["specials_dequant_f32_bits"] = [
                int(v) for v in np.asarray(dequantize(s.view(np.uint8), qt), np.float32)
                .astype("<f4").ravel().view("<u4")]
        out["types"][qt.name] = entry
    return out


# ---------------------------------------------------------------------------
# Malformed corpus (raw bytes)
# ---------------------------------------------------------------------------

def u32(v):
    return struct.pack("<I", v)


def u64(v):
    return struct.pack("<Q", v)


def gstr(s):
    b = s.encode("utf-8") if isinstance(s, str) else s
    return u64(len(b)) + b


def kv_raw(key, vtype, payload):
    return gstr(key) + u32(vtype) + payload


def kv_s(key, val):
    return kv_raw(key, VT.STRING, gstr(val))


def kv_u32(key, val):
    return kv_raw(key, VT.UINT32, u32(val))


def kv_arr(key, sub, count, payload):
    return kv_raw(key, VT.ARRAY, u32(sub) + u64(count) + payload)


def ti_raw(name, dims, ttype, offset):
    return gstr(name) + u32(len(dims)) + b"".join(u64(d) for d in dims) + u32(ttype) + u64(offset)


def head(n_tensors, n_kv, version=3, magic=b"GGUF"):
    return magic + u32(version) + u64(n_tensors) + u64(n_kv)


def padded(b, align=DEFAULT_ALIGNMENT):
    return b + b"\0" * (pad_to(len(b), align) - len(b))


ARCH = kv_s("general.architecture", "llama")
NAME = kv_s("general.name", "malformed base")
A_VALS = np.arange(8, dtype="<f4")                      # tensor "a": F32 [8], 32 bytes
B_VALS = quantize(np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32), QT.Q8_0)
A_DATA = A_VALS.tobytes()
B_DATA = B_VALS.tobytes()                                # tensor "b": Q8_0 [32, 2], 68 bytes


def gguf_file(kvs, tensors, version=3, align=DEFAULT_ALIGNMENT, n_tensors=None, n_kv=None,
              magic=b"GGUF", trailing_pad=True):
    """tensors: (name, dims, type, data bytes, offset or None for the right one)."""
    infos, data, off = b"", b"", 0
    for i, (name, dims, ttype, payload, offset) in enumerate(tensors):
        infos += ti_raw(name, dims, ttype, off if offset is None else offset)
        data += payload
        size = pad_to(len(payload), align)
        if trailing_pad or i < len(tensors) - 1:
            data += b"\0" * (size - len(payload))
        off += size
    meta = head(len(tensors) if n_tensors is None else n_tensors,
                len(kvs) if n_kv is None else n_kv, version, magic) + b"".join(kvs) + infos
    return (padded(meta, align) if tensors else meta) + data


BASE_TENSORS = [("a", [8], QT.F32, A_DATA, None), ("b", [32, 2], QT.Q8_0, B_DATA, None)]


def base(**kw):
    return gguf_file([ARCH, NAME], BASE_TENSORS, **kw)


def make_malformed():
    if os.path.isdir(MALFORMED):
        shutil.rmtree(MALFORMED)
    os.makedirs(MALFORMED)
    cases = []

    def case(file, expect, why, blob, key=None, tensor=None):
        with open(os.path.join(MALFORMED, file), "wb") as f:
            f.write(blob)
        cases.append({"file": file, "expect": expect, "key": key, "tensor": tensor, "why": why})

    ok = base()
    # -- magic and version
    case("bad-magic.gguf", "badMagic", "magic 'GGUX' instead of 'GGUF'", b"GGUX" + ok[4:])
    case("bad-magic-lowercase.gguf", "badMagic", "magic 'gguf' (lower case)", b"gguf" + ok[4:])
    case("bad-magic-ggjt.gguf", "badMagic",
         "the pre-GGUF GGJT magic ('tjgg' on disk) before an otherwise valid v3 file",
         b"tjgg" + ok[4:])
    for v, why in [(0, "version 0"),
                   (1, "version 1: GGUF v1 (u32 counts) is not read; the rest is a v3 layout"),
                   (4, "version 4, newer than 3"),
                   (0x03000000, "version 0x03000000: 3 byte-swapped, a big-endian file"),
                   (0xFFFFFFFF, "version 4294967295")]:
        case("bad-version-%d.gguf" % v if v < 10 else "bad-version-0x%08x.gguf" % v,
             "unsupportedVersion", why, ok[:4] + u32(v) + ok[8:])
    # -- truncation of fixed-size fields
    case("bad-empty-file.gguf", "truncated", "zero-byte file", b"")
    case("bad-truncated-magic.gguf", "truncated", "3 bytes: 'GGU'", b"GGU")
    case("bad-truncated-counts.gguf", "truncated",
         "ends 4 bytes into the 8-byte tensor_count", ok[:12])
    kv_start = 24
    cut = kv_start + len(ARCH) + len(gstr("general.name")) + 2
    case("bad-truncated-kv-type.gguf", "truncated",
         "ends 2 bytes into the value type of general.name (the key itself is complete)",
         ok[:cut], key="general.name")
    blob = head(0, 2) + ARCH + kv_u32("llama.block_count", 7)
    case("bad-truncated-kv-value.gguf", "truncated",
         "ends 2 bytes into the UINT32 value of llama.block_count (tensor_count 0)",
         blob[:-2], key="llama.block_count")
    case("bad-truncated-missing-kv.gguf", "truncated",
         "kv_count is 3 but the file ends after 2 KVs, where the 3rd key's length would be "
         "(tensor_count 0; the count passes the up-front size check)",
         head(0, 3) + ARCH + NAME)
    long_name = "blk.0.attn_q.weight"
    blob = head(1, 1) + ARCH + ti_raw(long_name, [64, 64], QT.F32, 0)
    cut = 24 + len(ARCH) + len(gstr(long_name)) + 4 + 8 + 3
    case("bad-truncated-tensor-info.gguf", "truncated",
         "ends 3 bytes into the second dimension of the only tensor's info",
         blob[:cut], tensor=long_name)
    # -- strings whose length passes the end of the file
    blob = head(0, 2) + ARCH + gstr("general.name") + u32(VT.STRING)
    rest = b"short"
    case("bad-string-value-too-long.gguf", "stringTooLong",
         "general.name's string length is one more than the bytes left",
         blob + u64(len(rest) + 1) + rest, key="general.name")
    case("bad-key-length-too-long.gguf", "stringTooLong",
         "the 2nd key's length is 1000 but 40 bytes are left",
         head(0, 2) + ARCH + u64(1000) + b"k" * 40)
    case("bad-string-array-item-too-long.gguf", "stringTooLong",
         "3rd string of a 3-string array claims 2^40 bytes",
         head(0, 2) + ARCH + kv_arr("test.strings", VT.STRING, 3, gstr("x") + gstr("y") + u64(2**40) + b"z"),
         key="test.strings")
    case("bad-tensor-name-length-too-long.gguf", "stringTooLong",
         "the tensor name's length is 40 (under the 64-byte limit) but only 30 bytes are left",
         head(1, 1) + ARCH + u64(40) + b"n" * 30)
    # -- counts that the file could never hold
    case("bad-tensor-count-huge.gguf", "countTooLarge", "tensor_count 2^62",
         head(2**62, 2) + ok[24:])
    case("bad-kv-count-huge.gguf", "countTooLarge", "kv_count 2^62", head(2, 2**62) + ok[24:])
    case("bad-kv-count-max.gguf", "countTooLarge",
         "kv_count 2^64-1 (negative as int64)", head(2, 2**64 - 1) + ok[24:])
    case("bad-array-count-huge.gguf", "countTooLarge", "UINT8 array with count 2^62",
         head(0, 2) + ARCH + kv_arr("test.bytes", VT.UINT8, 2**62, b"\1\2\3\4"), key="test.bytes")
    case("bad-string-array-count-huge.gguf", "countTooLarge",
         "STRING array with count 2^61 (each element needs at least its 8-byte length)",
         head(0, 2) + ARCH + kv_arr("test.strings", VT.STRING, 2**61, gstr("x")), key="test.strings")
    case("bad-array-count-past-end.gguf", "countTooLarge",
         "UINT32 array with count 100 and 12 bytes of elements left in the file",
         head(0, 2) + ARCH + kv_arr("test.u32", VT.UINT32, 100, u32(1) * 3), key="test.u32")
    # -- keys
    case("bad-duplicate-key.gguf", "duplicateKey", "general.name appears twice",
         gguf_file([ARCH, NAME, kv_s("general.name", "again")], BASE_TENSORS), key="general.name")
    case("bad-empty-key.gguf", "emptyKey", "a KV whose key is the empty string",
         gguf_file([ARCH, kv_u32("", 1)], BASE_TENSORS))
    # -- value types
    case("bad-value-type-13.gguf", "invalidValueType", "value type 13, one past FLOAT64",
         gguf_file([ARCH, kv_raw("test.x", 13, u32(0))], BASE_TENSORS), key="test.x")
    case("bad-value-type-max.gguf", "invalidValueType", "value type 0xFFFFFFFF",
         gguf_file([ARCH, kv_raw("test.x", 0xFFFFFFFF, u32(0))], BASE_TENSORS), key="test.x")
    case("bad-array-of-arrays.gguf", "invalidValueType",
         "an array whose element type is ARRAY (llama.cpp rejects nested arrays)",
         gguf_file([ARCH, kv_arr("test.nested", VT.ARRAY, 1, u32(VT.UINT8) + u64(1) + b"\1")],
                   BASE_TENSORS), key="test.nested")
    case("bad-array-element-type-13.gguf", "invalidValueType", "an array of element type 13",
         gguf_file([ARCH, kv_arr("test.arr", 13, 1, u32(0))], BASE_TENSORS), key="test.arr")
    # -- BOOL
    case("bad-bool-2.gguf", "invalidBool",
         "BOOL byte 2 (llama.cpp reads any non-zero byte as true; Flare accepts only 0 and 1)",
         gguf_file([ARCH, kv_raw("test.flag", VT.BOOL, b"\2")], BASE_TENSORS), key="test.flag")
    case("bad-bool-ff.gguf", "invalidBool", "BOOL byte 0xFF",
         gguf_file([ARCH, kv_raw("test.flag", VT.BOOL, b"\xff")], BASE_TENSORS), key="test.flag")
    case("bad-bool-array.gguf", "invalidBool", "BOOL array [1, 0, 2]",
         gguf_file([ARCH, kv_arr("test.flags", VT.BOOL, 3, b"\1\0\2")], BASE_TENSORS),
         key="test.flags")
    # -- general.alignment
    for a in (0, 3, 48):
        case("bad-alignment-%d.gguf" % a, "badAlignment",
             "general.alignment %d is not a power of two" % a + (" (zero)" if a == 0 else ""),
             gguf_file([ARCH, kv_u32("general.alignment", a)], BASE_TENSORS,
                       align=max(a, 1)), key="general.alignment")
    case("bad-alignment-uint64.gguf", "badAlignment",
         "general.alignment stored as UINT64 32 instead of UINT32",
         gguf_file([ARCH, kv_raw("general.alignment", VT.UINT64, u64(32))], BASE_TENSORS),
         key="general.alignment")
    case("bad-alignment-int32.gguf", "badAlignment",
         "general.alignment stored as INT32 32 instead of UINT32",
         gguf_file([ARCH, kv_raw("general.alignment", VT.INT32, u32(32))], BASE_TENSORS),
         key="general.alignment")
    # -- tensor infos
    n64 = "t" * 64
    case("bad-name-64-bytes.gguf", "nameTooLong", "a 64-byte tensor name (the limit is 63)",
         gguf_file([ARCH], [(n64, [8], QT.F32, A_DATA, None)]), tensor=n64)
    n64u = "é" * 32
    case("bad-name-64-bytes-utf8.gguf", "nameTooLong",
         "a 32-character name of 64 UTF-8 bytes (the limit counts bytes)",
         gguf_file([ARCH], [(n64u, [8], QT.F32, A_DATA, None)]), tensor=n64u)
    case("bad-duplicate-tensor.gguf", "duplicateTensor", "two tensors named 'a'",
         gguf_file([ARCH], [("a", [8], QT.F32, A_DATA, None), ("a", [8], QT.F32, A_DATA, None)]),
         tensor="a")
    case("bad-five-dims.gguf", "tooManyDims", "n_dims 5 (the limit is 4)",
         gguf_file([ARCH], [("a", [2, 1, 1, 2, 2], QT.F32, A_DATA, None)]), tensor="a")
    case("bad-element-count-overflow.gguf", "elementCountOverflow",
         "F32 dims [2^32, 2^32]: 2^64 elements do not fit in int64",
         gguf_file([ARCH], [("a", [2**32, 2**32], QT.F32, A_DATA, None)]), tensor="a")
    case("bad-dim-negative.gguf", "elementCountOverflow",
         "F32 dims [2^63]: the dimension itself is negative as int64",
         gguf_file([ARCH], [("a", [2**63], QT.F32, A_DATA, None)]), tensor="a")
    case("bad-element-count-overflow-4d.gguf", "elementCountOverflow",
         "F32 dims [2^16, 2^16, 2^16, 2^16]: 2^64 elements",
         gguf_file([ARCH], [("a", [2**16] * 4, QT.F32, A_DATA, None)]), tensor="a")
    case("bad-tensor-type-99.gguf", "invalidTensorType", "tensor type 99",
         gguf_file([ARCH], [("a", [8], 99, A_DATA, None)]), tensor="a")
    case("bad-tensor-type-42.gguf", "invalidTensorType",
         "tensor type 42, the first id past Q1_0 (41) in gguf-py 0.19.0",
         gguf_file([ARCH], [("a", [8], TYPE_COUNT, A_DATA, None)]), tensor="a")
    for t, what in [(4, "Q4_2"), (5, "Q4_3"), (31, "Q4_0_4_4"), (36, "IQ4_NL_4_4")]:
        case("bad-removed-type-%d.gguf" % t, "removedTensorType",
             "tensor type %d (%s), removed from ggml; llama.cpp reports block size 0" % (t, what),
             gguf_file([ARCH], [("a", [32], t, A_DATA, None)]), tensor="a")
    case("bad-block-size-q8_0.gguf", "blockSizeMismatch",
         "Q8_0 with dims[0] = 33, not a multiple of its 32-element block",
         gguf_file([ARCH], [("b", [33, 2], QT.Q8_0, B_DATA, None)]), tensor="b")
    case("bad-block-size-q4_k.gguf", "blockSizeMismatch",
         "Q4_K with dims[0] = 128, not a multiple of 256 (the row count 2 does not help)",
         gguf_file([ARCH], [("k", [128, 2], QT.Q4_K, b"\0" * 144, None)]), tensor="k")
    # -- offsets
    a2 = ("a", [8], QT.F32, A_DATA, None)
    case("bad-offset-gap.gguf", "badOffset",
         "tensor 'b' at offset 64 instead of 32; the data section is long enough",
         gguf_file([ARCH, NAME], [BASE_TENSORS[0], ("b", [32, 2], QT.Q8_0, B_DATA, 64)])
         + b"\0" * 32, tensor="b")
    case("bad-offset-first-not-zero.gguf", "badOffset",
         "the first tensor at offset 32 instead of 0; the data section is long enough",
         gguf_file([ARCH], [("a", [8], QT.F32, A_DATA, 32)]) + b"\0" * 32, tensor="a")
    case("bad-offset-reordered.gguf", "badOffset",
         "two 32-byte tensors whose offsets are swapped (a at 32, c at 0): in range, aligned, "
         "no overlap, but not in file order",
         gguf_file([ARCH], [("a", [8], QT.F32, A_DATA, 32), ("c", [8], QT.F32, A_DATA[::-1], 0)]),
         tensor="a")
    case("bad-offset-overlap.gguf", "badOffset", "two tensors both at offset 0",
         gguf_file([ARCH], [a2, ("c", [8], QT.F32, A_DATA[::-1], 0)]), tensor="c")
    case("bad-offset-misaligned.gguf", "badOffset",
         "F32 [5] (20 bytes) then 'c' at offset 20: packed with no padding to 32",
         gguf_file([ARCH], [("a", [5], QT.F32, A_DATA[:20], None), ("c", [8], QT.F32, A_DATA, 20)]),
         tensor="c")
    # -- data range
    case("bad-data-cut-short.gguf", "dataOutOfRange",
         "the file ends 1 byte before the end of tensor 'b' (no trailing padding either)",
         base(trailing_pad=False)[:-1], tensor="b")
    case("bad-data-past-eof.gguf", "dataOutOfRange",
         "F32 [1048576] (4 MiB) with 32 bytes of data in the file",
         gguf_file([ARCH], [("a", [1048576], QT.F32, A_DATA, None)]), tensor="a")

    # -- borderline but valid
    case("ok-base.gguf", "ok", "the valid file most bad-* cases are derived from", ok)
    case("ok-zero-tensors.gguf", "ok",
         "tensor_count 0, and the file ends right after the KVs with no padding "
         "(llama.cpp only aligns the data section when there are tensors)",
         gguf_file([ARCH, NAME], []))
    case("ok-zero-tensors-padded.gguf", "ok",
         "tensor_count 0, padded to 32 bytes the way GGUFWriter writes it",
         padded(head(0, 2) + ARCH + NAME))
    case("ok-only-architecture.gguf", "ok", "general.architecture is the only KV",
         gguf_file([ARCH], BASE_TENSORS))
    case("ok-version-2.gguf", "ok", "version 2: the same layout as v3 (u64 counts)",
         base(version=2))
    case("ok-alignment-1.gguf", "ok",
         "general.alignment 1 (a power of two): tensors packed with no padding",
         gguf_file([ARCH, kv_u32("general.alignment", 1)],
                   [("a", [5], QT.F32, A_DATA[:20], None), ("b", [32, 2], QT.Q8_0, B_DATA, None)],
                   align=1))
    n63 = "t" * 63
    case("ok-name-63-bytes.gguf", "ok", "a 63-byte tensor name, the longest allowed",
         gguf_file([ARCH], [(n63, [8], QT.F32, A_DATA, None)]))
    case("ok-no-trailing-padding.gguf", "ok",
         "the last tensor's padding is missing: its data ends exactly at the end of the file",
         base(trailing_pad=False))
    case("ok-zero-dims.gguf", "ok", "n_dims 0: a scalar, one F32 element",
         gguf_file([ARCH], [("s", [], QT.F32, A_DATA[4:8], None)]))
    case("ok-zero-element-tensor.gguf", "ok",
         "F32 [0, 4] (0 bytes) at offset 0, followed by 'a' also at offset 0",
         gguf_file([ARCH], [("e", [0, 4], QT.F32, b"", None), a2]))
    case("ok-empty-values.gguf", "ok", "an empty STRING value and an empty INT32 array",
         gguf_file([ARCH, kv_s("test.empty", ""), kv_arr("test.none", VT.INT32, 0, b"")],
                   BASE_TENSORS))
    case("ok-unicode-names.gguf", "ok", "non-ASCII key and tensor name",
         gguf_file([ARCH, kv_s("test.clé.日本", "値")], [("wéight.🙂", [8], QT.F32, A_DATA, None)]))

    with open(os.path.join(MALFORMED, "manifest.json"), "w") as f:
        f.write(json.dumps(cases, indent=2, ensure_ascii=False) + "\n")
    return cases


READER_CHILD = """
import sys, logging
logging.disable(logging.WARNING)
from gguf import GGUFReader
try:
    r = GGUFReader(sys.argv[1])
    for t in r.tensors:
        t.data.tobytes()
    print("ok")
except Exception as exc:
    msg = str(exc).splitlines()[0][:70] if str(exc) else ""
    print("error: %s: %s" % (type(exc).__name__, msg))
"""


def reader_verdict(path):
    """GGUFReader's verdict on one file, in a child limited to 1 GiB and 60 s.

    The limits matter: on an array count of 2^62 the 0.19.0 reader loops over
    the count, appending an empty numpy view per element, until memory runs out."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    try:
        res = subprocess.run([sys.executable, "-c", READER_CHILD, path], capture_output=True,
                             text=True, timeout=60, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        return "error: no answer within 60 s"
    out = res.stdout.strip()
    if res.returncode != 0 or not out:
        last = (res.stderr.strip().splitlines() or ["exit %d" % res.returncode])[-1]
        return "error: child died (%s)" % last[:70]
    return out


def check_malformed(cases):
    """strict_parse must give each case's code; report where GGUFReader differs."""
    diffs = []
    for c in cases:
        path = os.path.join(MALFORMED, c["file"])
        blob = open(path, "rb").read()
        try:
            strict_parse(blob)
            got = ("ok", None, None)
        except Reject as r:
            got = (r.code, r.key, r.tensor)
        want = (c["expect"], c["key"], c["tensor"])
        assert got == want, (c["file"], got, want)
        verdict = reader_verdict(path)
        if (verdict == "ok") != (c["expect"] == "ok"):
            diffs.append("  %-40s expect %-20s gguf-py %s" % (c["file"], c["expect"], verdict))
    print("malformed cases where gguf-py's GGUFReader differs: %d" % len(diffs))
    for d in diffs:
        print(d)


# ---------------------------------------------------------------------------
# gguf-dump goldens
# ---------------------------------------------------------------------------

def gguf_dump(directory, name, args, out_name):
    """Run gguf-dump in the file's folder on its bare name; save stdout as is."""
    exe = shutil.which("gguf-dump")
    if exe is None:
        sys.exit("gguf-dump is not on PATH (it comes with gguf-py: pip install gguf==0.19.0)")
    env = dict(os.environ, PYTHONIOENCODING="utf-8", PYTHONHASHSEED="0")
    res = subprocess.run([exe] + args + [name], cwd=directory, env=env,
                         capture_output=True, check=True)
    with open(os.path.join(GOLDEN, out_name), "wb") as f:
        f.write(res.stdout)


def dump_goldens(directory, name, tag, array=True):
    gguf_dump(directory, name, [], "gguf-dump-%s.txt" % tag)
    gguf_dump(directory, name, ["--json"], "gguf-dump-%s.json" % tag)
    if array:
        gguf_dump(directory, name, ["--json", "--json-array"], "gguf-dump-%s-array.json" % tag)


# ---------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------

def dump_json(obj, indent=0):
    """JSON with one line per list of scalars, to keep goldens diff-friendly."""
    pad, inner = "  " * indent, "  " * (indent + 1)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [inner + json.dumps(k, ensure_ascii=False) + ": " + dump_json(v, indent + 1)
                 for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list):
        if all(not isinstance(v, (dict, list)) for v in obj):
            return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        if not obj:
            return "[]"
        return "[\n" + ",\n".join(inner + dump_json(v, indent + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False, allow_nan=False)


def write_golden(name, obj):
    with open(os.path.join(GOLDEN, name), "w", encoding="utf-8") as f:
        f.write(dump_json(obj) + "\n")


VALID_FILES = ["metadata-all-types.gguf", "quant-types.gguf", "alignment-8.gguf",
               "alignment-64.gguf", "alignment-256.gguf", "alignment-padding.gguf",
               "tiny-llama.gguf"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-real-model", action="store_true",
                    help="skip the goldens of the real SmolLM2 file")
    args = ap.parse_args()
    assert importlib.metadata.version("gguf") == "0.19.0", importlib.metadata.version("gguf")
    check_type_support()

    make_metadata_all_types()
    make_quant_types()
    make_alignment()
    make_tiny_llama()
    cases = make_malformed()
    check_malformed(cases)

    os.makedirs(GOLDEN, exist_ok=True)
    values = {rel: describe(os.path.join(HERE, rel)) for rel in VALID_FILES}
    for c in cases:
        if c["expect"] == "ok":
            rel = "malformed/" + c["file"]
            values[rel] = describe(os.path.join(HERE, rel))
    write_golden("gguf-values.json", values)
    write_golden("gguf-quantize.json", make_quantize_golden())
    dump_goldens(HERE, "metadata-all-types.gguf", "metadata-all-types")
    dump_goldens(HERE, "tiny-llama.gguf", "tiny-llama")

    real = os.path.join(SMOLLM2_DIR, SMOLLM2_NAME)
    if args.no_real_model:
        print("skipped the SmolLM2 goldens (--no-real-model)")
    elif not os.path.isfile(real) or os.path.getsize(real) != SMOLLM2_SIZE:
        sys.exit("%s is missing or not %d bytes: run scripts/fetch-models.sh, "
                 "or pass --no-real-model" % (real, SMOLLM2_SIZE))
    else:
        g = {"file": SMOLLM2_NAME}
        g.update(describe(real, n_first=8, long_arrays=True))
        write_golden("gguf-smollm2.json", g)
        dump_goldens(SMOLLM2_DIR, SMOLLM2_NAME, "smollm2", array=False)
    print("wrote %d valid files, %d malformed cases" % (len(VALID_FILES), len(cases)))


if __name__ == "__main__":
    main()

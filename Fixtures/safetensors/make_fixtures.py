#!/usr/bin/env python3
"""Regenerate Flare's safetensors test fixtures and golden values.

This script is the oracle for Flare's safetensors tests. It makes:

  Fixtures/safetensors/
    dtypes.safetensors        one small tensor per safetensors dtype (edge values)
    scalars.safetensors       rank-0 tensors, no __metadata__
    empty.safetensors         tensors with a 0 in the shape, plus one normal tensor
    small.safetensors         3 tiny tensors (< 300 bytes) for truncation tests
    unaligned.safetensors     valid file whose F32/F64 data is not dtype-aligned
    sharded/                  2-shard model + model.safetensors.index.json
    peft-adapter/             tiny LoRA adapter (adapter_config.json + weights)
    malformed/                raw-byte corpus of bad and borderline-ok headers,
                              described by malformed/manifest.json
  Fixtures/golden/
    safetensors-values.json   what a reader must see in every valid file above
    dtype-conversions.json    float32 <-> F16/BF16/F8/F6/F4 encode/decode tables

Oracles: the `safetensors` Python package (0.8.0) writes the valid files,
numpy and ml_dtypes (0.6.0) provide every numeric conversion.

Regenerate from the repository root with

    python3 Fixtures/safetensors/make_fixtures.py

The output is deterministic (fixed seeds, no timestamps) and is committed.

Sub-byte packing (Flare's documented convention; the format spec leaves it
open): the elements of an F4/F6 tensor form a little-endian bit stream.
Element i occupies stream bits [w*i, w*i + w) with w = 4 or 6, stream bit k is
bit (k % 8) of byte k // 8, and each element's code is written LSB first. The
code is the low w bits of the ml_dtypes one-byte code (sign is the top bit of
the field). For F4, element 0 is therefore the low nibble of byte 0.

Two deviations from "everything written by the package", both forced by it:
  * The 0.8.0 Python writer has no F6_E2M3/F6_E3M2 dtype. Those two tensors in
    dtypes.safetensors are written by the package as U8 placeholders holding
    the packed bytes; afterwards only their header entries are rewritten
    (dtype and shape) and the header re-padded the way the package pads it.
    The package's reader then accepts the file and returns the same bytes.
  * The package writer always places tensors so that data is dtype-aligned
    (it sorts by dtype size, largest first, then by name, and pads the header
    with spaces to a multiple of 8). unaligned.safetensors is therefore
    written by hand, then checked with the package's reader.
"""

import json
import math
import os
import struct
import warnings
import zlib

import ml_dtypes as md
import numpy as np
import safetensors
from safetensors import TensorSpec, deserialize, serialize
from safetensors.numpy import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.dirname(HERE)
GOLDEN = os.path.join(FIXTURES, "golden")
MALFORMED = os.path.join(HERE, "malformed")

warnings.simplefilter("ignore")
np.seterr(all="ignore")

# ---------------------------------------------------------------------------
# dtype table
# ---------------------------------------------------------------------------

# code -> (numpy/ml_dtypes type, bit width, name understood by TensorSpec)
DTYPES = {
    "BOOL": (np.bool_, 8, "bool"),
    "U8": (np.uint8, 8, "uint8"),
    "I8": (np.int8, 8, "int8"),
    "U16": (np.uint16, 16, "uint16"),
    "I16": (np.int16, 16, "int16"),
    "F16": (np.float16, 16, "float16"),
    "BF16": (md.bfloat16, 16, "bfloat16"),
    "U32": (np.uint32, 32, "uint32"),
    "I32": (np.int32, 32, "int32"),
    "F32": (np.float32, 32, "float32"),
    "F64": (np.float64, 64, "float64"),
    "U64": (np.uint64, 64, "uint64"),
    "I64": (np.int64, 64, "int64"),
    "C64": (np.complex64, 64, "complex64"),
    "F8_E4M3": (md.float8_e4m3fn, 8, "float8_e4m3fn"),
    "F8_E5M2": (md.float8_e5m2, 8, "float8_e5m2"),
    "F8_E8M0": (md.float8_e8m0fnu, 8, "float8_e8m0fnu"),
    "F8_E4M3FNUZ": (md.float8_e4m3fnuz, 8, "float8_e4m3fnuz"),
    "F8_E5M2FNUZ": (md.float8_e5m2fnuz, 8, "float8_e5m2fnuz"),
    "F4": (md.float4_e2m1fn, 4, "float4_e2m1fn_x2"),  # storage: 2 per byte
    "F6_E2M3": (md.float6_e2m3fn, 6, None),  # not writable by the package
    "F6_E3M2": (md.float6_e3m2fn, 6, None),
}
INT_DTYPES = {"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64"}
SUB_BYTE = {"F4", "F6_E2M3", "F6_E3M2"}
CODE_UINT = {8: np.uint8, 16: np.uint16}


def nbytes_for(dtype, count):
    bits = DTYPES[dtype][1] * count
    assert bits % 8 == 0, (dtype, count)
    return bits // 8


def pack_bits(codes, w):
    """Pack w-bit codes into the little-endian bit stream described above."""
    acc, nbits, out = 0, 0, bytearray()
    for c in codes:
        acc |= (int(c) & ((1 << w) - 1)) << nbits
        nbits += w
        while nbits >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            nbits -= 8
    assert nbits == 0, "element bits must fill whole bytes"
    return bytes(out)


def unpack_bits(raw, w, count):
    stream = int.from_bytes(raw, "little")
    mask = (1 << w) - 1
    return np.array([(stream >> (w * i)) & mask for i in range(count)], dtype=np.uint8)


def u32_bits(arr_f32):
    return np.ascontiguousarray(arr_f32, dtype=np.float32).view(np.uint32).ravel().tolist()


def f32_from_bits(bits):
    return np.array(bits, dtype=np.uint32).view(np.float32)


def int_to_f32_rne(v):
    """Correctly rounded (nearest, ties to even) int -> float32, no libm."""
    if v == 0:
        return np.float32(0.0)
    sign, a = (-1 if v < 0 else 1), abs(v)
    shift = a.bit_length() - 24
    if shift > 0:
        q, r = a >> shift, a & ((1 << shift) - 1)
        half = 1 << (shift - 1)
        if r > half or (r == half and q & 1):
            q += 1
        a = q << shift
    return np.float32(sign * float(a))


# ---------------------------------------------------------------------------
# writing helpers
# ---------------------------------------------------------------------------

def header_dumps(obj):
    """Compact JSON exactly as the package emits it (checked at run time)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def pad8(header):
    return header + b" " * (-len(header) % 8)


def package_serialize(entries, metadata):
    """entries: list of (name, dtype, shape, raw bytes). Returns file bytes.

    Everything goes through safetensors.serialize; F6 tensors go in as U8
    placeholders and only their header entries are rewritten afterwards.
    """
    keep_alive, specs, f6 = [], {}, {}
    for name, dtype, shape, raw in entries:
        buf = np.frombuffer(raw, dtype=np.uint8).copy() if raw else np.zeros(1, np.uint8)
        keep_alive.append(buf)
        writer_name = DTYPES[dtype][2]
        storage_shape = list(shape)
        if dtype == "F4":
            assert shape and shape[-1] % 2 == 0
            storage_shape[-1] //= 2  # TensorSpec doubles it back
        if writer_name is None:
            f6[name] = (dtype, list(shape))
            writer_name, storage_shape = "uint8", [len(raw)]
        specs[name] = TensorSpec(dtype=writer_name, shape=storage_shape,
                                 data_ptr=buf.ctypes.data, data_len=len(raw))
    # The package emits __metadata__ keys in hash-map order, which changes from
    # run to run. Serialize until the keys come out sorted so that the bytes
    # are reproducible (with one key this is the first try).
    for _ in range(1000):
        blob = bytes(serialize(specs, metadata=metadata))
        n = struct.unpack_from("<Q", blob)[0]
        pairs = json.loads(blob[8:8 + n], object_pairs_hook=lambda p: p)
        keys = [k for k, _ in dict(pairs).get("__metadata__", [])]
        if keys == sorted(keys):
            break
    else:
        raise RuntimeError("package never produced sorted metadata keys")
    if f6:
        n = struct.unpack_from("<Q", blob)[0]
        text = blob[8:8 + n]
        header = json.loads(text)
        assert pad8(header_dumps(header)) == text, "package header style changed"
        for name, (dtype, shape) in f6.items():
            assert header[name]["dtype"] == "U8"
            header[name]["dtype"], header[name]["shape"] = dtype, shape
        new = pad8(header_dumps(header))
        blob = struct.pack("<Q", len(new)) + new + blob[8 + n:]
    return blob


def write(path, blob):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(blob)


def codes_as(dtype, codes):
    """Raw bytes of a tensor given its element codes (floats of small types)."""
    t, w, _ = DTYPES[dtype]
    if dtype in SUB_BYTE:
        return pack_bits(codes, w)
    return np.array(codes, dtype=CODE_UINT[w]).astype("<u%d" % (w // 8)).tobytes()


# ---------------------------------------------------------------------------
# 1. valid files written by the package
# ---------------------------------------------------------------------------

def le(values, np_dtype):
    return np.array(values, dtype=np_dtype).astype(np.dtype(np_dtype).newbyteorder("<")).tobytes()


def make_dtypes():
    f32 = lambda bits: f32_from_bits(bits).tobytes()  # noqa: E731
    e = []  # (name, dtype, shape, raw)
    e.append(("bool", "BOOL", [2, 3], le([True, False, False, True, True, False], np.bool_)))
    e.append(("u8", "U8", [2, 3], le([0, 1, 127, 128, 254, 255], np.uint8)))
    e.append(("i8", "I8", [2, 3], le([-128, -1, 0, 1, 126, 127], np.int8)))
    e.append(("u16", "U16", [2, 3], le([0, 1, 256, 32768, 65534, 65535], np.uint16)))
    e.append(("i16", "I16", [2, 3], le([-32768, -1, 0, 1, 255, 32767], np.int16)))
    e.append(("u32", "U32", [7], le([0, 1, 65536, 16777217, 2**31, 2**32 - 2, 2**32 - 1], np.uint32)))
    e.append(("i32", "I32", [7], le([-2**31, -16777217, -1, 0, 1, 16777217, 2**31 - 1], np.int32)))
    e.append(("u64", "U64", [2, 3], le([0, 1, 2**53 + 1, 2**63, 2**64 - 2, 2**64 - 1], np.uint64)))
    e.append(("i64", "I64", [2, 3], le([-2**63, -2**53 - 1, -1, 0, 1, 2**63 - 1], np.int64)))
    # F16: +0, -0, max, -max, +inf, -inf, qNaN, -NaN with payload,
    # min subnormal, max subnormal, min normal, ~1/3
    e.append(("f16", "F16", [3, 4], codes_as("F16", [
        0x0000, 0x8000, 0x7BFF, 0xFBFF, 0x7C00, 0xFC00, 0x7E00, 0xFE01,
        0x0001, 0x03FF, 0x0400, 0x3555])))
    e.append(("bf16", "BF16", [3, 4], codes_as("BF16", [
        0x0000, 0x8000, 0x7F7F, 0xFF7F, 0x7F80, 0xFF80, 0x7FC0, 0xFFC1,
        0x0001, 0x007F, 0x0080, 0x3EAB])))
    e.append(("f32", "F32", [3, 4], f32([
        0x00000000, 0x80000000, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000, 0xFF800000,
        0x7FC00000, 0xFFC00001, 0x00000001, 0x007FFFFF, 0x00800000, 0xBFC00000])))
    f32max = float(np.finfo(np.float32).max)
    e.append(("f64", "F64", [4, 4], le([
        0.0, -0.0, 1e300, -1e300, math.inf, -math.inf, math.nan, 5e-324,
        2.2250738585072014e-308, 2.0**-149, 0.1, f32max,
        2.0**128 - 2.0**103,          # halfway past float32 max -> inf
        2.0**128 - 2.0**103 - 2.0**80,  # just below -> float32 max
        1.0 + 2.0**-24,               # tie -> 1.0
        -(1.0 + 3 * 2.0**-24)], np.float64)))  # tie -> -(1 + 2^-22)
    e.append(("c64", "C64", [2, 2], le([
        complex(1.0, -2.0), complex(-0.0, math.inf),
        complex(math.nan, 2.0**-149), complex(f32max, -0.0)], np.complex64)))
    e.append(("f8_e4m3", "F8_E4M3", [2, 5], codes_as("F8_E4M3", [
        0x00, 0x80, 0x7E, 0xFE, 0x01, 0x87, 0x08, 0x7F, 0xFF, 0x38])))
    e.append(("f8_e5m2", "F8_E5M2", [3, 4], codes_as("F8_E5M2", [
        0x00, 0x80, 0x7B, 0xFB, 0x01, 0x83, 0x04, 0x7C, 0xFC, 0x7E, 0xFF, 0x3C])))
    e.append(("f8_e8m0", "F8_E8M0", [7], codes_as("F8_E8M0", [
        0x00, 0x01, 0x7E, 0x7F, 0x80, 0xFE, 0xFF])))
    e.append(("f8_e4m3fnuz", "F8_E4M3FNUZ", [2, 4], codes_as("F8_E4M3FNUZ", [
        0x00, 0x80, 0x7F, 0xFF, 0x01, 0x87, 0x08, 0x40])))
    e.append(("f8_e5m2fnuz", "F8_E5M2FNUZ", [2, 4], codes_as("F8_E5M2FNUZ", [
        0x00, 0x80, 0x7F, 0xFF, 0x01, 0x83, 0x04, 0x40])))
    # all 16 F4 codes, in an order where a nibble swap shows
    e.append(("f4", "F4", [2, 8], codes_as("F4", [
        7, 8, 1, 15, 0, 9, 2, 14, 3, 10, 4, 13, 5, 11, 6, 12])))
    e.append(("f6_e2m3", "F6_E2M3", [3, 4], codes_as("F6_E2M3", [
        0x00, 0x20, 0x1F, 0x3F, 0x01, 0x27, 0x08, 0x2C, 0x15, 0x3A, 0x10, 0x0B])))
    e.append(("f6_e3m2", "F6_E3M2", [3, 4], codes_as("F6_E3M2", [
        0x00, 0x20, 0x1F, 0x3F, 0x01, 0x23, 0x04, 0x0C, 0x2D, 0x16, 0x3B, 0x11])))
    assert {d for _, d, _, _ in e} == set(DTYPES)
    for name, dtype, shape, raw in e:
        assert len(raw) == nbytes_for(dtype, int(np.prod(shape))), name
    blob = package_serialize(e, {"format": "pt", "note": "flare golden"})
    write(os.path.join(HERE, "dtypes.safetensors"), blob)


def make_scalars():
    save_file({
        "f32": np.array(-2.5, dtype=np.float32),
        "i64": np.array(1234567890123456789, dtype=np.int64),
        "bf16": np.array(0x4049, dtype=np.uint16).view(md.bfloat16),  # 3.140625
        "bool": np.array(True),
    }, os.path.join(HERE, "scalars.safetensors"))  # metadata=None: no __metadata__


def make_empty():
    save_file({
        "empty_f32": np.zeros([0], dtype=np.float32),
        "empty_f16": np.zeros([3, 0], dtype=np.float16),
        "empty_i32": np.zeros([0, 5], dtype=np.int32),
        "weight": np.array([[1.0, -2.0], [0.5, 3.0]], dtype=np.float32),
    }, os.path.join(HERE, "empty.safetensors"), metadata={"format": "pt"})


def make_small():
    path = os.path.join(HERE, "small.safetensors")
    save_file({
        "a": np.array([[1.0, 2.0], [-3.5, 0.25]], dtype=np.float32),
        "b": np.array([1.0, -0.5, 65504.0], dtype=np.float16),
        "c": np.array([-7], dtype=np.int32),
    }, path, metadata={"format": "pt"})
    assert os.path.getsize(path) < 300


def make_unaligned():
    # Hand-written: the package writer would align these. 8 + N is a multiple
    # of 8, so the data section starts 8-aligned and "floats" (F32) begins at
    # data offset 3, "doubles" (F64) at data offset 19.
    header = {
        "__metadata__": {"format": "pt"},
        "bytes": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
        "floats": {"dtype": "F32", "shape": [4], "data_offsets": [3, 19]},
        "doubles": {"dtype": "F64", "shape": [2], "data_offsets": [19, 35]},
    }
    text = pad8(header_dumps(header))
    data = (le([1, 2, 3], np.uint8) + le([1.5, -2.0, 1e-40, 3.25], np.float32)
            + le([-0.125, 1e200], np.float64))
    write(os.path.join(HERE, "unaligned.safetensors"), struct.pack("<Q", len(text)) + text + data)


def make_sharded():
    rng = np.random.default_rng(1234)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    f16 = lambda *s: rng.standard_normal(s).astype(np.float16)  # noqa: E731
    shards = {
        "model-00001-of-00002.safetensors": {
            "model.embed_tokens.weight": f32(8, 4),
            "model.layers.0.self_attn.q_proj.weight": f16(4, 4),
            "model.layers.0.self_attn.v_proj.weight": f16(4, 4),
        },
        "model-00002-of-00002.safetensors": {
            "model.norm.weight": f32(4),
            "lm_head.weight": f32(8, 4),
        },
    }
    folder = os.path.join(HERE, "sharded")
    os.makedirs(folder, exist_ok=True)
    index = {"metadata": {"total_size": 0}, "weight_map": {}}
    for fname, tensors in shards.items():
        save_file(tensors, os.path.join(folder, fname), metadata={"format": "pt"})
        for name, arr in tensors.items():
            index["weight_map"][name] = fname
            index["metadata"]["total_size"] += arr.nbytes
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")


def make_peft():
    folder = os.path.join(HERE, "peft-adapter")
    os.makedirs(folder, exist_ok=True)
    config = {
        "alpha_pattern": {},
        "base_model_name_or_path": "tiny-llama",
        "bias": "none",
        "fan_in_fan_out": False,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "peft_type": "LORA",
        "r": 4,
        "rank_pattern": {"model.layers.1.self_attn.q_proj": 2},
        "target_modules": ["q_proj", "v_proj"],
        "task_type": "CAUSAL_LM",
        "use_rslora": False,
    }
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        f.write(json.dumps(config, indent=2, sort_keys=True) + "\n")
    rng = np.random.default_rng(4321)
    hidden, tensors = 16, {}
    for layer in (0, 1):
        for proj in ("q_proj", "v_proj"):
            r = 2 if (layer, proj) == (1, "q_proj") else 4
            base = "base_model.model.model.layers.%d.self_attn.%s" % (layer, proj)
            tensors[base + ".lora_A.weight"] = rng.standard_normal((r, hidden)).astype(np.float32)
            tensors[base + ".lora_B.weight"] = rng.standard_normal((hidden, r)).astype(np.float32)
    save_file(tensors, os.path.join(folder, "adapter_model.safetensors"), metadata={"format": "pt"})


VALID_FILES = [
    "dtypes.safetensors",
    "scalars.safetensors",
    "empty.safetensors",
    "small.safetensors",
    "unaligned.safetensors",
    "sharded/model-00001-of-00002.safetensors",
    "sharded/model-00002-of-00002.safetensors",
    "peft-adapter/adapter_model.safetensors",
]


# ---------------------------------------------------------------------------
# 2. golden values
# ---------------------------------------------------------------------------

def decode_tensor(dtype, shape, raw):
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    t, w, _ = DTYPES[dtype]
    if dtype in SUB_BYTE:
        vals = unpack_bits(raw, w, count).view(t)
    elif dtype in ("BF16",) or dtype.startswith("F8_"):
        vals = np.frombuffer(raw, dtype=t)
    else:
        vals = np.frombuffer(raw, dtype=np.dtype(t).newbyteorder("<"))
    assert vals.size == count
    if dtype == "C64":
        f = vals.astype(np.complex64).view(np.float32)
    else:
        f = vals.astype(np.float32)
    out = {"f32_bits": u32_bits(f)}
    if dtype in INT_DTYPES:
        exact = [int(v) for v in vals.tolist()]
        out["exact"] = [str(v) for v in exact]
        if dtype != "BOOL":
            got = f32_from_bits(out["f32_bits"])
            want = np.array([int_to_f32_rne(v) for v in exact], dtype=np.float32)
            assert got.view(np.uint32).tolist() == want.view(np.uint32).tolist(), dtype
    return out


def describe(rel):
    blob = open(os.path.join(HERE, rel), "rb").read()
    n = struct.unpack_from("<Q", blob)[0]
    pairs = json.loads(blob[8:8 + n].decode("utf-8"), object_pairs_hook=lambda p: p)
    names = [k for k, _ in pairs]
    assert len(names) == len(set(names))
    data = blob[8 + n:]
    metadata, entries = None, []
    for pos, (name, info) in enumerate(pairs):
        info = dict(info)
        if name == "__metadata__":
            metadata = info
            continue
        entries.append((info["data_offsets"][0], info["data_offsets"][1], pos, name, info))
    entries.sort()
    ref = {name: t for name, t in deserialize(blob)}  # the package's reader
    assert set(ref) == {e[3] for e in entries}, rel
    tensors = []
    for b, e, _, name, info in entries:
        raw = data[b:e]
        assert ref[name]["dtype"] == info["dtype"] and list(ref[name]["shape"]) == info["shape"]
        assert bytes(ref[name]["data"]) == raw, (rel, name)
        item = {"name": name, "dtype": info["dtype"], "shape": info["shape"], "data_offsets": [b, e]}
        item.update(decode_tensor(info["dtype"], info["shape"], raw))
        tensors.append(item)
    assert entries[-1][1] == len(data)
    return {"file_sha_crc32": zlib.crc32(blob), "header_length": n,
            "metadata": metadata, "tensors": tensors}


# ---------------------------------------------------------------------------
# 3. conversion goldens
# ---------------------------------------------------------------------------

TARGETS = ["F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F8_E4M3FNUZ",
           "F8_E5M2FNUZ", "F4", "F6_E2M3", "F6_E3M2"]


def finfo(t):
    return np.finfo(t) if t is np.float16 else md.finfo(t)


def all_codes(dtype):
    t, w, _ = DTYPES[dtype]
    codes = np.arange(2 ** w, dtype=CODE_UINT[16 if w == 16 else 8])
    return codes, codes.view(t).astype(np.float32)


def encode(dtype, x):
    t, w, _ = DTYPES[dtype]
    return x.astype(t).view(CODE_UINT[16 if w == 16 else 8])


def f32bits(v):
    return int(np.array([v], dtype=np.float32).view(np.uint32)[0])


def edge_inputs():
    out = []

    def add(v):
        f = np.float32(v)
        assert math.isnan(v) or float(f) == v, v
        out.append(f32bits(f))
        out.append(f32bits(-f))
        up = np.nextafter(f, np.float32(np.inf))
        dn = np.nextafter(f, np.float32(-np.inf))
        out.extend([f32bits(up), f32bits(-up), f32bits(dn), f32bits(-dn)])

    out += [0x00000000, 0x80000000, 0x7F800000, 0xFF800000,
            0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FA00000,
            0x7FBFFFFF, 0x7FC00001, 0x7FD00000, 0x7FFFFFFF, 0xFFFFFFFF,
            0x7F7FFFFF, 0xFF7FFFFF, 0x00800000, 0x00000001, 0x007FFFFF,
            0x80000001]
    for v in [65504, 65520, 65536, 448, 464, 480, 240, 248, 256, 57344, 61440,
              65536, 6.0, 6.5, 7.0, 7.5, 7.75, 8.0, 28, 30, 32, 1.0, 1.5, 3.0,
              0.1, 1 / 3, math.pi, 1e-45, 2.0**-127, 2.0**-128, 2.0**127,
              1.5 * 2.0**127]:
        add(float(np.float32(v)))
    for dtype in TARGETS:
        t = DTYPES[dtype][0]
        fi = finfo(t)
        _, vals = all_codes(dtype)
        pos = sorted({float(v) for v in vals if np.isfinite(v) and v > 0})
        vmax = pos[-1]
        beyond = 2 * vmax if int(fi.nmant) == 0 else vmax + (vmax - pos[-2])
        ext = [0.0] + pos + [beyond]  # ext[i+1] == pos[i]
        i_norm = ext.index(float(fi.smallest_normal))
        i_one = ext.index(1.0)
        n = len(ext)
        for i in sorted({0, 1, 2, i_norm - 2, i_norm - 1, i_norm, i_one - 1,
                         i_one, i_one + 1, n - 4, n - 3, n - 2}):
            if 0 <= i < n - 1:
                lo, hi = ext[i], ext[i + 1]
                add(lo)
                add((lo + hi) / 2)
        if beyond < float(np.finfo(np.float32).max):
            add(beyond)
    seen, uniq = set(), []
    for b in out:
        if b not in seen:
            seen.add(b)
            uniq.append(b)
    return uniq


def describe_code(dtype, code):
    v = float(np.array([code], dtype=CODE_UINT[16 if DTYPES[dtype][1] == 16 else 8])
              .view(DTYPES[dtype][0]).astype(np.float32)[0])
    width = 4 if DTYPES[dtype][1] == 16 else 2
    if math.isnan(v):
        what = "NaN"
    elif math.isinf(v):
        what = "+inf" if v > 0 else "-inf"
    elif v == 0:
        what = "-0" if math.copysign(1, v) < 0 else "+0"
    else:
        what = repr(v)
    return "0x%0*X (%s)" % (width, code, what)


def observe(dtype, inputs_bits, codes, tie_cases):
    x = f32_from_bits(inputs_bits)
    fi = finfo(DTYPES[dtype][0])
    vmax = float(fi.max)

    def enc(bits):
        return describe_code(dtype, int(encode(dtype, f32_from_bits([bits]))[0]))

    obs = {
        "f32_max": enc(0x7F7FFFFF),
        "minus_f32_max": enc(0xFF7FFFFF),
        "+inf": enc(0x7F800000),
        "-inf": enc(0xFF800000),
        "+qNaN 0x7FC00000": enc(0x7FC00000),
        "-qNaN 0xFFC00000": enc(0xFFC00000),
        "NaN payload 0x7FD00000": enc(0x7FD00000),
        "sNaN 0x7F800001": enc(0x7F800001),
        "+0.0": enc(0x00000000),
        "-0.0": enc(0x80000000),
        "+1e-45": enc(0x00000001),
        "-1e-45": enc(0x80000001),
        "-1.0": enc(f32bits(-1.0)),
        "+1.5": enc(f32bits(1.5)),
        "+2^-128": enc(f32bits(2.0**-128)),
    }
    # overflow: smallest input above max that does not round back to max
    big = x[np.isfinite(x) & (x > vmax)]
    dec = encode(dtype, big).view(DTYPES[dtype][0]).astype(np.float32)
    not_max = big[dec != np.float32(vmax)]
    if not_max.size:
        obs["overflow_threshold"] = "smallest input not encoded as +max: %r -> %s" % (
            float(not_max.min()), enc(f32bits(not_max.min())))
    else:
        obs["overflow_threshold"] = "every finite input above max saturates to +max"
    to_even = sum(1 for lo_code, got in tie_cases if got == lo_code + (lo_code & 1))
    away = sum(1 for lo_code, got in tie_cases if got == lo_code + 1)
    obs["ties"] = ("%d exact midpoints between adjacent positive finite values: "
                   "%d/%d went to the even code, %d/%d to the code further from zero" % (
                       len(tie_cases), to_even, len(tie_cases), away, len(tie_cases)))
    return obs


def tie_cases_for(dtype, inputs_bits, codes_out):
    """(lower code, encoded code) for inputs that are exact midpoints."""
    codes, vals = all_codes(dtype)
    fin = [(float(v), int(c)) for c, v in zip(codes, vals) if np.isfinite(v) and v > 0]
    fin.sort()
    mids = {(a[0] + b[0]) / 2: a[1] for a, b in zip(fin, fin[1:])}
    x = f32_from_bits(inputs_bits)
    out = []
    for v, got in zip(x.tolist(), codes_out):
        if v in mids:
            out.append((mids[v], got))
    return out


def make_conversions():
    rng = np.random.default_rng(20250101)
    edges = edge_inputs()
    random_bits = rng.integers(0, 2**32, size=3000, dtype=np.uint64).astype(np.uint32).tolist()
    mags = 10.0 ** rng.uniform(-12.0, 6.0, size=2000)
    signs = np.where(rng.random(2000) < 0.5, -1.0, 1.0)
    log_bits = u32_bits((mags * signs).astype(np.float32))
    inputs = edges + random_bits + log_bits
    x = f32_from_bits(inputs)

    enc, dec, notes = {}, {}, {}
    for dtype in TARGETS:
        codes = encode(dtype, x).tolist()
        enc[dtype] = codes
        all_c, vals = all_codes(dtype)
        if DTYPES[dtype][1] == 16:
            dec[dtype] = {
                "decode_crc32": zlib.crc32(vals.astype("<f4").tobytes()),
                "decode_sample": {str(c): int(vals[c:c + 1].view(np.uint32)[0])
                                  for c in range(0, 65536, 257)},
            }
        else:
            dec[dtype] = u32_bits(vals)
        notes[dtype] = observe(dtype, inputs, codes, tie_cases_for(dtype, inputs, codes))

    notes["summary"] = summary_notes(notes)
    doc = {
        "about": ("float32 -> target encode and target -> float32 decode, computed with "
                  "numpy (F16) and ml_dtypes 0.6.0 (all other targets) via astype. Codes are "
                  "the unsigned one/two-byte codes; sub-byte codes are the low 4/6 bits."),
        "notes": notes,
        "inputs_f32_bits": inputs,
        "encode": enc,
        "decode": dec,
    }
    return doc


def summary_notes(notes):
    keys = ["f32_max", "+inf", "+qNaN 0x7FC00000", "-qNaN 0xFFC00000", "NaN payload 0x7FD00000",
            "sNaN 0x7F800001", "-0.0", "+1e-45", "-1e-45", "-1.0", "+1.5", "+2^-128", "overflow_threshold", "ties"]
    return ["%s: " % dtype + "; ".join("%s -> %s" % (k, notes[dtype][k]) if k not in (
        "overflow_threshold", "ties") else notes[dtype][k] for k in keys) for dtype in TARGETS]


# ---------------------------------------------------------------------------
# 4. malformed corpus
# ---------------------------------------------------------------------------

def raw_file(header, data=b"", n=None):
    if isinstance(header, str):
        header = header.encode("utf-8")
    return struct.pack("<Q", len(header) if n is None else n) + header + data


def make_malformed():
    os.makedirs(MALFORMED, exist_ok=True)
    for name in os.listdir(MALFORMED):
        if name.endswith(".safetensors"):
            os.remove(os.path.join(MALFORMED, name))

    META = '"__metadata__":{"format":"pt"}'

    def T(name, dtype, shape, b, e, extra=""):
        return '%s:{"dtype":"%s","shape":%s,"data_offsets":[%s,%s]%s}' % (
            name, dtype, json.dumps(shape, separators=(",", ":")), b, e, extra)

    A = T('"a"', "F32", [2], 0, 8)
    B = T('"b"', "I32", [2], 8, 16)
    DATA = le([1.0, 2.0], np.float32) + le([3, 4], np.int32)  # 16 bytes
    BASE = "{" + META + "," + A + "," + B + "}"

    def obj(*parts):
        return "{" + ",".join(parts) + "}"

    cases = []

    def case(file, expect, tensor, why, blob):
        cases.append({"file": file, "expect": expect, "tensor": tensor, "why": why})
        write(os.path.join(MALFORMED, file), blob)

    # --- size / length --------------------------------------------------
    case("bad-empty-file.safetensors", "headerTooSmall", None,
         "zero-byte file", b"")
    case("bad-seven-bytes.safetensors", "headerTooSmall", None,
         "7 bytes, shorter than the 8-byte length prefix", struct.pack("<Q", 2)[:7])
    case("bad-header-too-large.safetensors", "headerTooLarge", None,
         "N = 100,000,001, one above the 100,000,000 limit", raw_file("{}", n=100_000_001))
    case("huge-header-claim.safetensors", "headerTooLarge", None,
         "N = 100,000,000,000 (100 GB) followed by {}", raw_file("{}", n=100_000_000_000))
    case("bad-header-length-at-limit.safetensors", "invalidHeaderLength", None,
         "N = 100,000,000 exactly (allowed size) but the file ends long before",
         raw_file("{}", n=100_000_000))
    case("bad-header-length-past-eof.safetensors", "invalidHeaderLength", None,
         "8 + N is one byte past the end of the file",
         raw_file(BASE, DATA, n=len(BASE) + len(DATA) + 1))
    # --- encoding / syntax ----------------------------------------------
    for fname, junk, why in [
        ("bad-utf8-invalid-byte", b"a\xff", "tensor name contains byte 0xFF"),
        ("bad-utf8-truncated", b"a\xe6\x97", "tensor name ends inside a 3-byte UTF-8 sequence"),
        ("bad-utf8-surrogate", b"a\xed\xa0\x80", "tensor name contains an encoded UTF-16 surrogate"),
        ("bad-utf8-overlong", b"a\xc0\xaf", "tensor name contains an overlong encoding of '/'"),
    ]:
        hdr = (("{" + META + "," + A + ',"').encode("utf-8") + junk
               + '":{"dtype":"I32","shape":[2],"data_offsets":[8,16]}}'.encode("utf-8"))
        case(fname + ".safetensors", "invalidUTF8", None, why, raw_file(hdr, DATA))
    case("bad-json-truncated.safetensors", "invalidJSON", None,
         "header lacks its closing brace", raw_file(BASE[:-1], DATA))
    case("bad-json-trailing-garbage.safetensors", "invalidJSON", None,
         "non-whitespace byte after the top-level object", raw_file(BASE + "x", DATA))
    case("bad-json-two-objects.safetensors", "invalidJSON", None,
         "a second JSON object after the first", raw_file(BASE + "{}", DATA))
    case("bad-json-trailing-comma.safetensors", "invalidJSON", None,
         "trailing comma before the closing brace", raw_file(BASE[:-1] + ",}", DATA))
    # --- header shape ---------------------------------------------------
    case("bad-header-array.safetensors", "invalidHeader", None,
         "top level is an array, not an object", raw_file("[]"))
    case("bad-tensor-not-object.safetensors", "invalidHeader", "b",
         "tensor entry is an array", raw_file(obj(META, A, '"b":[8,16]'), DATA[:8]))
    for field, fname in [("dtype", "missing-dtype"), ("shape", "missing-shape"),
                         ("data_offsets", "missing-offsets")]:
        entry = {"dtype": "I32", "shape": [2], "data_offsets": [8, 16]}
        del entry[field]
        case("bad-%s.safetensors" % fname, "invalidHeader", "b",
             "tensor entry has no %s" % field,
             raw_file(obj(META, A, '"b":' + json.dumps(entry, separators=(",", ":"))), DATA))
    case("bad-offsets-one-int.safetensors", "invalidHeader", "b",
         "data_offsets has 1 element", raw_file(obj(META, A, T('"b"', "I32", [2], 8, 16).replace("[8,16]", "[8]")), DATA))
    case("bad-offsets-three-ints.safetensors", "invalidHeader", "b",
         "data_offsets has 3 elements", raw_file(obj(META, A, T('"b"', "I32", [2], 8, "16,16")), DATA))
    case("bad-shape-negative.safetensors", "invalidHeader", "b",
         "negative dimension in shape", raw_file(obj(META, A, T('"b"', "I32", [-2], 8, 16)), DATA))
    case("bad-shape-fractional.safetensors", "invalidHeader", "b",
         "fractional dimension 2.5 in shape", raw_file(obj(META, A, T('"b"', "I32", [2.5], 8, 16)), DATA))
    case("bad-offset-negative.safetensors", "invalidHeader", "b",
         "negative number in data_offsets", raw_file(obj(META, A, T('"b"', "I32", [2], 8, -16)), DATA))
    case("bad-offset-fractional.safetensors", "invalidHeader", "b",
         "fractional number 16.5 in data_offsets", raw_file(obj(META, A, T('"b"', "I32", [2], 8, 16.5)), DATA))
    case("bad-unknown-field.safetensors", "invalidHeader", "b",
         "tensor entry has an extra field \"extra\"",
         raw_file(obj(META, A, T('"b"', "I32", [2], 8, 16, ',"extra":1')), DATA))
    case("bad-metadata-not-object.safetensors", "invalidHeader", None,
         "__metadata__ is a string", raw_file(obj('"__metadata__":"pt"', A, B), DATA))
    # --- metadata values ------------------------------------------------
    case("bad-metadata-number.safetensors", "invalidMetadata", None,
         "__metadata__ value is a number",
         raw_file(obj('"__metadata__":{"format":"pt","step":1}', A, B), DATA))
    case("bad-metadata-null.safetensors", "invalidMetadata", None,
         "__metadata__ value is null",
         raw_file(obj('"__metadata__":{"format":null}', A, B), DATA))
    case("bad-metadata-nested.safetensors", "invalidMetadata", None,
         "__metadata__ value is an object",
         raw_file(obj('"__metadata__":{"format":{"x":"pt"}}', A, B), DATA))
    # --- duplicates -----------------------------------------------------
    case("bad-duplicate-tensor.safetensors", "duplicateKey", "a",
         "tensor name \"a\" appears twice",
         raw_file(obj(META, A, T('"a"', "I32", [2], 8, 16)), DATA))
    case("bad-duplicate-metadata-key.safetensors", "duplicateKey", None,
         "key \"format\" appears twice inside __metadata__",
         raw_file(obj('"__metadata__":{"format":"pt","format":"np"}', A, B), DATA))
    case("bad-duplicate-metadata-section.safetensors", "duplicateKey", None,
         "__metadata__ appears twice", raw_file(obj(META, A, B, META), DATA))
    # --- names ----------------------------------------------------------
    for fname, jname, name, why in [
        ("bad-name-nul", '"b\\u0000c"', "b\u0000c", "tensor name contains NUL (\\u0000 escape)"),
        ("bad-name-bell", '"b\\u0007"', "b\u0007", "tensor name contains control char \\u0007"),
        ("bad-name-empty", '""', "", "tensor name is the empty string"),
    ]:
        case(fname + ".safetensors", "invalidName", name, why,
             raw_file(obj(META, A, T(jname, "I32", [2], 8, 16)), DATA))
    # --- dtypes ---------------------------------------------------------
    case("bad-dtype-f128.safetensors", "unknownDType", "b", "dtype \"F128\" does not exist",
         raw_file(obj(META, A, T('"b"', "F128", [2], 8, 16)), DATA))
    case("bad-dtype-lowercase.safetensors", "unknownDType", "b", "dtype names are case-sensitive: \"f32\"",
         raw_file(obj(META, A, T('"b"', "f32", [2], 8, 16)), DATA))
    # --- offsets --------------------------------------------------------
    case("bad-offsets-overlap.safetensors", "invalidOffset", "b",
         "b [4,12] overlaps a [0,8]",
         raw_file(obj(META, A, T('"b"', "I32", [2], 4, 12)), DATA[:12]))
    case("bad-offsets-gap.safetensors", "invalidOffset", "b",
         "4-byte gap between a [0,8] and b [12,20]",
         raw_file(obj(META, A, T('"b"', "I32", [2], 12, 20)), DATA + b"\0" * 4))
    case("bad-offsets-not-from-zero.safetensors", "invalidOffset", "a",
         "first tensor starts at 4, not 0",
         raw_file(obj(META, T('"a"', "F32", [2], 4, 12), T('"b"', "I32", [2], 12, 20)), b"\0" * 4 + DATA))
    case("bad-offsets-end-before-begin.safetensors", "invalidOffset", "b",
         "b has data_offsets [8,0]",
         raw_file(obj(META, A, T('"b"', "I32", [2], 8, 0)), DATA[:8]))
    # --- shapes / sizes -------------------------------------------------
    case("bad-shape-overflow.safetensors", "shapeOverflow", "big",
         "4294967296*4294967296*16 elements overflows u64",
         raw_file(obj(META, A, T('"big"', "F32", [4294967296, 4294967296, 16], 8, 16)), DATA))
    case("bad-shape-overflow-5d.safetensors", "shapeOverflow", "big",
         "65536^5 = 2^80 elements overflows u64",
         raw_file(obj(META, A, T('"big"', "U8", [65536] * 5, 8, 16)), DATA))
    case("bad-f4-odd-count.safetensors", "misalignedSlice", "q",
         "F4 [3] is 12 bits, not a whole number of bytes",
         raw_file(obj(META, A, B, T('"q"', "F4", [3], 16, 18)), DATA + b"\x21\x03"))
    case("bad-f6-e2m3-count.safetensors", "misalignedSlice", "q",
         "F6_E2M3 [3] is 18 bits, not a whole number of bytes",
         raw_file(obj(META, A, B, T('"q"', "F6_E2M3", [3], 16, 19)), DATA + b"\0\0\0"))
    case("bad-f6-e3m2-count.safetensors", "misalignedSlice", "q",
         "F6_E3M2 [5] is 30 bits, not a whole number of bytes",
         raw_file(obj(META, A, B, T('"q"', "F6_E3M2", [5], 16, 20)), DATA + b"\0" * 4))
    case("bad-size-larger.safetensors", "tensorInvalidInfo", "b",
         "I32 [2] needs 8 bytes but data_offsets span 12",
         raw_file(obj(META, A, T('"b"', "I32", [2], 8, 20)), DATA + b"\0" * 4))
    case("bad-size-smaller.safetensors", "tensorInvalidInfo", "b",
         "I32 [3] needs 12 bytes but data_offsets span 8",
         raw_file(obj(META, A, T('"b"', "I32", [3], 8, 16)), DATA))
    case("bad-f4-size.safetensors", "tensorInvalidInfo", "q",
         "F4 [4] needs 2 bytes but data_offsets span 4",
         raw_file(obj(META, A, B, T('"q"', "F4", [4], 16, 20)), DATA + b"\0" * 4))
    case("bad-f6-size.safetensors", "tensorInvalidInfo", "q",
         "F6_E2M3 [4] needs 3 bytes but data_offsets span 4",
         raw_file(obj(META, A, B, T('"q"', "F6_E2M3", [4], 16, 20)), DATA + b"\0" * 4))
    case("bad-trailing-bytes.safetensors", "incompleteBuffer", None,
         "data section is 4 bytes longer than the last tensor end",
         raw_file(BASE, DATA + b"\0" * 4))
    case("bad-short-buffer.safetensors", "incompleteBuffer", None,
         "data section is 4 bytes shorter than the last tensor end",
         raw_file(BASE, DATA[:12]))
    case("bad-no-tensors-trailing-bytes.safetensors", "incompleteBuffer", None,
         "header {} but 4 data bytes follow", raw_file("{}", b"\0" * 4))
    # --- accepted -------------------------------------------------------
    case("ok-base.safetensors", "ok", None,
         "the valid header every bad case is derived from", raw_file(BASE, DATA))
    case("ok-leading-spaces.safetensors", "ok", None,
         "three spaces before {", raw_file("   " + BASE, DATA))
    case("ok-leading-whitespace-mix.safetensors", "ok", None,
         "\\n\\t\\r and a space before {", raw_file("\n\t\r " + BASE, DATA))
    case("ok-trailing-spaces.safetensors", "ok", None,
         "spaces after } (the package's padding style)", raw_file(BASE + "     ", DATA))
    case("ok-trailing-newline.safetensors", "ok", None,
         "newline after }", raw_file(BASE + "\n", DATA))
    case("ok-scalar.safetensors", "ok", None,
         "rank-0 F32 tensor, shape []",
         raw_file(obj(META, T('"s"', "F32", [], 0, 4)), le([1.5], np.float32)))
    case("ok-empty-tensor.safetensors", "ok", None,
         "F32 [0] at [0,0] next to a normal tensor",
         raw_file(obj(META, T('"e"', "F32", [0], 0, 0), A), DATA[:8]))
    case("ok-metadata-last.safetensors", "ok", None,
         "__metadata__ after the tensors", raw_file(obj(A, B, META), DATA))
    case("ok-unicode-name.safetensors", "ok", None,
         "raw UTF-8 non-ASCII tensor name",
         raw_file(obj(META, A, T('"b.wéight.日本語.🙂"', "I32", [2], 8, 16)), DATA))
    case("ok-unicode-escaped-name.safetensors", "ok", None,
         "tensor name written with \\u escapes (caf\\u00e9 = café, surrogate pair = 🙂)",
         raw_file(obj(META, A, T('"caf\\u00e9\\ud83d\\ude42"', "I32", [2], 8, 16)), DATA))
    case("ok-no-tensors.safetensors", "ok", None,
         "header {} and no data", raw_file("{}"))
    case("ok-empty-metadata.safetensors", "ok", None,
         "only an empty __metadata__ object", raw_file('{"__metadata__":{}}'))

    with open(os.path.join(MALFORMED, "manifest.json"), "w") as f:
        f.write(json.dumps(cases, indent=2, ensure_ascii=False) + "\n")
    return cases


def package_verdicts(cases):
    """Print where the package's own reader disagrees with Flare's rules."""
    diffs = []
    for c in cases:
        blob = open(os.path.join(MALFORMED, c["file"]), "rb").read()
        try:
            deserialize(blob)
            verdict = "ok"
        except Exception as exc:  # noqa: BLE001
            verdict = "error: " + str(exc).splitlines()[0][:90]
        if (verdict == "ok") != (c["expect"] == "ok"):
            diffs.append("  %-45s expect %-18s package %s" % (c["file"], c["expect"], verdict))
    print("malformed cases where the safetensors %s reader differs: %d" % (
        safetensors.__version__, len(diffs)))
    for d in diffs:
        print(d)


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
            return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
        return "[\n" + ",\n".join(inner + dump_json(v, indent + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False)


def main():
    assert safetensors.__version__ == "0.8.0", safetensors.__version__
    assert md.__version__ == "0.6.0", md.__version__
    make_dtypes()
    make_scalars()
    make_empty()
    make_small()
    make_unaligned()
    make_sharded()
    make_peft()

    os.makedirs(GOLDEN, exist_ok=True)
    values = {rel: describe(rel) for rel in VALID_FILES}
    with open(os.path.join(GOLDEN, "safetensors-values.json"), "w") as f:
        f.write(dump_json(values) + "\n")
    with open(os.path.join(GOLDEN, "dtype-conversions.json"), "w") as f:
        f.write(dump_json(make_conversions()) + "\n")

    cases = make_malformed()
    package_verdicts(cases)
    print("wrote %d valid files, %d malformed cases" % (len(VALID_FILES), len(cases)))


if __name__ == "__main__":
    main()

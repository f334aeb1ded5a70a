#!/usr/bin/env python3
"""Regenerate Fixtures/golden/safetensors-stats.json.

This file is the oracle for `flare-inspect --stats` and for the tensor
listing tests. It covers:

  * every valid fixture: each .safetensors file under Fixtures/safetensors/
    except malformed/, keyed by its path relative to that folder
    ("dtypes.safetensors", "sharded/model-00001-of-00002.safetensors", ...);
  * the real all-MiniLM-L6-v2 model, keyed "minilm", read from
    ${FLARE_CACHE:-~/.cache/flare}/models/all-MiniLM-L6-v2/model.safetensors.
    Run scripts/fetch-models.sh first to put it there.

For each file, "tensors" lists every tensor in file order: sorted by
data_offsets begin, then end, then position in the header. The header is read
directly from the file (the u64 length N, then N bytes of JSON), not through
the safetensors package, so that order is exact.

Each tensor has name, dtype, shape, data_offsets and stats. The stats are
computed from the tensor's values converted to float32:

  * numpy dtypes (F64, F32, F16, integers, BOOL): numpy `.astype(np.float32)`
    of the raw little-endian data;
  * C64: the interleaved real/imaginary float32 values (2 floats per element);
  * BF16, F8_*, F6_*, F4 in the fixtures: the float32 bit patterns stored in
    safetensors-values.json (made with ml_dtypes by make_fixtures.py);
  * the real model: `safetensors.numpy.load_file`, then `.astype(np.float32)`.

The numpy-decoded fixture values are cross-checked against the bit patterns
in safetensors-values.json (NaN payloads aside), as are the fixture headers.

stats = {count, finite, nan, inf, min, max, mean, std}: count is the number of
float values (2 per C64 element); min and max are the float32 extremes of the
finite values, written as Python floats; mean and std (population, ddof=0) are
computed in float64 over the finite values. min/max/mean/std are null when no
value is finite.

For "minilm" the file also records file_size, header_length, metadata and
totals: tensors, parameters (sum of element counts) and bytes (sum of tensor
data sizes).

Needs numpy and safetensors only. The output is deterministic. Run from
anywhere:

    scripts/fetch-models.sh
    python3 Fixtures/golden/make_stats_golden.py
"""

import json
import math
import os
import struct
import sys

import numpy as np
import safetensors.numpy

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(os.path.dirname(HERE), "safetensors")
VALUES_JSON = os.path.join(HERE, "safetensors-values.json")
OUT_JSON = os.path.join(HERE, "safetensors-stats.json")

CACHE = os.environ.get("FLARE_CACHE") or os.path.join(
    os.path.expanduser("~"), ".cache", "flare")
MINILM = os.path.join(CACHE, "models", "all-MiniLM-L6-v2", "model.safetensors")
MINILM_SIZE = 90_868_376

# Dtypes numpy reads natively, as little-endian numpy type strings.
NUMPY_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2",
    "C64": "<f4",  # interleaved real/imag float32 pairs
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1",
    "BOOL": "?",
}
# Dtypes whose float32 values come from safetensors-values.json.
TABLE_DTYPES = {
    "BF16", "F8_E5M2", "F8_E4M3", "F8_E5M2FNUZ", "F8_E4M3FNUZ", "F8_E8M0",
    "F6_E2M3", "F6_E3M2", "F4",
}


def fail(message):
    sys.exit(f"make_stats_golden.py: {message}")


def read_header(path):
    """Return (file_size, N, metadata or None, tensors in file order)."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            fail(f"{path}: shorter than 8 bytes")
        (n,) = struct.unpack("<Q", prefix)
        raw = f.read(n)
    if len(raw) != n:
        fail(f"{path}: header claims {n} bytes, file is shorter")
    header = json.loads(raw.decode("utf-8"))
    metadata = header.pop("__metadata__", None)
    entries = []
    for position, (name, info) in enumerate(header.items()):
        begin, end = info["data_offsets"]
        entries.append(((begin, end, position), {
            "name": name,
            "dtype": info["dtype"],
            "shape": list(info["shape"]),
            "data_offsets": [begin, end],
        }))
    entries.sort(key=lambda e: e[0])
    return os.path.getsize(path), n, metadata, [e[1] for e in entries]


def stats(values):
    """Statistics of a 1-D float32 array, as a JSON-ready dict."""
    values = np.asarray(values, dtype=np.float32).ravel()
    nan = int(np.count_nonzero(np.isnan(values)))
    inf = int(np.count_nonzero(np.isinf(values)))
    finite_values = values[np.isfinite(values)]
    result = {
        "count": int(values.size),
        "finite": int(finite_values.size),
        "nan": nan,
        "inf": inf,
        "min": None, "max": None, "mean": None, "std": None,
    }
    if finite_values.size:
        wide = finite_values.astype(np.float64)
        result["min"] = float(finite_values.min())
        result["max"] = float(finite_values.max())
        result["mean"] = float(np.mean(wide))
        result["std"] = float(np.std(wide))
    return result


def same_f32(a, b):
    """Bitwise equal float32 arrays, with any NaN matching any NaN."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if a.shape != b.shape:
        return False
    both_nan = np.isnan(a) & np.isnan(b)
    return bool(np.all(both_nan | (a.view(np.uint32) == b.view(np.uint32))))


def fixture_entry(rel, values_golden):
    path = os.path.join(FIXTURES, rel)
    _, n, _, tensors = read_header(path)
    golden = values_golden.get(rel)
    if golden is None:
        fail(f"{rel} is not in {VALUES_JSON}; rerun make_fixtures.py")
    golden_tensors = golden["tensors"]
    listed = [(t["name"], t["dtype"], t["shape"], t["data_offsets"])
              for t in tensors]
    expected = [(t["name"], t["dtype"], t["shape"], t["data_offsets"])
                for t in golden_tensors]
    if listed != expected or n != golden["header_length"]:
        fail(f"{rel}: header disagrees with safetensors-values.json")
    with open(path, "rb") as f:
        data = f.read()[8 + n:]
    for tensor, gold in zip(tensors, golden_tensors):
        dtype = tensor["dtype"]
        table = np.array(gold["f32_bits"], dtype=np.uint32).view(np.float32)
        if dtype in TABLE_DTYPES:
            values = table
        elif dtype in NUMPY_DTYPES:
            begin, end = tensor["data_offsets"]
            raw = np.frombuffer(data[begin:end], dtype=NUMPY_DTYPES[dtype])
            with np.errstate(over="ignore", invalid="ignore"):
                values = raw.astype(np.float32)
            if not same_f32(values, table):
                fail(f"{rel}:{tensor['name']}: numpy values disagree with "
                     "safetensors-values.json")
        else:
            fail(f"{rel}:{tensor['name']}: unknown dtype {dtype}")
        expected_count = math.prod(tensor["shape"]) * (2 if dtype == "C64" else 1)
        if values.size != expected_count:
            fail(f"{rel}:{tensor['name']}: {values.size} values, "
                 f"expected {expected_count}")
        tensor["stats"] = stats(values)
    return {"tensors": tensors}


def minilm_entry():
    if not os.path.isfile(MINILM):
        fail(f"the real model is missing: {MINILM}\n"
             "Run scripts/fetch-models.sh first (it honours $FLARE_CACHE).")
    size, n, metadata, tensors = read_header(MINILM)
    if size != MINILM_SIZE:
        fail(f"{MINILM} is {size} bytes, expected {MINILM_SIZE}; "
             "delete it and rerun scripts/fetch-models.sh")
    arrays = safetensors.numpy.load_file(MINILM)
    if sorted(arrays) != sorted(t["name"] for t in tensors):
        fail(f"{MINILM}: safetensors and the raw header list different tensors")
    parameters = 0
    total_bytes = 0
    for tensor in tensors:
        array = arrays[tensor["name"]]
        if list(array.shape) != tensor["shape"]:
            fail(f"{MINILM}:{tensor['name']}: shape mismatch")
        with np.errstate(over="ignore", invalid="ignore"):
            values = array.astype(np.float32)
        tensor["stats"] = stats(values)
        parameters += math.prod(tensor["shape"])
        begin, end = tensor["data_offsets"]
        total_bytes += end - begin
    return {
        "file_size": size,
        "header_length": n,
        "metadata": metadata,
        "totals": {
            "tensors": len(tensors),
            "parameters": parameters,
            "bytes": total_bytes,
        },
        "tensors": tensors,
    }


def fixture_paths():
    found = []
    for root, dirs, files in os.walk(FIXTURES):
        rel_root = os.path.relpath(root, FIXTURES)
        if rel_root == ".":
            dirs[:] = [d for d in dirs if d != "malformed"]
            rel_root = ""
        for name in files:
            if name.endswith(".safetensors"):
                rel = os.path.join(rel_root, name) if rel_root else name
                found.append(rel.replace(os.sep, "/"))
    return sorted(found)


def main():
    with open(VALUES_JSON) as f:
        values_golden = json.load(f)
    out = {}
    for rel in fixture_paths():
        out[rel] = fixture_entry(rel, values_golden)
    out["minilm"] = minilm_entry()
    tmp = OUT_JSON + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=1, sort_keys=False, allow_nan=False)
        f.write("\n")
    os.replace(tmp, OUT_JSON)


if __name__ == "__main__":
    main()

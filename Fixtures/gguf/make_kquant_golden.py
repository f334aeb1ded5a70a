#!/usr/bin/env python3
"""Regenerate Fixtures/golden/gguf-kquant.json from ggml's own C quantizers.

This script is the oracle for Flare's Q4_K, Q5_K and Q6_K quantizers. It:

  1. gets ggml's C sources from the PyPI source distribution of
     llama-cpp-python (pinned below; it vendors llama.cpp/ggml), downloaded
     with pip into ${FLARE_CACHE:-~/.cache/flare}/oracle/ and kept there
     (never committed);
  2. writes a small C driver of its own into that folder and compiles it with
     ggml-quants.c, as C11 with `-O2 -ffp-contract=off` (no fused multiply-add,
     no fast math), so the float arithmetic is the plain IEEE single precision
     that Swift's code also does; the driver reads float32 rows on stdin and
     writes, per row, the bytes of quantize_row_q4_K_ref, quantize_row_q5_K_ref
     and quantize_row_q6_K_ref and the floats of dequantize_row_q4_K / _q5_K /
     _q6_K of those bytes;
  3. feeds it the 8 rows x 512 floats of gguf-quantize.json plus 8 seeded rows
     of 256*k floats of its own (normal, uniform, heavy-tailed, ...);
  4. checks that gguf-py's gguf.quants.dequantize of every row's bytes equals
     the C dequantization bit for bit, and writes gguf-kquant.json: the inputs
     as float32 bit patterns and, per type, each row's bytes as hex plus the
     CRC-32 of the C dequantization's little-endian float32 bytes.

Needs a C compiler (cc), pip, numpy and gguf (gguf-py). The output is
deterministic. Run from anywhere:

    python3 Fixtures/gguf/make_kquant_golden.py
"""

import glob
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(os.path.dirname(HERE), "golden")
QUANTIZE_JSON = os.path.join(GOLDEN, "gguf-quantize.json")
OUT_JSON = os.path.join(GOLDEN, "gguf-kquant.json")

CACHE = os.path.join(
    os.environ.get("FLARE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "flare"),
    "oracle")
PACKAGE = "llama-cpp-python"
VERSION = "0.3.36"
CFLAGS = ["-std=gnu11", "-O2", "-ffp-contract=off", "-fno-fast-math"]

# (name, block bytes) in the order the driver writes them; 256 values a block.
TYPES = [("Q4_K", 144), ("Q5_K", 176), ("Q6_K", 210)]

DRIVER = r"""
/* Flare's K-quant oracle driver (written by Fixtures/gguf/make_kquant_golden.py).
   stdin: rows, each a little-endian u32 count n (a multiple of 256) then n float32.
   stdout: per row, for Q4_K, Q5_K, Q6_K in turn: the bytes of the reference
   quantizer, then the n float32 of the matching dequantizer on those bytes. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "ggml-quants.h"

/* ggml-quants.c refers to these ggml.c functions from code paths this driver
   never takes; they are defined here so that ggml.c need not be built. */
void ggml_abort(const char * file, int line, const char * fmt, ...) {
    va_list args;
    fprintf(stderr, "ggml_abort at %s:%d: ", file, line);
    va_start(args, fmt);
    vfprintf(stderr, fmt, args);
    va_end(args);
    fputc('\n', stderr);
    abort();
}
const char * ggml_type_name(enum ggml_type type) { (void) type; abort(); }
size_t ggml_type_size(enum ggml_type type) { (void) type; abort(); }
size_t ggml_row_size(enum ggml_type type, int64_t ne) { (void) type; (void) ne; abort(); }

_Static_assert(sizeof(block_q4_K) == 144, "Q4_K block size");
_Static_assert(sizeof(block_q5_K) == 176, "Q5_K block size");
_Static_assert(sizeof(block_q6_K) == 210, "Q6_K block size");

static void put(const void * data, size_t size) {
    if (fwrite(data, 1, size, stdout) != size) { perror("write"); exit(1); }
}

int main(void) {
    uint32_t n;
    while (fread(&n, sizeof n, 1, stdin) == 1) {
        if (n == 0 || n % 256 != 0) { fprintf(stderr, "bad row length %u\n", n); return 1; }
        size_t blocks = n / 256;
        float * x = malloc(n * sizeof(float));
        float * back = malloc(n * sizeof(float));
        block_q4_K * q4 = calloc(blocks, sizeof(block_q4_K));
        block_q5_K * q5 = calloc(blocks, sizeof(block_q5_K));
        block_q6_K * q6 = calloc(blocks, sizeof(block_q6_K));
        if (!x || !back || !q4 || !q5 || !q6) { fprintf(stderr, "out of memory\n"); return 1; }
        if (fread(x, sizeof(float), n, stdin) != n) { fprintf(stderr, "short row\n"); return 1; }

        quantize_row_q4_K_ref(x, q4, n);
        dequantize_row_q4_K(q4, back, n);
        put(q4, blocks * sizeof(block_q4_K));
        put(back, n * sizeof(float));

        quantize_row_q5_K_ref(x, q5, n);
        dequantize_row_q5_K(q5, back, n);
        put(q5, blocks * sizeof(block_q5_K));
        put(back, n * sizeof(float));

        quantize_row_q6_K_ref(x, q6, n);
        dequantize_row_q6_K(q6, back, n);
        put(q6, blocks * sizeof(block_q6_K));
        put(back, n * sizeof(float));

        free(x); free(back); free(q4); free(q5); free(q6);
    }
    return fflush(stdout) == 0 ? 0 : 1;
}
"""


def log(message):
    print(message, file=sys.stderr, flush=True)


def fetch_sources():
    """The vendored ggml folder from the pinned sdist, downloaded and unpacked once."""
    source_root = os.path.join(CACHE, "%s-%s" % (PACKAGE, VERSION))
    ggml = os.path.join(source_root, "ggml")
    if os.path.exists(os.path.join(ggml, "src", "ggml-quants.c")):
        return ggml
    sdist_dir = os.path.join(CACHE, "sdist")
    pattern = os.path.join(sdist_dir, "llama_cpp_python-%s.tar.gz" % VERSION)
    if not glob.glob(pattern):
        os.makedirs(sdist_dir, exist_ok=True)
        # Only llama-cpp-python itself must be a source distribution; its build
        # requirements (needed by pip to read the sdist's metadata) may be wheels,
        # which takes seconds where building CMake from source takes many minutes.
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps",
             "--no-binary", PACKAGE, "%s==%s" % (PACKAGE, VERSION), "-d", sdist_dir],
            check=True, stdout=sys.stderr)
    archive = glob.glob(pattern)[0]
    prefix = "llama_cpp_python-%s/vendor/llama.cpp/ggml/" % VERSION
    staging = source_root + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile() or not member.name.startswith(prefix):
                continue
            rest = member.name[len(prefix):]
            wanted = (rest.startswith("include/") or rest == "src/ggml-quants.c"
                      or (rest.startswith("src/") and rest.endswith(".h")))
            if not wanted:
                continue
            target = os.path.join(staging, "ggml", rest)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    shutil.rmtree(source_root, ignore_errors=True)
    os.rename(staging, source_root)
    return ggml


def build_driver(ggml):
    """Compiles the driver with ggml-quants.c; returns the executable's path."""
    driver_c = os.path.join(CACHE, "kquant_driver.c")
    with open(driver_c, "w", encoding="utf-8") as f:
        f.write(DRIVER.lstrip())
    exe = os.path.join(CACHE, "kquant-oracle-%s" % VERSION)
    cc = os.environ.get("CC", "cc")
    command = [cc, *CFLAGS, "-I", os.path.join(ggml, "include"), "-I", os.path.join(ggml, "src"),
               driver_c, os.path.join(ggml, "src", "ggml-quants.c"), "-o", exe, "-lm"]
    subprocess.run(command, check=True)
    version = subprocess.run([cc, "--version"], check=True, capture_output=True, text=True)
    return exe, version.stdout.splitlines()[0]


def make_rows():
    """The 8 rows of gguf-quantize.json, then 8 seeded rows of 256*k floats."""
    with open(QUANTIZE_JSON, encoding="utf-8") as f:
        base = json.load(f)
    rows = [np.array(bits, dtype="<u4").view("<f4") for bits in base["input_f32_bits"]]
    notes = ["from gguf-quantize.json: " + note for note in base["row_notes"]]

    rng = np.random.default_rng(7007)
    extra = [
        ("seeded normal, sigma 0.02 (typical weights), 1 block",
         rng.normal(0, 0.02, 256)),
        ("seeded uniform in [-1, 1), 2 blocks",
         rng.uniform(-1, 1, 512)),
        ("heavy-tailed: Student t with 2 degrees of freedom, 3 blocks",
         rng.standard_t(2, 768)),
        ("heavy-tailed: Cauchy times 0.1, clipped to +-1e3, 4 blocks",
         np.clip(rng.standard_cauchy(1024) * 0.1, -1e3, 1e3)),
        ("positive only: uniform in [0.5, 2), 4 blocks",
         rng.uniform(0.5, 2, 1024)),
        ("sparse: 90% zeros, the rest normal, 4 blocks",
         np.where(rng.uniform(0, 1, 1024) < 0.9, 0.0, rng.normal(0, 1, 1024))),
        ("per-16 scales: normal times 2^(u) with u uniform in [-8, 8) per 16 values, 6 blocks",
         rng.normal(0, 1, 1536) * np.repeat(2.0 ** rng.uniform(-8, 8, 96), 16)),
        ("Laplace, scale 1, plus a mean of 0.3, 8 blocks",
         rng.laplace(0.3, 1, 2048)),
    ]
    for note, values in extra:
        rows.append(np.asarray(values, dtype=np.float32).astype("<f4"))
        notes.append(note)
    return rows, notes


def run_driver(exe, rows):
    """Per row, per type: (bytes, dequantized float32 array)."""
    stdin = b"".join(struct.pack("<I", len(row)) + row.astype("<f4").tobytes() for row in rows)
    out = subprocess.run([exe], input=stdin, check=True, capture_output=True).stdout
    results, at = [], 0
    for row in rows:
        n = len(row)
        per_type = {}
        for name, block_bytes in TYPES:
            size = n // 256 * block_bytes
            raw = out[at:at + size]
            at += size
            back = np.frombuffer(out[at:at + 4 * n], dtype="<f4")
            at += 4 * n
            per_type[name] = (raw, back)
        results.append(per_type)
    if at != len(out):
        raise SystemExit("driver wrote %d bytes, expected %d" % (len(out), at))
    return results


def cross_check_gguf_py(rows, results):
    """gguf-py's dequantization of the oracle's bytes must equal ggml's, bit for bit."""
    import gguf
    from gguf import quants
    for r, row in enumerate(rows):
        for name, _ in TYPES:
            raw, back = results[r][name]
            kind = getattr(gguf.GGMLQuantizationType, name)
            mine = quants.dequantize(np.frombuffer(raw, dtype=np.uint8), kind).reshape(-1)
            if mine.astype("<f4").tobytes() != back.tobytes():
                raise SystemExit("gguf-py dequantizes %s row %d differently from ggml" % (name, r))
    import importlib.metadata
    return importlib.metadata.version("gguf")


def dump_json(obj, indent=0):
    """JSON with one line per list of scalars, to keep the golden diff-friendly."""
    pad, inner = "  " * indent, "  " * (indent + 1)
    if isinstance(obj, dict):
        items = [inner + json.dumps(k) + ": " + dump_json(v, indent + 1) for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and obj and any(isinstance(v, (dict, list)) for v in obj):
        return "[\n" + ",\n".join(inner + dump_json(v, indent + 1) for v in obj) + "\n" + pad + "]"
    if isinstance(obj, list):
        return json.dumps(obj, separators=(",", ":"), allow_nan=False)
    return json.dumps(obj, allow_nan=False)


def main():
    started = time.monotonic()
    os.makedirs(CACHE, exist_ok=True)
    ggml = fetch_sources()
    with open(os.path.join(ggml, "src", "ggml-quants.c"), "rb") as f:
        quants_sha = hashlib.sha256(f.read()).hexdigest()
    exe, compiler = build_driver(ggml)
    rows, notes = make_rows()
    results = run_driver(exe, rows)
    gguf_version = cross_check_gguf_py(rows, results)

    types = {}
    for name, _ in TYPES:
        types[name] = {
            "rows_hex": [results[r][name][0].hex() for r in range(len(rows))],
            "dequant_crc32": [zlib.crc32(results[r][name][1].tobytes()) & 0xFFFFFFFF
                              for r in range(len(rows))],
        }
    golden = {
        "note": ("Bytes of ggml's quantize_row_q4_K_ref, quantize_row_q5_K_ref and "
                 "quantize_row_q6_K_ref for each row on its own (little-endian, rows_hex[i] is "
                 "row i), and the CRC-32 of the little-endian float32 bytes of ggml's "
                 "dequantize_row_* on those bytes; gguf-py's gguf.quants.dequantize gives the "
                 "same floats bit for bit."),
        "oracle": {
            "source": "ggml/src/ggml-quants.c vendored in the %s %s sdist" % (PACKAGE, VERSION),
            "ggml_quants_c_sha256": quants_sha,
            "compiler": compiler,
            "cflags": " ".join(CFLAGS),
            "gguf_py_cross_check": "gguf %s dequantize equals ggml's bit for bit" % gguf_version,
        },
        "rows": len(rows),
        "row_lengths": [len(row) for row in rows],
        "row_notes": notes,
        "input_f32_bits": [[int(v) for v in row.view("<u4")] for row in rows],
        "types": types,
    }
    text = dump_json(golden) + "\n"
    with open(OUT_JSON, "w", encoding="utf-8") as f:
        f.write(text)
    log("wrote %s (%d bytes) in %.1f s" % (OUT_JSON, len(text), time.monotonic() - started))


if __name__ == "__main__":
    main()

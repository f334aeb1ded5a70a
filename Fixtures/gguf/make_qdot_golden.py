#!/usr/bin/env python3
"""Regenerate Fixtures/golden/qdot-ggml.json from ggml's own C dot products.

This script is the oracle for Flare's quantized kernels (Sources/CFlareKernels). It:

  1. takes ggml's C sources from the pinned llama-cpp-python sdist (as
     make_kquant_golden.py does; downloaded once into ${FLARE_CACHE}/oracle);
  2. writes a C driver of its own and compiles it with ggml-quants.c and
     ggml-cpu/quants.c (-O2 -ffp-contract=off, no -mf16c, so ggml's portable
     code paths run): per case it quantizes F32 weight rows with ggml's
     reference quantizer of the type (quantize_row_<type>_ref), the activation
     rows with the quantizer ggml pairs with that type (quantize_row_q8_0_ref for
     Q4_0/Q5_0/Q8_0, quantize_row_q8_1_ref for Q4_1/Q5_1, quantize_row_q8_K_ref
     for the K-quants), and writes the bytes of both and every weight row x
     activation row dot product of ggml_vec_dot_<type>_<q8>_generic;
  3. uses as weight rows: four seeded rows per type (normal sigma 0.02, uniform,
     Student t with 2 degrees of freedom, a row with one outlier) and two real
     rows of SmolLM2-135M (blk.0.ffn_down, rows 0 and 1, their first 768 values,
     dequantized from the Q4_1 GGUF by gguf-py and re-quantized by ggml to each
     type); as activation rows: normal, normal with a few outlier features (as
     LLM residual streams have), a row with a zero block, and a row of ties
     (half-integers at scale 1) that pins the rounding rule of each quantizer.

Writes, per type, the weight rows' bytes (hex), the activation rows' ggml bytes
(hex), and the dots as float32 bit patterns. Needs cc, pip, numpy, gguf (gguf-py)
and the SmolLM2 GGUF fetched by scripts/fetch-models.sh. Deterministic. Run:

    python3 Fixtures/gguf/make_qdot_golden.py
"""

import hashlib
import importlib.util
import os
import struct
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_JSON = os.path.join(os.path.dirname(HERE), "golden", "qdot-ggml.json")

# Shared pieces (pinned sdist, cache folder, JSON layout) from the K-quant oracle script.
_spec = importlib.util.spec_from_file_location(
    "make_kquant_golden", os.path.join(HERE, "make_kquant_golden.py"))
kq = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kq)

CFLAGS = ["-std=gnu11", "-O2", "-ffp-contract=off", "-fno-fast-math"]
MODEL = os.path.join(
    os.environ.get("FLARE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "flare"),
    "models", "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf")

# (name, ggml type id, block values, block bytes, activation kind, activation block bytes)
TYPES = [
    ("Q4_0", 2, 32, 18, "q8_0", 34),
    ("Q4_1", 3, 32, 20, "q8_1", 36),
    ("Q5_0", 6, 32, 22, "q8_0", 34),
    ("Q5_1", 7, 32, 24, "q8_1", 36),
    ("Q8_0", 8, 32, 34, "q8_0", 34),
    ("Q4_K", 12, 256, 144, "q8_K", 292),
    ("Q5_K", 13, 256, 176, "q8_K", 292),
    ("Q6_K", 14, 256, 210, "q8_K", 292),
]

DRIVER = r"""
/* Flare's quantized-dot oracle driver (written by Fixtures/gguf/make_qdot_golden.py).
   stdin: cases, each: u32 type id, u32 n, u32 weight rows R, u32 activation rows T,
   then R rows and T rows of n float32. stdout, per case: the R weight rows' bytes,
   the T activation rows' bytes, then R*T float32 dots (weight row major). */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "ggml-common.h"
#include "ggml-impl.h"
#include "ggml-quants.h"
#include "ggml-cpu/quants.h"

/* ggml-cpu.c's half-to-float table (filled below) and the ggml.c functions the quantizers
   refer to on paths this driver never takes. */
float ggml_table_f32_f16[1 << 16];
@STUBS@
static void put(const void * data, size_t size) {
    if (fwrite(data, 1, size, stdout) != size) { perror("write"); exit(1); }
}
static uint32_t get_u32(void) {
    uint32_t v;
    if (fread(&v, 4, 1, stdin) != 1) exit(feof(stdin) ? 0 : 1);
    return v;
}

typedef void (*quantize_fn)(const float *, void *, int64_t);
typedef void (*dot_fn)(int, float *, size_t, const void *, size_t, const void *, size_t, int);

int main(void) {
    for (uint32_t i = 0; i < (1u << 16); i++) ggml_table_f32_f16[i] = ggml_compute_fp16_to_fp32((ggml_fp16_t) i);
    for (;;) {
        uint32_t type = get_u32(), n = get_u32(), R = get_u32(), T = get_u32();
        quantize_fn qw = NULL, qa = NULL;
        dot_fn dot = NULL;
        size_t wbytes = 0, abytes = 0;
        switch (type) {
        case 2: qw = (quantize_fn) quantize_row_q4_0_ref; qa = (quantize_fn) quantize_row_q8_0_ref; dot = ggml_vec_dot_q4_0_q8_0_generic; wbytes = sizeof(block_q4_0); abytes = sizeof(block_q8_0); break;
        case 3: qw = (quantize_fn) quantize_row_q4_1_ref; qa = (quantize_fn) quantize_row_q8_1_ref; dot = ggml_vec_dot_q4_1_q8_1_generic; wbytes = sizeof(block_q4_1); abytes = sizeof(block_q8_1); break;
        case 6: qw = (quantize_fn) quantize_row_q5_0_ref; qa = (quantize_fn) quantize_row_q8_0_ref; dot = ggml_vec_dot_q5_0_q8_0_generic; wbytes = sizeof(block_q5_0); abytes = sizeof(block_q8_0); break;
        case 7: qw = (quantize_fn) quantize_row_q5_1_ref; qa = (quantize_fn) quantize_row_q8_1_ref; dot = ggml_vec_dot_q5_1_q8_1_generic; wbytes = sizeof(block_q5_1); abytes = sizeof(block_q8_1); break;
        case 8: qw = (quantize_fn) quantize_row_q8_0_ref; qa = (quantize_fn) quantize_row_q8_0_ref; dot = ggml_vec_dot_q8_0_q8_0_generic; wbytes = sizeof(block_q8_0); abytes = sizeof(block_q8_0); break;
        case 12: qw = (quantize_fn) quantize_row_q4_K_ref; qa = (quantize_fn) quantize_row_q8_K_ref; dot = ggml_vec_dot_q4_K_q8_K_generic; wbytes = sizeof(block_q4_K); abytes = sizeof(block_q8_K); break;
        case 13: qw = (quantize_fn) quantize_row_q5_K_ref; qa = (quantize_fn) quantize_row_q8_K_ref; dot = ggml_vec_dot_q5_K_q8_K_generic; wbytes = sizeof(block_q5_K); abytes = sizeof(block_q8_K); break;
        case 14: qw = (quantize_fn) quantize_row_q6_K_ref; qa = (quantize_fn) quantize_row_q8_K_ref; dot = ggml_vec_dot_q6_K_q8_K_generic; wbytes = sizeof(block_q6_K); abytes = sizeof(block_q8_K); break;
        default: fprintf(stderr, "bad type %u\n", type); return 1;
        }
        int block = type >= 10 ? 256 : 32;
        if (n == 0 || n % block != 0) { fprintf(stderr, "bad length %u\n", n); return 1; }
        size_t wrow = n / block * wbytes, arow = n / block * abytes;
        float * x = malloc(sizeof(float) * n);
        unsigned char * w = calloc(R, wrow);
        unsigned char * a = calloc(T, arow);
        float * dots = malloc(sizeof(float) * R * T);
        if (!x || !w || !a || !dots) { fprintf(stderr, "out of memory\n"); return 1; }
        for (uint32_t r = 0; r < R; r++) {
            if (fread(x, sizeof(float), n, stdin) != n) return 1;
            qw(x, w + r * wrow, n);
        }
        for (uint32_t t = 0; t < T; t++) {
            if (fread(x, sizeof(float), n, stdin) != n) return 1;
            qa(x, a + t * arow, n);
        }
        for (uint32_t r = 0; r < R; r++)
            for (uint32_t t = 0; t < T; t++)
                dot((int) n, dots + r * T + t, 0, w + r * wrow, 0, a + t * arow, 0, 1);
        put(w, R * wrow);
        put(a, T * arow);
        put(dots, sizeof(float) * R * T);
        free(x); free(w); free(a); free(dots);
        fflush(stdout);
    }
}
"""


# The ggml.c stand-ins of the K-quant driver, shared.
DRIVER = DRIVER.replace(
    "@STUBS@", kq.DRIVER[kq.DRIVER.index("void ggml_abort"):kq.DRIVER.index("_Static_assert")])


def fetch_sources():
    """The vendored ggml folder with src/ggml-cpu/quants.c added (once, in the cache)."""
    ggml = kq.fetch_sources()
    cpu_quants = os.path.join(ggml, "src", "ggml-cpu", "quants.c")
    if not os.path.exists(cpu_quants):
        import glob
        import tarfile
        archive = glob.glob(os.path.join(kq.CACHE, "sdist", "llama_cpp_python-%s.tar.gz" % kq.VERSION))[0]
        prefix = "llama_cpp_python-%s/vendor/llama.cpp/ggml/src/ggml-cpu/" % kq.VERSION
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                name = member.name
                if member.isfile() and name.startswith(prefix) and "/" not in name[len(prefix):] \
                        and (name.endswith(".h") or name.endswith("quants.c")):
                    target = os.path.join(ggml, "src", "ggml-cpu", name[len(prefix):])
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    with tar.extractfile(member) as src, open(target, "wb") as dst:
                        dst.write(src.read())
    return ggml


def build_driver(ggml):
    driver_c = os.path.join(kq.CACHE, "qdot_driver.c")
    with open(driver_c, "w", encoding="utf-8") as f:
        f.write(DRIVER.lstrip())
    exe = os.path.join(kq.CACHE, "qdot-oracle-%s" % kq.VERSION)
    cc = os.environ.get("CC", "cc")
    includes = ["-I", os.path.join(ggml, "include"), "-I", os.path.join(ggml, "src"),
                "-I", os.path.join(ggml, "src", "ggml-cpu")]
    subprocess.run([cc, *CFLAGS, *includes, driver_c, os.path.join(ggml, "src", "ggml-quants.c"),
                    os.path.join(ggml, "src", "ggml-cpu", "quants.c"), "-o", exe, "-lm"],
                   check=True)
    version = subprocess.run([cc, "--version"], check=True, capture_output=True, text=True)
    return exe, version.stdout.splitlines()[0]


def real_rows():
    """The first 768 values of rows 0 and 1 of SmolLM2's blk.0.ffn_down, dequantized by gguf-py."""
    import gguf
    from gguf import quants
    reader = gguf.GGUFReader(MODEL)
    tensor = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
    values = quants.dequantize(tensor.data, tensor.tensor_type).reshape(-1, 1536)
    return [values[0][:768].astype("<f4"), values[1][:768].astype("<f4")]


def weight_rows(rng, n):
    rows = [rng.normal(0, 0.02, n), rng.uniform(-1, 1, n), rng.standard_t(2, n) * 0.05]
    outlier = rng.normal(0, 0.02, n)
    outlier[n // 3] = 1.5
    rows.append(outlier)
    return [np.asarray(r, dtype="<f4") for r in rows]


def activation_rows(rng, n):
    normal = rng.normal(0, 1, n)
    spiky = rng.normal(0, 0.5, n)
    spiky[rng.choice(n, 4, replace=False)] *= 60
    zero_block = rng.normal(0, 1, n)
    zero_block[:256] = 0
    # Half-integers with a block maximum of 127 (scale 1): ties for the rounding rule; the
    # largest magnitude is negative so Q8_K's scale is exactly 1 too.
    ties = (rng.integers(-120, 120, n) + 0.5)
    ties[::32] = -127
    return [np.asarray(r, dtype="<f4") for r in (normal, spiky, zero_block, ties)]


def main():
    started = time.monotonic()
    os.makedirs(kq.CACHE, exist_ok=True)
    ggml = fetch_sources()
    shas = {}
    for rel in ("src/ggml-quants.c", "src/ggml-cpu/quants.c"):
        with open(os.path.join(ggml, rel), "rb") as f:
            shas[rel] = hashlib.sha256(f.read()).hexdigest()
    exe, compiler = build_driver(ggml)
    rng = np.random.default_rng(1414)
    real = real_rows()
    n = 768
    cases = {}
    acts = activation_rows(rng, n)
    act_hex = {}
    notes = ["seeded normal sigma 0.02", "seeded uniform [-1, 1)", "Student t (2 dof) x 0.05",
             "normal sigma 0.02 with one value 1.5", "SmolLM2 blk.0.ffn_down row 0, first 768 (from Q4_1)",
             "SmolLM2 blk.0.ffn_down row 1, first 768 (from Q4_1)"]
    act_notes = ["normal sigma 1", "normal sigma 0.5 with four features x60",
                 "normal with the first 256 values zero",
                 "half-integer ties with block maximum -127 (scale 1)"]
    for name, type_id, block, wbytes, act_kind, abytes in TYPES:
        weights = weight_rows(rng, n) + real
        stdin = struct.pack("<4I", type_id, n, len(weights), len(acts))
        stdin += b"".join(r.tobytes() for r in weights) + b"".join(a.tobytes() for a in acts)
        out = subprocess.run([exe], input=stdin, check=True, capture_output=True).stdout
        wrow, arow = n // block * wbytes, n // block * abytes
        expect = len(weights) * wrow + len(acts) * arow + 4 * len(weights) * len(acts)
        if len(out) != expect:
            raise SystemExit("%s: driver wrote %d bytes, expected %d" % (name, len(out), expect))
        at = 0
        w_hex = []
        for _ in weights:
            w_hex.append(out[at:at + wrow].hex())
            at += wrow
        a_hex = []
        for _ in acts:
            a_hex.append(out[at:at + arow].hex())
            at += arow
        # The same activations quantize the same way for every type of one format.
        if act_kind in act_hex and act_hex[act_kind] != a_hex:
            raise SystemExit("%s: %s activations differ between types" % (name, act_kind))
        act_hex[act_kind] = a_hex
        dots = np.frombuffer(out[at:], dtype="<u4").reshape(len(weights), len(acts))
        cases[name] = {
            "type_id": type_id,
            "activation_format": act_kind,
            "weights_hex": w_hex,
            "dots_f32_bits": [[int(v) for v in row] for row in dots],
        }
    golden = {
        "note": ("Activation rows (little-endian float32, hex) and their ggml quantization "
                 "per format (quantize_row_q8_0_ref / q8_1_ref / q8_K_ref, ggml's block layout, "
                 "hex); per type: weight rows quantized by ggml's quantize_row_<type>_ref (hex) "
                 "and ggml_vec_dot_<type>_<q8>_generic of every weight "
                 "row with every activation row (float32 bit patterns, dots[w][a])."),
        "oracle": {
            "source": "ggml vendored in the llama-cpp-python %s sdist" % kq.VERSION,
            "sha256": shas,
            "compiler": compiler,
            "cflags": " ".join(CFLAGS),
        },
        "length": n,
        "weight_notes": notes,
        "activation_notes": act_notes,
        "activations_f32_hex": [a.tobytes().hex() for a in acts],
        "activations_quantized_hex": act_hex,
        "types": cases,
    }
    text = kq.dump_json(golden) + "\n"
    with open(OUT_JSON, "w", encoding="utf-8") as f:
        f.write(text)
    kq.log("wrote %s (%d bytes) in %.1f s" % (OUT_JSON, len(text), time.monotonic() - started))


if __name__ == "__main__":
    main()

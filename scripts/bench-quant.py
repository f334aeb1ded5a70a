#!/usr/bin/env python3
"""Benchmark Flare's quantized compute against llama.cpp on the same quantized SmolLM2 files.

Files (made once under $FLARE_CACHE/bench):

  Q4_1    the real SmolLM2-135M-Instruct Q4_1 GGUF (scripts/fetch-models.sh), as shipped
  Q8_0    llama.cpp's own quantizer (llama_model_quantize, ftype MOSTLY_Q8_0) on the F32 GGUF
          that flare-convert makes from the Q4_1 file
  Q4_K_M  the same with ftype MOSTLY_Q4_K_M (SmolLM2's 576-wide rows are not whole 256-value
          blocks, so llama.cpp falls back to Q5_0/Q5_1/Q8_0 for them and uses Q4_K/Q6_K where
          rows are 1536 wide)

Workloads (each side is its own fresh process, both with --threads threads):

  prefill  one forward pass over --prompt-tokens fixed token ids (default 128)
  decode   --gen-tokens greedy tokens (default 64), one at a time with the KV cache

Sides: `flare-eval bench --compute quantized` (and `--compute f32` for the memory and speed of
dequantizing at load), llama-cpp-python (`Llama(n_threads=T, n_batch=N)`, `eval(prompt)`, then
`eval([token])` per step). Each side runs --repeat times after one untimed warm-up and reports
its best times; peak RSS is the process's ru_maxrss (wait4). The RSS target of issue 14 is file
size + KV cache + 64 MiB, the KV cache being 2 x layers x context x KV width x 4 bytes for Flare
(F32) at the benchmark's context.

Usage: python3 scripts/bench-quant.py [--threads 2] [--prompt-tokens 128] [--gen-tokens 64]
                                      [--repeat 3] [--types Q4_1,Q8_0,Q4_K_M] [--json OUT]
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchlib import LLAMA_CPP, die, executable, flare_bench, machine_info  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("FLARE_CACHE") or Path.home() / ".cache" / "flare")
RELEASE = REPO_ROOT / ".build" / "release"
GGUF_Q4 = CACHE / "models" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
FTYPES = {"Q8_0": 7, "Q4_K_M": 15}  # llama_ftype values

QUANTIZE = r"""
import sys, llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = int(sys.argv[3])
params.nthread = 2
status = llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), params)
sys.exit(0 if status == 0 else 1)
"""



def run_json(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        die(f"{' '.join(map(str, cmd[:3]))} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def flare(model, compute, args):
    cmd = [str(RELEASE / "flare-eval"), "bench", "--model", str(model), "--prompt-tokens",
           str(args.prompt_tokens), "--gen-tokens", str(args.gen_tokens), "--threads",
           str(args.threads), "--repeat", str(args.repeat), "--compute", compute, "--json"]
    return flare_bench(cmd)


def files(types):
    bench = CACHE / "bench"
    bench.mkdir(parents=True, exist_ok=True)
    f32 = bench / "smollm2-f32.gguf"
    if not f32.exists():
        subprocess.run([str(RELEASE / "flare-convert"), str(GGUF_Q4), str(f32), "--outtype", "f32",
                        "-q"], check=True)
    out = {}
    for name in types:
        if name == "Q4_1":
            out[name] = GGUF_Q4
            continue
        path = bench / f"smollm2-{name.lower()}-llamacpp.gguf"
        if not path.exists():
            partial = path.with_suffix(".partial")
            subprocess.run([sys.executable, "-c", QUANTIZE, str(f32), str(partial),
                            str(FTYPES[name])], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            partial.rename(path)
        out[name] = path
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--types", default="Q4_1,Q8_0,Q4_K_M")
    parser.add_argument("--json")
    args = parser.parse_args()
    for tool in ["flare-eval", "flare-convert"]:
        if not executable(RELEASE / tool):
            die(f"build first: swift build -c release ({tool} missing)")
    types = args.types.split(",")
    paths = files(types)
    # SmolLM2: 30 layers, 3 KV heads of 64; F32 keys and values for the benchmark's context.
    kv_mib = 2 * 30 * (args.prompt_tokens + args.gen_tokens) * 192 * 4 / 2**20
    results = {}
    for name in types:
        path = paths[name]
        results[name] = {
            "file_mib": path.stat().st_size / 2**20,
            "flare": flare(path, "quantized", args),
            "flare_f32": flare(path, "f32", args),
            "llama.cpp": run_json([sys.executable, "-c", LLAMA_CPP, str(path), str(args.threads),
                                   str(args.prompt_tokens), str(args.gen_tokens),
                                   str(args.repeat)]),
        }
    info = machine_info(["llama_cpp_python"])
    print(f"## Quantized compute: flare-eval vs llama.cpp on SmolLM2-135M ({time.strftime('%Y-%m-%d')})\n")
    for key, value in info.items():
        print(f"- {key}: {value}")
    print(f"- prompt {args.prompt_tokens} tokens, {args.gen_tokens} decoded, {args.threads} threads, "
          f"best of {args.repeat} after a warm-up; Flare's quantized kernels: "
          f"{results[types[0]]['flare'].get('quantized_kernels', '?')}\n")
    print("| file | side | prefill tok/s | decode tok/s | load s | peak RSS MiB |")
    print("|---|---|---:|---:|---:|---:|")
    for name in types:
        r = results[name]
        for side, label in [("flare", "Flare quantized"), ("flare_f32", "Flare --compute f32"),
                            ("llama.cpp", "llama.cpp")]:
            x = r[side]
            print(f"| {name} ({r['file_mib']:.0f} MiB) | {label} | "
                  f"{args.prompt_tokens / x['prefill_s']:.1f} | {args.gen_tokens / x['decode_s']:.1f} | "
                  f"{x['load_s']:.2f} | {x['rss_mib']:.0f} |")
    print()
    for name in types:
        r = results[name]
        fl, lc = r["flare"], r["llama.cpp"]
        decode = lc["decode_s"] / fl["decode_s"]
        prefill = lc["prefill_s"] / fl["prefill_s"]
        limit = r["file_mib"] + kv_mib + 64
        print(f"- {name}: decode {decode:.2f}x llama.cpp ({'met' if decode >= 1 else 'NOT met'}), "
              f"prefill {prefill:.2f}x ({'met' if prefill >= 1 else 'NOT met'}), RSS "
              f"{fl['rss_mib']:.0f} MiB against file + KV + 64 = {limit:.0f} MiB "
              f"({'met' if fl['rss_mib'] <= limit else 'NOT met'})")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "machine": info}, indent=1))


if __name__ == "__main__":
    main()

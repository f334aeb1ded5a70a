#!/usr/bin/env python3
"""Benchmark Flare's inference against llama.cpp and PyTorch on SmolLM2-135M in F32.

Workloads (each side is its own fresh process; the same weights in F32 everywhere):

  prefill  one forward pass over a prompt of --prompt-tokens fixed token ids (default 128)
  decode   --gen-tokens greedy tokens (default 64), one at a time with the KV cache

Sides:

  Flare      flare-eval bench --model F32.gguf --prompt-tokens N --gen-tokens M --threads T
             (also on the F32 HF folder, reported as its own row)
  llama.cpp  llama-cpp-python (built from its sdist, see scripts/INTEROP.md) on the same F32
             GGUF: Llama(n_threads=T, n_batch=N), eval(prompt) then eval([token]) per step
  PyTorch    transformers LlamaForCausalLM (float32, torch.set_num_threads(T)) on the F32 HF
             folder: model(ids) for prefill, then model(next, past_key_values=...) per step

Each side runs --repeat times inside its process after one untimed warm-up, and reports its
best prefill and decode times (load excluded, reported separately). Peak RSS is ru_maxrss of
the process. The F32 files are made once under $FLARE_CACHE/bench by flare-convert:
smollm2-hf (the F32 folder) and smollm2-f32.gguf.

Targets (issue 5): decode >= 0.9x llama.cpp at the same weight type; prefill >= 1.0x PyTorch.

Usage: python3 scripts/bench-eval.py [--threads 2] [--prompt-tokens 128] [--gen-tokens 64]
                                     [--repeat 3] [--json OUT]
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


TORCH = r"""
import json, sys, time, resource
import torch
from transformers import AutoModelForCausalLM
path, threads, n_prompt, n_gen, repeat = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
t0 = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
model.eval()
load = time.perf_counter() - t0
vocab = model.config.vocab_size
prompt = torch.tensor([[(i * 7919 + 13) % vocab for i in range(n_prompt)]])
best_p = best_d = float("inf")
with torch.inference_mode():
    for run in range(repeat + 1):
        t0 = time.perf_counter()
        out = model(prompt, use_cache=True)
        t1 = time.perf_counter()
        past = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(n_gen):
            out = model(nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        t2 = time.perf_counter()
        if run > 0:
            best_p, best_d = min(best_p, t1 - t0), min(best_d, t2 - t1)
print(json.dumps({"load_s": load, "prefill_s": best_p, "decode_s": best_d,
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_json(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        die(f"{' '.join(map(str, cmd[:3]))} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    for tool in ["flare-eval", "flare-convert"]:
        if not executable(RELEASE / tool):
            die(f"build first: swift build -c release ({tool} missing)")
    bench = CACHE / "bench"
    bench.mkdir(parents=True, exist_ok=True)
    folder = bench / "smollm2-hf"
    gguf = bench / "smollm2-f32.gguf"
    if not (folder / "model.safetensors").exists():
        subprocess.run([str(RELEASE / "flare-convert"), str(GGUF_Q4), str(folder), "-q"], check=True)
    if not gguf.exists():
        subprocess.run([str(RELEASE / "flare-convert"), str(GGUF_Q4), str(gguf), "--outtype", "f32",
                        "-q"], check=True)

    rows = []
    # Flare's RSS: measured around the process with /usr/bin/time's equivalent (wait4).
    for label, model in [("Flare (F32 GGUF)", gguf), ("Flare (F32 HF folder)", folder)]:
        cmd = [str(RELEASE / "flare-eval"), "bench", "--model", str(model), "--prompt-tokens",
               str(args.prompt_tokens), "--gen-tokens", str(args.gen_tokens), "--threads",
               str(args.threads), "--repeat", str(args.repeat), "--json"]
        rows.append((label, flare_bench(cmd)))
    rows.append(("llama.cpp (F32 GGUF)", run_json(
        [sys.executable, "-c", LLAMA_CPP, str(gguf), str(args.threads), str(args.prompt_tokens),
         str(args.gen_tokens), str(args.repeat)])))
    rows.append(("PyTorch (F32 HF folder)", run_json(
        [sys.executable, "-c", TORCH, str(folder), str(args.threads), str(args.prompt_tokens),
         str(args.gen_tokens), str(args.repeat)])))

    info = machine_info(["torch", "transformers", "llama_cpp_python"])
    print(f"## flare-eval vs llama.cpp and PyTorch on SmolLM2-135M F32 ({time.strftime('%Y-%m-%d')})\n")
    for key, value in info.items():
        print(f"- {key}: {value}")
    print(f"- prompt {args.prompt_tokens} tokens, {args.gen_tokens} decoded, {args.threads} threads, "
          f"best of {args.repeat} after a warm-up\n")
    print("| side | prefill tok/s | decode tok/s | load s | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|")
    for label, r in rows:
        print(f"| {label} | {args.prompt_tokens / r['prefill_s']:.1f} | "
              f"{args.gen_tokens / r['decode_s']:.1f} | {r['load_s']:.2f} | {r['rss_mib']:.0f} |")
    fl = dict(rows)["Flare (F32 GGUF)"]
    fl_hf = dict(rows)["Flare (F32 HF folder)"]
    lc = dict(rows)["llama.cpp (F32 GGUF)"]
    pt = dict(rows)["PyTorch (F32 HF folder)"]
    decode_ratio = lc["decode_s"] / fl["decode_s"]
    prefill_ratio = pt["prefill_s"] / fl_hf["prefill_s"]
    print()
    print(f"- decode, Flare / llama.cpp (same F32 GGUF): {decode_ratio:.2f}x "
          f"(target >= 0.9x: {'met' if decode_ratio >= 0.9 else 'NOT met'})")
    print(f"- prefill, Flare / PyTorch (same F32 folder): {prefill_ratio:.2f}x "
          f"(target >= 1.0x: {'met' if prefill_ratio >= 1.0 else 'NOT met'})")
    print(f"- prefill, Flare / llama.cpp: {lc['prefill_s'] / fl['prefill_s']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "machine": info}, indent=1))


if __name__ == "__main__":
    main()

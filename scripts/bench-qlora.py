#!/usr/bin/env python3
"""QLoRA: flare-train on the SmolLM2 Q4_1 GGUF kept quantized against the same run in F32.

Both runs are `flare-train lora` on the real SmolLM2-135M-Instruct Q4_1 GGUF with the same
arguments, once with `--compute quantized` (the default: the frozen matrices stay mapped as the
file stores them and the passes dequantize 64-row tiles into scratch) and once with
`--compute f32` (every matrix dequantized once at load, the F32 training run). Data: the Bible
causal-LM set committed in Fixtures/data/bible (lm-train.jsonl, lm-valid.jsonl), LoRA r=8 on
q_proj,v_proj, AdamW at 2e-4, no shuffling, validation at the end; each pair runs without and
with `--gradient-checkpointing` (--checkpointing both, the default; off or on for one). Reported
per batch size and setting: median step time (after --warmup untimed steps), peak RSS of the
process (wait4), and the final validation loss. Targets of issue 14: peak RSS <= 0.4x the F32
run's (the same setting on both sides); validation loss within 2 %.

Usage: python3 scripts/bench-qlora.py [--batches 1,8] [--steps 8] [--warmup 2]
                                      [--checkpointing both|off|on] [--json OUT]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import benchlib

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("FLARE_CACHE") or Path.home() / ".cache" / "flare")
RELEASE = REPO_ROOT / ".build" / "release"
GGUF_Q4 = CACHE / "models" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DATA = REPO_ROOT / "Fixtures" / "data" / "bible"
LENGTH = 128


def run(compute, batch, checkpointing, args, work):
    out = work / f"{compute}-{batch}-{checkpointing}"
    log = work / f"{compute}-{batch}-{checkpointing}.jsonl"
    steps = args.steps + args.warmup
    cmd = [str(RELEASE / "flare-train"), "lora", "--model", str(GGUF_Q4), "--data",
           str(DATA / "lm-train.jsonl"), "--valid", str(DATA / "lm-valid.jsonl"), "--output",
           str(out), "--target-modules", "q_proj,v_proj", "--rank", "8", "--alpha", "16",
           "--batch-size", str(batch), "--max-steps", str(steps), "--max-length", str(LENGTH),
           "--no-shuffle", "--eval-every", str(steps), "--threads", "2", "--compute", compute,
           "--json", "--force", "--quiet"] + (["--gradient-checkpointing"] if checkpointing else [])
    with open(log, "w") as f:
        wall, rss = benchlib.run_once(cmd, stdout=f)
    rows = [json.loads(line) for line in open(log) if line.strip()]
    timed = [r for r in rows if "seconds" in r][args.warmup:]
    valid = [r["val_loss"] for r in rows if "val_loss" in r]
    return {"wall_s": wall, "rss_mib": rss / 1024,
            "step_s": statistics.median(r["seconds"] for r in timed),
            "valid_loss": valid[-1] if valid else None,
            "losses": [r["loss"] for r in rows if "loss" in r and "seconds" in r]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--checkpointing", choices=["both", "off", "on"], default="both")
    ap.add_argument("--json")
    args = ap.parse_args()
    settings = {"both": [False, True], "off": [False], "on": [True]}[args.checkpointing]
    if not benchlib.executable(RELEASE / "flare-train"):
        benchlib.die("build first: swift build -c release")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for batch in [int(b) for b in args.batches.split(",")]:
            for ckpt in settings:
                results[(batch, ckpt)] = {c: run(c, batch, ckpt, args, work)
                                          for c in ["quantized", "f32"]}
    info = benchlib.machine_info([])
    print(f"## QLoRA: flare-train on the Q4_1 GGUF kept quantized vs F32 ({time.strftime('%Y-%m-%d')})\n")
    for key, value in info.items():
        print(f"- {key}: {value}")
    print(f"- SmolLM2-135M-Instruct Q4_1, LoRA r=8 on q_proj,v_proj, {LENGTH}-token rows, "
          f"{args.steps} timed steps after {args.warmup}, 2 threads\n")
    print("| batch | gradient checkpointing | compute | step s | peak RSS MiB | final validation loss |")
    print("|---:|---|---|---:|---:|---:|")
    for (batch, ckpt), pair in results.items():
        for compute, r in pair.items():
            print(f"| {batch} | {'on' if ckpt else 'off'} | {compute} | {r['step_s']:.3f} | "
                  f"{r['rss_mib']:.0f} | "
                  f"{r['valid_loss'] if r['valid_loss'] is not None else '—'} |")
    print()
    for (batch, ckpt), pair in results.items():
        q, f = pair["quantized"], pair["f32"]
        ratio = q["rss_mib"] / f["rss_mib"]
        line = (f"- batch {batch}, checkpointing {'on' if ckpt else 'off'}: RSS {ratio:.2f}x the F32 run's "
                f"({'met' if ratio <= 0.4 else 'NOT met'} against <= 0.4x), step time "
                f"{q['step_s'] / f['step_s']:.2f}x")
        if q["valid_loss"] is not None and f["valid_loss"] is not None:
            gap = abs(q["valid_loss"] - f["valid_loss"]) / f["valid_loss"]
            line += f", validation loss {gap * 100:.4f} % apart ({'met' if gap <= 0.02 else 'NOT met'})"
        print(line)
    if args.json:
        rows = [{"batch": batch, "gradient_checkpointing": ckpt, **pair}
                for (batch, ckpt), pair in results.items()]
        Path(args.json).write_text(json.dumps({"results": rows, "machine": info}, indent=1))


if __name__ == "__main__":
    sys.exit(main())

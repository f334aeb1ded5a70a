#!/usr/bin/env python3
"""Benchmark flare-merge against PEFT's merge_and_unload on SmolLM2-135M (F32).

Inputs (made once, under $FLARE_CACHE/bench, when missing):

  base     smollm2-hf/: the SmolLM2-135M-Instruct GGUF converted to an F32 HF folder by
           flare-convert FILE.gguf smollm2-hf -q
  adapter  lora-r16-all-linear/: a PEFT LoRA, r=16, lora_alpha=32,
           target_modules="all-linear" (q/k/v/o/gate/up/down of all 30 layers), A as PEFT
           initialises it and B seeded random normal * 0.01 (so every delta is non-zero),
           written with save_pretrained.

Workload (both write the merged model as a folder under $FLARE_CACHE/bench):

  Flare  flare-merge --base HF --adapter ADAPTER --output OUT --force -q   (default threads)
  PEFT   a fresh Python process: AutoModelForCausalLM.from_pretrained(HF, F32),
         PeftModel.from_pretrained(model, ADAPTER), merge_and_unload(),
         save_pretrained(OUT2, safe_serialization=True). The whole process is timed,
         interpreter start and imports included: that is what a user waits for.

Every command is its own subprocess. Wall time is time.perf_counter() around spawn +
wait; peak RSS is ru_maxrss from os.wait4() on the child. Each command gets one untimed
warm-up run (so both read the base from the page cache), then --repeat timed runs
(default 3), Flare and PEFT alternating. Reported: median wall time, max peak RSS, the
ratios PEFT/Flare, and each peak RSS as a percentage of the model size (the sum of the
base's .safetensors files). The targets checked are "at least 10x faster than PEFT" and
"peak RSS at most 15% of the model size".

After the warm-ups (untimed) the two outputs are compared in a subprocess with the
safetensors package: the same tensor names, shapes and dtypes, and the max absolute
difference over all tensors (float rounding only, ~1e-7, is expected).

This script never imports torch, numpy or safetensors itself: on Linux a child's
ru_maxrss can never be lower than the parent's resident size at spawn time. The floor
is measured by spawning `true` and printed.

Usage:
  python3 scripts/bench-merge.py [--flare-merge PATH] [--flare-convert PATH]
                                 [--gguf PATH] [--repeat N] [--json OUT]
                                 [--python-only | --flare-only] [--keep-outputs]
"""

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import die, executable, fmt, machine_info, run_once  # noqa: E402  (scripts/ is on sys.path)

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("FLARE_CACHE") or Path.home() / ".cache" / "flare")
RELEASE = REPO_ROOT / ".build" / "release"
DEFAULT_MERGE = RELEASE / "flare-merge"
DEFAULT_CONVERT = RELEASE / "flare-convert"
DEFAULT_GGUF = CACHE / "models" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
BENCH = CACHE / "bench"
BASE_DIR = BENCH / "smollm2-hf"
ADAPTER_DIR = BENCH / "lora-r16-all-linear"
FLARE_OUT = BENCH / "merge-out-flare"
PEFT_OUT = BENCH / "merge-out-peft"
BUILD_HINT = "Build the release binaries first:  swift build -c release"

RANK = 16
ALPHA = 32
SEED = 1234
B_SCALE = 0.01

MAKE_ADAPTER = f"""\
import sys
import torch
from transformers import AutoModelForCausalLM
from peft import LoraConfig, get_peft_model
base, out = sys.argv[1], sys.argv[2]
torch.manual_seed({SEED})
model = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
config = LoraConfig(r={RANK}, lora_alpha={ALPHA}, target_modules="all-linear",
                    lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
model = get_peft_model(model, config)
gen = torch.Generator().manual_seed({SEED})
n = 0
with torch.no_grad():
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.copy_(torch.randn(p.shape, generator=gen) * {B_SCALE})
            n += 1
model.save_pretrained(out)
print(n)
"""

PEFT_MERGE = """\
import sys
import torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
base, adapter, out = sys.argv[1], sys.argv[2], sys.argv[3]
model = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
model = PeftModel.from_pretrained(model, adapter)
merged = model.merge_and_unload()
merged.save_pretrained(out, safe_serialization=True)
"""

COMPARE = """\
import json
import sys
from pathlib import Path
import numpy as np
from safetensors import safe_open

def load(folder):
    files = sorted(Path(folder).glob("*.safetensors"))
    handles = [safe_open(str(f), "np") for f in files]
    where = {}
    for h in handles:
        for k in h.keys():
            where[k] = h
    return [f.name for f in files], where

a_files, a = load(sys.argv[1])
b_files, b = load(sys.argv[2])
result = {"files_a": a_files, "files_b": b_files,
          "tensors_a": len(a), "tensors_b": len(b),
          "only_a": sorted(set(a) - set(b)), "only_b": sorted(set(b) - set(a)),
          "mismatched": [], "max_abs_diff": 0.0, "max_abs_diff_tensor": None,
          "identical_tensors": 0, "values": 0}
for name in sorted(set(a) & set(b)):
    x, y = a[name].get_tensor(name), b[name].get_tensor(name)
    if x.shape != y.shape or x.dtype != y.dtype:
        result["mismatched"].append([name, str(x.shape), str(x.dtype), str(y.shape), str(y.dtype)])
        continue
    d = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if x.size else 0.0
    result["values"] += int(x.size)
    if d == 0.0:
        result["identical_tensors"] += 1
    if d > result["max_abs_diff"]:
        result["max_abs_diff"], result["max_abs_diff_tensor"] = d, name
print(json.dumps(result))
"""


def safetensors_bytes(folder):
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def ensure_base(convert, gguf):
    if any(BASE_DIR.glob("*.safetensors")) and (BASE_DIR / "config.json").is_file():
        return False
    if not executable(convert):
        die(f"no base at {BASE_DIR} and no flare-convert binary at {convert} to make it.\n"
            f"{BUILD_HINT}")
    if not gguf.is_file():
        die(f"GGUF not found at {gguf}.\nFetch it first:  scripts/fetch-models.sh")
    BENCH.mkdir(parents=True, exist_ok=True)
    print(f"  making base: flare-convert {gguf.name} -> {BASE_DIR}", file=sys.stderr, flush=True)
    run_once([str(convert), str(gguf), str(BASE_DIR), "-q"], hint=BUILD_HINT)
    if not any(BASE_DIR.glob("*.safetensors")):
        die(f"flare-convert left no .safetensors in {BASE_DIR}")
    return True


def ensure_adapter():
    if (ADAPTER_DIR / "adapter_config.json").is_file() and \
            (ADAPTER_DIR / "adapter_model.safetensors").is_file():
        return False
    print(f"  making adapter: {ADAPTER_DIR}", file=sys.stderr, flush=True)
    with tempfile.TemporaryFile() as out:
        run_once([sys.executable, "-c", MAKE_ADAPTER, str(BASE_DIR), str(ADAPTER_DIR)], stdout=out)
    if not (ADAPTER_DIR / "adapter_model.safetensors").is_file():
        die(f"save_pretrained left no adapter_model.safetensors in {ADAPTER_DIR}")
    return True


def adapter_summary():
    cfg = json.loads((ADAPTER_DIR / "adapter_config.json").read_text())
    probe = ("import json, sys\nfrom safetensors import safe_open\n"
             "with safe_open(sys.argv[1], 'np') as f:\n"
             "    keys = list(f.keys())\n"
             "    zero_b = sum(1 for k in keys if 'lora_B' in k and not f.get_tensor(k).any())\n"
             "print(json.dumps({'tensors': len(keys), 'zero_b': zero_b}))\n")
    out = subprocess.run([sys.executable, "-c", probe, str(ADAPTER_DIR / "adapter_model.safetensors")],
                         capture_output=True, text=True)
    if out.returncode != 0:
        die(f"could not read the adapter:\n{out.stderr[-2000:]}")
    info = json.loads(out.stdout)
    if info["zero_b"]:
        die(f"{info['zero_b']} lora_B tensors in {ADAPTER_DIR} are all zero; delete the folder "
            f"to make it again")
    return {"r": cfg.get("r"), "lora_alpha": cfg.get("lora_alpha"),
            "target_modules": cfg.get("target_modules"), "tensors": info["tensors"],
            "bytes": (ADAPTER_DIR / "adapter_model.safetensors").stat().st_size}


def compare_outputs():
    out = subprocess.run([sys.executable, "-c", COMPARE, str(FLARE_OUT), str(PEFT_OUT)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        die(f"comparing the outputs failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser(
        description="Compare flare-merge with PEFT merge_and_unload on SmolLM2 (wall time, peak RSS).")
    ap.add_argument("--flare-merge", type=Path, default=DEFAULT_MERGE,
                    help=f"flare-merge binary (default: {DEFAULT_MERGE})")
    ap.add_argument("--flare-convert", type=Path, default=DEFAULT_CONVERT,
                    help=f"flare-convert binary, to make the base when missing (default: {DEFAULT_CONVERT})")
    ap.add_argument("--gguf", type=Path, default=DEFAULT_GGUF,
                    help=f"GGUF the base is made from (default: {DEFAULT_GGUF})")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per command (default 3)")
    ap.add_argument("--json", type=Path, metavar="OUT", help="write raw results as JSON")
    side = ap.add_mutually_exclusive_group()
    side.add_argument("--python-only", action="store_true", help="run only the PEFT side")
    side.add_argument("--flare-only", action="store_true", help="run only the Flare side")
    ap.add_argument("--keep-outputs", action="store_true",
                    help=f"keep the merged folders ({FLARE_OUT.name}, {PEFT_OUT.name}) in {BENCH}")
    args = ap.parse_args()

    if args.repeat < 1:
        die("--repeat must be >= 1")
    merge = args.flare_merge.expanduser().resolve()
    convert = args.flare_convert.expanduser().resolve()
    if not args.python_only and not executable(merge):
        die(f"flare-merge binary not found at {merge}.\n{BUILD_HINT}\n(or pass --flare-merge PATH)")

    made_base = ensure_base(convert, args.gguf.expanduser().resolve())
    model_bytes = safetensors_bytes(BASE_DIR)
    made_adapter = ensure_adapter()
    adapter = adapter_summary()

    info = machine_info(['torch', 'transformers', 'peft', 'safetensors', 'numpy'])
    true_bin = shutil.which("true") or "/bin/true"
    floor_kib = max(run_once([true_bin])[1] for _ in range(3))

    sides = ["python"] if args.python_only else (["flare"] if args.flare_only else ["flare", "python"])
    cmds = {
        "flare": [str(merge), "--base", str(BASE_DIR), "--adapter", str(ADAPTER_DIR),
                  "--output", str(FLARE_OUT), "--force", "-q"],
        "python": [sys.executable, "-c", PEFT_MERGE, str(BASE_DIR), str(ADAPTER_DIR), str(PEFT_OUT)],
    }
    shown = {
        "flare": "flare-merge --base HF --adapter ADAPTER --output OUT --force -q",
        "python": "python3 -c <from_pretrained + PeftModel.from_pretrained + merge_and_unload "
                  "+ save_pretrained> HF ADAPTER OUT",
    }
    outs = {"flare": FLARE_OUT, "python": PEFT_OUT}

    def clear(s):
        if outs[s].exists():
            shutil.rmtree(outs[s])

    runs = {s: {"wall_s": [], "maxrss_kib": []} for s in sides}
    comparison = None
    try:
        for s in sides:  # warm-up, untimed; leaves the output for the comparison
            clear(s)
            run_once(cmds[s], hint=BUILD_HINT if s == "flare" else None)
            if not any(outs[s].glob("*.safetensors")):
                die(f"{s} left no .safetensors in {outs[s]}")
            print(f"  warm-up done: {s}", file=sys.stderr, flush=True)
        if len(sides) == 2:
            comparison = compare_outputs()
            print(f"  compared: max abs diff {comparison['max_abs_diff']:.3g}",
                  file=sys.stderr, flush=True)
        for i in range(args.repeat):
            for s in sides:
                # PEFT's save_pretrained into an existing folder and flare-merge --force
                # both replace the output; clear it anyway so both start from the same state.
                clear(s)
                wall, rss = run_once(cmds[s])
                runs[s]["wall_s"].append(wall)
                runs[s]["maxrss_kib"].append(rss)
                print(f"  run {i + 1}/{args.repeat} {s}: {wall:.3f} s, {rss / 1024:.1f} MiB",
                      file=sys.stderr, flush=True)
        out_bytes = {s: safetensors_bytes(outs[s]) for s in sides}
    finally:
        if not args.keep_outputs:
            for s in sides:
                clear(s)

    res = {}
    for s in ("flare", "python"):
        if s not in runs:
            res[s] = None
            continue
        med = statistics.median(runs[s]["wall_s"])
        peak = max(runs[s]["maxrss_kib"])
        res[s] = {"cmd": cmds[s] if s == "flare" else shown[s], **runs[s],
                  "median_wall_s": med, "max_rss_kib": peak,
                  "rss_pct_of_model": 100.0 * peak * 1024 / model_bytes,
                  "output_safetensors_bytes": out_bytes[s]}
    fl, py = res["flare"], res["python"]
    wall_ratio = py["median_wall_s"] / fl["median_wall_s"] if fl and py else None
    rss_ratio = py["max_rss_kib"] / fl["max_rss_kib"] if fl and py else None
    speed_met = None if wall_ratio is None else wall_ratio >= 10.0
    rss_met = None if fl is None else fl["rss_pct_of_model"] <= 15.0

    def yes_no(v):
        return "not measured" if v is None else ("met" if v else "NOT met")

    date = datetime.date.today().isoformat()
    lines = [
        f"## flare-merge vs PEFT merge_and_unload on SmolLM2-135M F32 ({date})",
        "",
        f"- machine: nproc={info['nproc']}, CPU: {info['cpu_model']}, "
        f"RAM: {fmt(info['mem_total_mib'], 'd')} MiB, kernel {info['kernel']}",
        f"- Python {info['python']}, torch {info['torch']}, transformers {info['transformers']}, "
        f"peft {info['peft']}, safetensors {info['safetensors']}, numpy {info['numpy']}",
        "- thread env (left as is): " +
        ", ".join(f"{k}={v if v is not None else 'unset'}" for k, v in info["env"].items()),
        f"- flare-merge: {'skipped (--python-only)' if args.python_only else merge}",
        f"- base: {BASE_DIR} ({model_bytes / 1e6:.1f} MB of safetensors = "
        f"{model_bytes / 2**20:.1f} MiB){' [made now]' if made_base else ''}",
        f"- adapter: {ADAPTER_DIR} (r={adapter['r']}, lora_alpha={adapter['lora_alpha']}, "
        f"target_modules={adapter['target_modules']}, {adapter['tensors']} tensors, "
        f"{adapter['bytes'] / 1e6:.1f} MB){' [made now]' if made_adapter else ''}",
        f"- method: fresh subprocess per command, 1 untimed warm-up each, {args.repeat} timed "
        f"runs alternating; median wall, max peak RSS (ru_maxrss via wait4)",
        f"- RSS floor (ru_maxrss of `true` spawned by this script): {floor_kib / 1024:.1f} MiB",
        "",
        "| side | command | wall s | peak RSS MiB | peak RSS % of model |",
        "|---|---|---:|---:|---:|",
    ]
    for s, label in (("flare", "Flare"), ("python", "PEFT")):
        r = res[s]
        if r is None:
            lines.append(f"| {label} | skipped | — | — | — |")
        else:
            lines.append(f"| {label} | `{shown[s]}` | {r['median_wall_s']:.3f} "
                         f"| {r['max_rss_kib'] / 1024:.1f} | {r['rss_pct_of_model']:.1f} |")
    lines.append(f"| ratio PEFT/Flare | | {fmt(wall_ratio, '.2f')} | {fmt(rss_ratio, '.2f')} | |")
    lines.append("")
    lines.append(f"- target \"at least 10x faster\": {yes_no(speed_met)} ({fmt(wall_ratio, '.2f')}x)")
    lines.append(f"- target \"peak RSS at most 15% of the model size\": {yes_no(rss_met)} "
                 f"({fmt(fl and fl['rss_pct_of_model'], '.1f')}%)")
    if comparison:
        c = comparison
        same = not c["only_a"] and not c["only_b"] and not c["mismatched"]
        lines.append(
            f"- equivalence: {c['tensors_a']} vs {c['tensors_b']} tensors, same names, shapes and "
            f"dtypes: {'yes' if same else 'NO'}; max abs diff {c['max_abs_diff']:.3g} "
            f"(in {c['max_abs_diff_tensor']}); {c['identical_tensors']} tensors bit-identical")
        if not same:
            lines.append(f"  only Flare: {c['only_a'][:10]}; only PEFT: {c['only_b'][:10]}; "
                         f"mismatched: {c['mismatched'][:10]}")
    print("\n".join(lines))

    if args.json:
        out = {
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "machine": info,
            "flare_merge": None if args.python_only else str(merge),
            "sides": sides,
            "repeat": args.repeat,
            "warmup_runs": 1,
            "rss_floor_kib": floor_kib,
            "base": {"path": str(BASE_DIR), "safetensors_bytes": model_bytes},
            "adapter": {"path": str(ADAPTER_DIR), **adapter, "seed": SEED, "b_scale": B_SCALE},
            "python_scripts": {"merge": PEFT_MERGE, "make_adapter": MAKE_ADAPTER},
            "results": res,
            "wall_ratio_peft_over_flare": wall_ratio,
            "rss_ratio_peft_over_flare": rss_ratio,
            "targets": {"speed_10x": speed_met, "rss_15pct": rss_met},
            "comparison": comparison,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"\nraw results: {args.json}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Benchmark `flare-inspect` against the Python `safetensors` package.

Two workloads, each run on two files:

  listing  Flare:  flare-inspect FILE --json            (stdout -> /dev/null)
           Python: safe_open(FILE, "np"): metadata(), then shape and dtype of
                   every tensor via get_slice(); prints nothing.
  stats    Flare:  flare-inspect FILE --stats --json    (stdout -> /dev/null)
           Python: get_tensor() for every tensor, as float32 (no copy when it
                   already is F32), then min, max, mean, std and NaN/Inf counts
                   with numpy; prints nothing.

Files:
  model    --model PATH, default $FLARE_CACHE/models/all-MiniLM-L6-v2/model.safetensors
  big      --big PATH, default $FLARE_CACHE/bench/big-600mb.safetensors
           (150 F32 tensors of 1M random normal values, seed 20240601,
           600 MB; created once, in a separate process, if missing)

FLARE_CACHE defaults to ~/.cache/flare.

Every command is its own subprocess. Wall time is time.perf_counter() around
spawn + wait; peak RSS is ru_maxrss from os.wait4() on the child. Each command
gets one untimed warm-up run (so both sides read from the page cache), then
--repeat timed runs, alternating Flare and Python. Reported: median wall time,
max peak RSS.

Peak RSS caveat: on Linux a child's ru_maxrss can never be lower than the
spawning process's resident size at spawn time. This script therefore never
imports numpy or safetensors itself, and measures that floor by spawning
`true`; the floor is printed and values at the floor are marked.

Usage:
  python3 scripts/bench-inspect.py [--flare PATH] [--model PATH] [--big PATH]
                                   [--repeat N] [--json OUT]
"""

import argparse
import datetime
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import die, fmt, machine_info, ratio, run_once  # noqa: E402  (scripts/ is on sys.path)

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("FLARE_CACHE") or Path.home() / ".cache" / "flare")
DEFAULT_FLARE = REPO_ROOT / ".build" / "release" / "flare-inspect"
DEFAULT_MODEL = CACHE / "models" / "all-MiniLM-L6-v2" / "model.safetensors"
DEFAULT_BIG = CACHE / "bench" / "big-600mb.safetensors"

BIG_MIN_BYTES = 500_000_000
BIG_SEED = 20240601
BIG_TENSORS = 150
BIG_SHAPES = [(1000, 1000), (500, 2000), (2000, 500), (250, 4000)]  # 1M values each

PY_LISTING = """\
import sys
from safetensors import safe_open
with safe_open(sys.argv[1], "np") as f:
    meta = f.metadata()
    for k in f.keys():
        s = f.get_slice(k)
        s.get_shape()
        s.get_dtype()
"""

PY_STATS = """\
import sys
import numpy as np
from safetensors import safe_open
with safe_open(sys.argv[1], "np") as f:
    for k in f.keys():
        a = f.get_tensor(k).astype(np.float32, copy=False)
        nan = int(np.count_nonzero(np.isnan(a)))
        inf = int(np.count_nonzero(np.isinf(a)))
        if a.size:
            lo, hi, mean, std = a.min(), a.max(), a.mean(), a.std()
"""

PY_MAKE_BIG = """\
import sys
import numpy as np
from safetensors.numpy import save_file
out, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
shapes = [tuple(int(d) for d in s.split("x")) for s in sys.argv[4].split(",")]
rng = np.random.default_rng(seed)
tensors = {}
for i in range(count):
    shape = shapes[i % len(shapes)]
    tensors[f"layers.{i:03d}.weight"] = rng.standard_normal(shape, dtype=np.float32)
save_file(tensors, out, metadata={"generator": "flare scripts/bench-inspect.py",
                                  "seed": str(seed)})
"""


def read_header(path):
    """Parse a safetensors header with the stdlib only; returns (tensor count, header bytes)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError("file shorter than 8 bytes")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise ValueError(f"implausible header length {n}")
        header = json.loads(f.read(n))
    return sum(1 for k in header if k != "__metadata__"), n


def ensure_big(path):
    if path.exists():
        size = path.stat().st_size
        if size < BIG_MIN_BYTES:
            print(f"warning: {path} exists but is only {size / 1e6:.0f} MB "
                  f"(< {BIG_MIN_BYTES / 1e6:.0f} MB); using it as is. "
                  f"Delete it to regenerate.", file=sys.stderr)
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shapes = ",".join("x".join(str(d) for d in s) for s in BIG_SHAPES)
    print(f"creating {path} ({BIG_TENSORS} F32 tensors, seed {BIG_SEED}); one-off, "
          f"takes a little while ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        # Separate interpreter: keeps numpy and ~1-2 GB of buffers out of this
        # process, whose resident size would otherwise raise every child's ru_maxrss.
        subprocess.run([sys.executable, "-c", PY_MAKE_BIG, str(tmp), str(BIG_SEED),
                        str(BIG_TENSORS), shapes], check=True)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    print(f"created {path}: {path.stat().st_size / 1e6:.1f} MB in "
          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return True


def main():
    ap = argparse.ArgumentParser(
        description="Compare flare-inspect with Python safetensors (wall time, peak RSS).")
    ap.add_argument("--flare", type=Path, default=DEFAULT_FLARE,
                    help=f"flare-inspect binary (default: {DEFAULT_FLARE})")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                    help=f"real model file (default: {DEFAULT_MODEL})")
    ap.add_argument("--big", type=Path, default=DEFAULT_BIG,
                    help=f"large file, created if missing (default: {DEFAULT_BIG})")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per command (default 3)")
    ap.add_argument("--json", type=Path, metavar="OUT", help="write raw results as JSON")
    ap.add_argument("--python-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.repeat < 1:
        die("--repeat must be >= 1")
    flare = args.flare.resolve()
    if not args.python_only:
        if not (flare.is_file() and os.access(flare, os.X_OK)):
            die(f"flare-inspect binary not found at {flare}.\n"
                f"Build it first:  swift build -c release --product flare-inspect\n"
                f"(or pass --flare PATH)")
    model = args.model.expanduser().resolve()
    if not model.is_file():
        die(f"model not found at {model}.\nFetch it first:  scripts/fetch-models.sh\n"
            f"(or pass --model PATH)")
    big = args.big.expanduser().resolve()
    created = ensure_big(big)

    files = []
    for label, path in (("model", model), ("big", big)):
        try:
            count, header_len = read_header(path)
        except (OSError, ValueError) as e:
            die(f"{path} is not a readable safetensors file: {e}")
        files.append({"label": label, "path": str(path), "bytes": path.stat().st_size,
                      "tensors": count, "header_bytes": header_len})

    info = machine_info(['safetensors', 'numpy'])
    true_bin = shutil.which("true") or "/bin/true"
    floor_kib = max(run_once([true_bin])[1] for _ in range(3))

    print("# flare-inspect vs Python safetensors\n")
    print(f"- machine: nproc={info['nproc']}, CPU: {info['cpu_model']}, "
          f"RAM: {fmt(info['mem_total_mib'], 'd')} MiB, kernel {info['kernel']}")
    print(f"- Python {info['python']} ({info['python_executable']}), "
          f"safetensors {info['safetensors']}, numpy {info['numpy']}")
    print("- thread env (left as is): " +
          ", ".join(f"{k}={v if v is not None else 'unset'}" for k, v in info["env"].items()))
    print(f"- flare binary: {'skipped (--python-only)' if args.python_only else flare}")
    for f in files:
        print(f"- {f['label']}: {f['path']} ({f['bytes'] / 1e6:.1f} MB, {f['tensors']} tensors"
              f"{', created by this run' if f['label'] == 'big' and created else ''})")
    print(f"- method: each command is a fresh subprocess; 1 untimed warm-up run per command "
          f"first (both sides then read from the page cache); {args.repeat} timed runs, "
          f"Flare/Python alternating; median wall time, max peak RSS (ru_maxrss via wait4)")
    print(f"- RSS floor (ru_maxrss of `true` spawned by this script): "
          f"{floor_kib / 1024:.1f} MiB; values marked * are at that floor\n")
    sys.stdout.flush()

    workloads = [
        ("listing", lambda p: [str(flare), p, "--json"],
         lambda p: [sys.executable, "-c", PY_LISTING, p]),
        ("stats", lambda p: [str(flare), p, "--stats", "--json"],
         lambda p: [sys.executable, "-c", PY_STATS, p]),
    ]
    sides = ["python"] if args.python_only else ["flare", "python"]

    results = []
    for wname, flare_cmd, py_cmd in workloads:
        for f in files:
            cmds = {"flare": flare_cmd(f["path"]), "python": py_cmd(f["path"])}
            runs = {s: {"wall_s": [], "maxrss_kib": []} for s in sides}
            for s in sides:  # warm-up, untimed
                if s == "flare" and wname == "listing":
                    with tempfile.TemporaryFile() as out:
                        run_once(cmds[s], stdout=out)
                        out.seek(0)
                        try:
                            json.loads(out.read())
                        except ValueError:
                            print(f"warning: `flare-inspect --json` on {f['label']} did not "
                                  f"print valid JSON", file=sys.stderr)
                else:
                    run_once(cmds[s])
            for _ in range(args.repeat):
                for s in sides:
                    wall, rss = run_once(cmds[s])
                    runs[s]["wall_s"].append(wall)
                    runs[s]["maxrss_kib"].append(rss)
            row = {"workload": wname, "file": f["label"], "path": f["path"],
                   "bytes": f["bytes"]}
            for s in ("flare", "python"):
                if s in runs:
                    row[s] = {"cmd": cmds[s] if s == "flare" else
                              [sys.executable, "-c", f"<{wname} script>", f["path"]],
                              **runs[s],
                              "median_wall_s": statistics.median(runs[s]["wall_s"]),
                              "max_rss_kib": max(runs[s]["maxrss_kib"])}
                else:
                    row[s] = None
            fl, py = row["flare"], row["python"]
            row["wall_ratio"] = ratio(py["median_wall_s"], fl and fl["median_wall_s"])
            row["rss_ratio"] = ratio(py["max_rss_kib"], fl and fl["max_rss_kib"])
            results.append(row)
            print(f"  done: {wname} on {f['label']}", file=sys.stderr, flush=True)

    def rss_cell(side):
        if side is None:
            return "—"
        kib = side["max_rss_kib"]
        return f"{kib / 1024:.1f}" + ("*" if kib <= floor_kib * 1.02 else "")

    print("| workload | file | size MB | Flare wall s | Python wall s | wall ratio (Py/Flare) "
          "| Flare peak RSS MiB | Python peak RSS MiB | RSS ratio (Py/Flare) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        fl, py = r["flare"], r["python"]
        print(f"| {r['workload']} | {r['file']} | {r['bytes'] / 1e6:.1f} "
              f"| {fmt(fl and fl['median_wall_s'], '.3f')} | {py['median_wall_s']:.3f} "
              f"| {fmt(r['wall_ratio'], '.2f')} | {rss_cell(fl)} | {rss_cell(py)} "
              f"| {fmt(r['rss_ratio'], '.2f')} |")

    listing = {r["file"]: r for r in results if r["workload"] == "listing"}
    growth = {}
    for s in ("flare", "python"):
        small, large = listing["model"][s], listing["big"][s]
        growth[s] = (large["median_wall_s"] / small["median_wall_s"]
                     if small and large else None)
    mb = {f["label"]: f["bytes"] / 1e6 for f in files}
    print(f"\nListing time does not grow with data size "
          f"(listing wall on big {mb['big']:.0f} MB / model {mb['model']:.0f} MB, "
          f"~1 expected): Flare {fmt(growth['flare'], '.2f')}, "
          f"Python {fmt(growth['python'], '.2f')}")

    if args.json:
        out = {
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "machine": info,
            "flare_binary": None if args.python_only else str(flare),
            "python_only": args.python_only,
            "repeat": args.repeat,
            "warmup_runs": 1,
            "rss_floor_kib": floor_kib,
            "files": files,
            "big_file_created": created,
            "python_scripts": {"listing": PY_LISTING, "stats": PY_STATS},
            "results": results,
            "listing_growth_big_over_model": growth,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"\nraw results: {args.json}")


if __name__ == "__main__":
    main()

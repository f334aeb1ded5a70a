#!/usr/bin/env python3
"""Benchmark Flare's GGUF tools against gguf-py on the real SmolLM2 GGUF.

Three workloads, all on one file (default
$FLARE_CACHE/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf):

  listing     Flare:  flare-inspect FILE                        (stdout -> /dev/null)
              Python: gguf-dump FILE                            (stdout -> /dev/null)
  stats       Flare:  flare-inspect --stats --json --quiet FILE (stdout -> /dev/null)
              Python: GGUFReader, then for every tensor gguf.quants.dequantize to
                      float32 and min, max, mean, std and NaN/Inf counts with numpy
                      (the same reductions as scripts/bench-inspect.py); prints nothing.
  dequantize  Flare:  flare-convert FILE OUT --outtype f32 --force
              Python: GGUFReader, gguf.quants.dequantize of every tensor to float32,
                      then safetensors.numpy.save_file into OUT/model.safetensors.
              Skipped, with a note, when the flare-convert binary does not exist.
              The Flare side also writes config.json and the tokenizer files; the
              Python side only the weights. Both outputs go to a temporary folder
              (--out-dir to choose where) and are deleted afterwards.

FLARE_CACHE defaults to ~/.cache/flare. Binaries default to .build/release/.

Every command is its own subprocess. Wall time is time.perf_counter() around
spawn + wait; peak RSS is ru_maxrss from os.wait4() on the child. Each command
gets one untimed warm-up run (so both sides read the file from the page cache),
then --repeat timed runs (default 3), alternating Flare and Python. Reported:
median wall time, max peak RSS, and the ratios Python/Flare (above 1: Flare is
faster or smaller).

The warm-up runs also check the outputs: `flare-inspect --stats --json` must
print JSON lines with no "error" member, and flare-convert must leave a
model.safetensors in OUT.

Peak RSS caveat: on Linux a child's ru_maxrss can never be lower than the
spawning process's resident size at spawn time. This script therefore never
imports numpy, gguf or safetensors itself, and measures that floor by spawning
`true`; the floor is printed and values at the floor are marked *.

gguf-dump is the console script next to this interpreter when there is one
(pyenv's shim would add a bash and a pyenv process to every run), else the one
on PATH; --gguf-dump PATH overrides.

Usage:
  python3 scripts/bench-gguf.py [--flare-inspect PATH] [--flare-convert PATH]
                                [--gguf-dump PATH] [--model PATH] [--out-dir DIR]
                                [--repeat N] [--json OUT] [--append] [--python-only]

  --append       also append the report, dated, to scripts/BENCHMARKS.md
  --python-only  run only the Python side (to test this script without a build)
"""

import argparse
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from benchlib import die, executable, fmt, machine_info, ratio, run_once  # noqa: E402  (scripts/ is on sys.path)

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("FLARE_CACHE") or Path.home() / ".cache" / "flare")
RELEASE = REPO_ROOT / ".build" / "release"
DEFAULT_INSPECT = RELEASE / "flare-inspect"
DEFAULT_CONVERT = RELEASE / "flare-convert"
DEFAULT_MODEL = CACHE / "models" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
BENCHMARKS_MD = REPO_ROOT / "scripts" / "BENCHMARKS.md"

PY_STATS = """\
import sys
import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
reader = GGUFReader(sys.argv[1])
for t in reader.tensors:
    a = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
    nan = int(np.count_nonzero(np.isnan(a)))
    inf = int(np.count_nonzero(np.isinf(a)))
    if a.size:
        lo, hi, mean, std = a.min(), a.max(), a.mean(), a.std()
"""

PY_DEQUANT = """\
import os
import sys
import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.numpy import save_file
reader = GGUFReader(sys.argv[1])
out = sys.argv[2]
os.makedirs(out, exist_ok=True)
tensors = {}
for t in reader.tensors:
    tensors[t.name] = np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
save_file(tensors, os.path.join(out, "model.safetensors"))
"""


def find_gguf_dump(override):
    if override:
        p = Path(override).expanduser().resolve()
        if not executable(p):
            die(f"--gguf-dump {p} is not an executable file")
        return p
    beside = Path(sys.executable).parent / "gguf-dump"
    if executable(beside):
        return beside
    found = shutil.which("gguf-dump")
    if not found:
        die("gguf-dump not found; install gguf-py:  pip install gguf==0.19.0\n"
            "(or pass --gguf-dump PATH)")
    return Path(found)


def check_stats_json(data):
    """Problems in `flare-inspect --stats --json` output, or None."""
    lines = [ln for ln in data.decode("utf-8", errors="replace").splitlines() if ln.strip()]
    if not lines:
        return "printed nothing"
    for ln in lines:
        try:
            obj = json.loads(ln)
        except ValueError:
            return f"printed a line that is not JSON: {ln[:120]!r}"
        if isinstance(obj, dict) and obj.get("error"):
            return f"reported an error: {json.dumps(obj['error'])[:300]}"
    return None


def clear_dir(path):
    if path.exists():
        shutil.rmtree(path)


def main():
    ap = argparse.ArgumentParser(
        description="Compare Flare's GGUF tools with gguf-py on SmolLM2 (wall time, peak RSS).")
    ap.add_argument("--flare-inspect", type=Path, default=DEFAULT_INSPECT,
                    help=f"flare-inspect binary (default: {DEFAULT_INSPECT})")
    ap.add_argument("--flare-convert", type=Path, default=DEFAULT_CONVERT,
                    help=f"flare-convert binary (default: {DEFAULT_CONVERT}); "
                         f"the dequantize workload is skipped if it is missing")
    ap.add_argument("--gguf-dump", help="gguf-dump script (default: next to this Python, else PATH)")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                    help=f"GGUF file (default: {DEFAULT_MODEL})")
    ap.add_argument("--out-dir", type=Path,
                    help="where the dequantize workload writes (default: a temporary folder)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per command (default 3)")
    ap.add_argument("--json", type=Path, metavar="OUT", help="write raw results as JSON")
    ap.add_argument("--append", action="store_true",
                    help="append the report, dated, to scripts/BENCHMARKS.md")
    ap.add_argument("--python-only", action="store_true",
                    help="run only the Python side (tests this script without a Flare build)")
    args = ap.parse_args()

    if args.repeat < 1:
        die("--repeat must be >= 1")
    if args.append and args.python_only:
        die("--append needs the Flare side; drop --python-only")

    inspect = args.flare_inspect.expanduser().resolve()
    convert = args.flare_convert.expanduser().resolve()
    build_hint = "Build it first:  swift build -c release"
    if not args.python_only and not executable(inspect):
        die(f"flare-inspect binary not found at {inspect}.\n{build_hint} --product flare-inspect\n"
            f"(or pass --flare-inspect PATH)")
    have_convert = executable(convert)
    model = args.model.expanduser().resolve()
    if not model.is_file():
        die(f"model not found at {model}.\nFetch it first:  scripts/fetch-models.sh\n"
            f"(or pass --model PATH)")
    with open(model, "rb") as f:
        if f.read(4) != b"GGUF":
            die(f"{model} is not a GGUF file")
    gguf_dump = find_gguf_dump(args.gguf_dump)

    info = machine_info(['gguf', 'numpy', 'safetensors'])
    true_bin = shutil.which("true") or "/bin/true"
    floor_kib = max(run_once([true_bin])[1] for _ in range(3))

    own_tmp = None
    if args.out_dir:
        out_root = args.out_dir.expanduser().resolve()
        out_root.mkdir(parents=True, exist_ok=True)
    else:
        own_tmp = tempfile.mkdtemp(prefix="flare-bench-gguf-")
        out_root = Path(own_tmp)
    flare_out = out_root / "flare-convert-out"
    py_out = out_root / "gguf-py-out"

    sides = ["python"] if args.python_only else ["flare", "python"]
    stale_hint = ("If flare-inspect reports a safetensors error on this GGUF, the release "
                  "build predates GGUF support; rebuild it:  swift build -c release")
    workloads = [
        {"name": "listing",
         "flare": [str(inspect), str(model)],
         "python": [str(gguf_dump), str(model)],
         "python_shown": [str(gguf_dump), str(model)]},
        {"name": "stats",
         "flare": [str(inspect), "--stats", "--json", "--quiet", str(model)],
         "python": [sys.executable, "-c", PY_STATS, str(model)],
         "python_shown": [sys.executable, "-c", "<stats script>", str(model)]},
        {"name": "dequantize",
         "flare": [str(convert), str(model), str(flare_out), "--outtype", "f32", "--force"],
         "python": [sys.executable, "-c", PY_DEQUANT, str(model), str(py_out)],
         "python_shown": [sys.executable, "-c", "<dequantize script>", str(model), str(py_out)]},
    ]

    notes = []
    results = []
    try:
        for w in workloads:
            wsides = list(sides)
            if w["name"] == "dequantize" and "flare" in wsides and not have_convert:
                notes.append(f"dequantize skipped: no flare-convert binary at {convert} "
                             f"(build it: swift build -c release --product flare-convert)")
                print(f"  skipped: dequantize (no {convert})", file=sys.stderr, flush=True)
                results.append({"workload": w["name"], "skipped": True,
                                "flare": None, "python": None,
                                "wall_ratio": None, "rss_ratio": None})
                continue
            runs = {s: {"wall_s": [], "maxrss_kib": []} for s in wsides}
            for s in wsides:  # warm-up, untimed, with output checks
                hint = stale_hint if s == "flare" and w["name"] != "dequantize" else None
                if s == "flare" and w["name"] == "stats":
                    with tempfile.TemporaryFile() as out:
                        run_once(w[s], stdout=out, hint=hint)
                        out.seek(0)
                        problem = check_stats_json(out.read())
                    if problem:
                        die(f"`flare-inspect --stats --json` {problem}\n{stale_hint}")
                else:
                    run_once(w[s], hint=hint)
                if w["name"] == "dequantize":
                    target = flare_out if s == "flare" else py_out
                    produced = target / "model.safetensors"
                    if not produced.is_file():
                        # flare-convert may shard; accept any .safetensors in the folder
                        if not any(target.glob("*.safetensors")):
                            die(f"{s} dequantize left no .safetensors in {target}")
            for _ in range(args.repeat):
                for s in wsides:
                    wall, rss = run_once(w[s])
                    runs[s]["wall_s"].append(wall)
                    runs[s]["maxrss_kib"].append(rss)
            row = {"workload": w["name"], "skipped": False}
            for s in ("flare", "python"):
                if s in runs:
                    row[s] = {"cmd": w[s] if s == "flare" else w["python_shown"],
                              **runs[s],
                              "median_wall_s": statistics.median(runs[s]["wall_s"]),
                              "max_rss_kib": max(runs[s]["maxrss_kib"])}
                else:
                    row[s] = None
            fl, py = row["flare"], row["python"]
            row["wall_ratio"] = ratio(py["median_wall_s"], fl and fl["median_wall_s"])
            row["rss_ratio"] = ratio(py["max_rss_kib"], fl and fl["max_rss_kib"])
            results.append(row)
            print(f"  done: {w['name']}", file=sys.stderr, flush=True)
    finally:
        clear_dir(flare_out)
        clear_dir(py_out)
        if own_tmp:
            shutil.rmtree(own_tmp, ignore_errors=True)

    def rss_cell(side):
        if side is None:
            return "—"
        kib = side["max_rss_kib"]
        return f"{kib / 1024:.1f}" + ("*" if kib <= floor_kib * 1.02 else "")

    date = datetime.date.today().isoformat()
    size_mb = model.stat().st_size / 1e6
    report = [
        f"## Flare vs gguf-py on the SmolLM2 GGUF ({date})",
        "",
        f"- machine: nproc={info['nproc']}, CPU: {info['cpu_model']}, "
        f"RAM: {fmt(info['mem_total_mib'], 'd')} MiB, kernel {info['kernel']}",
        f"- Python {info['python']} ({info['python_executable']}), gguf {info['gguf']}, "
        f"numpy {info['numpy']}, safetensors {info['safetensors']}",
        "- thread env (left as is): " +
        ", ".join(f"{k}={v if v is not None else 'unset'}" for k, v in info["env"].items()),
        f"- flare-inspect: {'skipped (--python-only)' if args.python_only else inspect}",
        f"- flare-convert: {'skipped (--python-only)' if args.python_only else (convert if have_convert else 'missing')}",
        f"- gguf-dump: {gguf_dump}",
        f"- file: {model} ({size_mb:.1f} MB)",
        f"- method: each command is a fresh subprocess; 1 untimed warm-up run per command "
        f"first (both sides then read from the page cache); {args.repeat} timed runs, "
        f"Flare/Python alternating; median wall time, max peak RSS (ru_maxrss via wait4)",
        f"- RSS floor (ru_maxrss of `true` spawned by this script): "
        f"{floor_kib / 1024:.1f} MiB; values marked * are at that floor",
        "",
        "| workload | Flare command | Python command | Flare wall s | Python wall s "
        "| wall ratio (Py/Flare) | Flare peak RSS MiB | Python peak RSS MiB | RSS ratio (Py/Flare) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    labels = {
        "listing": ("`flare-inspect FILE`", "`gguf-dump FILE`"),
        "stats": ("`flare-inspect --stats --json --quiet FILE`",
                  "GGUFReader + `gguf.quants.dequantize` + numpy stats"),
        "dequantize": ("`flare-convert FILE OUT --outtype f32 --force`",
                       "GGUFReader + `gguf.quants.dequantize` + `safetensors.numpy.save_file`"),
    }
    for r in results:
        fl_label, py_label = labels[r["workload"]]
        if r["skipped"]:
            report.append(f"| {r['workload']} | {fl_label} | {py_label} | skipped | skipped "
                          f"| — | — | — | — |")
            continue
        fl, py = r["flare"], r["python"]
        report.append(
            f"| {r['workload']} | {fl_label} | {py_label} "
            f"| {fmt(fl and fl['median_wall_s'], '.3f')} | {py['median_wall_s']:.3f} "
            f"| {fmt(r['wall_ratio'], '.2f')} | {rss_cell(fl)} | {rss_cell(py)} "
            f"| {fmt(r['rss_ratio'], '.2f')} |")
    if notes:
        report.append("")
        report.extend(f"Note: {n}" for n in notes)

    print("\n".join(report))

    if args.append:
        existing = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# Benchmarks\n"
        sep = "" if existing.endswith("\n\n") else ("\n" if existing.endswith("\n") else "\n\n")
        with open(BENCHMARKS_MD, "a") as f:
            f.write(sep + "\n".join(report) + "\n")
        print(f"\nappended to {BENCHMARKS_MD}")

    if args.json:
        out = {
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "machine": info,
            "flare_inspect": None if args.python_only else str(inspect),
            "flare_convert": None if args.python_only or not have_convert else str(convert),
            "gguf_dump": str(gguf_dump),
            "python_only": args.python_only,
            "repeat": args.repeat,
            "warmup_runs": 1,
            "rss_floor_kib": floor_kib,
            "file": {"path": str(model), "bytes": model.stat().st_size},
            "python_scripts": {"stats": PY_STATS, "dequantize": PY_DEQUANT},
            "notes": notes,
            "results": results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"\nraw results: {args.json}")


if __name__ == "__main__":
    main()

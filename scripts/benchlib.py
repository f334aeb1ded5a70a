"""Shared pieces of Flare's benchmark scripts (bench-inspect.py, bench-gguf.py, bench-merge.py):
running a command as its own process while measuring wall time and peak RSS, describing the
machine, and formatting numbers."""
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time


def die(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def executable(path):
    return path.is_file() and os.access(path, os.X_OK)


def run_once(cmd, stdout=subprocess.DEVNULL, hint=None):
    """Run cmd; return (wall seconds, ru_maxrss KiB). Exits on failure, with the stderr tail."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read()[-3000:].decode(errors="replace")
            die(f"command failed with exit code {proc.returncode}: {' '.join(map(str, cmd))}\n"
                f"{tail}" + (f"\n{hint}" if hint else ""))
    return wall, usage.ru_maxrss


def package_version(pkg):
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(packages):
    """CPU count and model, memory, kernel, Python, the versions of `packages`, thread settings."""
    try:
        nproc = int(subprocess.run(["nproc"], capture_output=True, text=True,
                                   check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError, ValueError):
        nproc = len(os.sched_getaffinity(0))
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) // 1024
                    break
    except OSError:
        pass
    info = {
        "nproc": nproc,
        "cpu_model": cpu,
        "mem_total_mib": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_executable": os.path.basename(sys.executable),
    }
    info.update({pkg: package_version(pkg) for pkg in packages})
    info["env"] = {k: os.environ.get(k) for k in
                   ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return info


def fmt(x, spec):
    return "—" if x is None else format(x, spec)


def ratio(py, fl):
    return py / fl if (py is not None and fl) else None


# The llama-cpp-python side of the decode/prefill benchmarks (bench-eval.py, bench-quant.py);
# argv: model threads prompt-tokens gen-tokens repeat; prints one JSON line: load_s, prefill_s,
# decode_s (best after a warm-up) and rss_mib.
LLAMA_CPP = r"""
import json, sys, time, resource
import numpy as np
import llama_cpp
from llama_cpp import Llama
path, threads, n_prompt, n_gen, repeat = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
t0 = time.perf_counter()
llm = Llama(model_path=path, n_ctx=n_prompt + n_gen + 8, n_batch=n_prompt, n_ubatch=n_prompt,
            n_threads=threads, n_threads_batch=threads, verbose=False, logits_all=False)
load = time.perf_counter() - t0
vocab = llm.n_vocab()
prompt = [(i * 7919 + 13) % vocab for i in range(n_prompt)]
best_p = best_d = float("inf")
for run in range(repeat + 1):
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    t1 = time.perf_counter()
    for _ in range(n_gen):
        # The last computed row of logits, read through the C API (no copy of all positions).
        row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))
        llm.eval([int(row.argmax())])
    t2 = time.perf_counter()
    if run > 0:
        best_p, best_d = min(best_p, t1 - t0), min(best_d, t2 - t1)
print(json.dumps({"load_s": load, "prefill_s": best_p, "decode_s": best_d,
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def flare_bench(cmd):
    """Run a `flare-eval bench --json` command; its JSON result plus rss_mib (wait4)."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        out.seek(0)
        text = out.read().decode()
    if status != 0:
        die(f"flare-eval bench failed: {' '.join(map(str, cmd))}")
    result = json.loads(text.strip().splitlines()[-1])
    result["rss_mib"] = usage.ru_maxrss / 1024
    # Where the model lives on the measuring machine says nothing about the result.
    if "model" in result:
        result["model"] = os.path.basename(str(result["model"]))
    return result

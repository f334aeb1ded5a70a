"""Shared pieces of Flare's benchmark scripts (bench-inspect.py, bench-gguf.py, bench-merge.py):
running a command as its own process while measuring wall time and peak RSS, describing the
machine, and formatting numbers."""
import importlib.metadata
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
        "python_executable": sys.executable,
    }
    info.update({pkg: package_version(pkg) for pkg in packages})
    info["env"] = {k: os.environ.get(k) for k in
                   ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return info


def fmt(x, spec):
    return "—" if x is None else format(x, spec)


def ratio(py, fl):
    return py / fl if (py is not None and fl) else None

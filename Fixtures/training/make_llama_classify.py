#!/usr/bin/env python3
"""make_llama_classify.py: PEFT and transformers as the oracles of a Llama classifier that
flare-train trains (LlamaForSequenceClassification: the `score` head on the last real token).

Run from the repository root after fetching the real models (`make models`; the F32 HF folder is
~/.cache/flare/models/smollm2-hf) and building Flare (`swift build`, or `swift build -c release`,
whichever is newer is used):

    python3 Fixtures/training/make_llama_classify.py

Needs CPU torch, transformers, peft and scikit-learn. Uses the sentiment examples of
Fixtures/training/encoder-run/ (train.jsonl: 30, test.jsonl: 12, labels negative/neutral/positive)
and writes Fixtures/training/llama-cls/oracle.json:

1. Runs the built flare-train with FLARE_TRAIN_ARGUMENTS (SmolLM2-135M, classification, LoRA r 4,
   alpha 8 on q_proj/v_proj, a fresh score head, 6 steps of 4 examples) into a temporary folder.
2. Loads the adapter it wrote with PeftModel.from_pretrained on
   AutoModelForSequenceClassification (3 labels; pad_token_id 2 from config.json), eval mode, no
   warning about keys allowed, and records the logits of test.jsonl's examples (text and
   text_pair tokenized by transformers' tokenizer, truncated longest-first to 32 tokens, batches
   of 4 padded on the right with the pad token, as `flare-eval classify --batch-size 4` batches
   them), the predictions, accuracy, macro-F1 and confusion matrix (scikit-learn), the mean
   cross-entropy, and the CRC-32 of the adapter_model.safetensors they come from.
3. Runs the built flare-merge --verify on that adapter, loads the merged folder with transformers
   alone (AutoModelForSequenceClassification, no missing or unexpected weights) and records its
   logits of the same examples and its architectures.
"""

import json
import os
import subprocess
import sys
import tempfile
import warnings
import zlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.join(ROOT, "Fixtures", "training", "llama-cls")
DATA = os.path.join(ROOT, "Fixtures", "training", "encoder-run")
CACHE = os.environ.get("FLARE_CACHE") or os.path.expanduser("~/.cache/flare")
MODEL = os.path.join(CACHE, "models", "smollm2-hf")
BATCH = 4
MAX_LENGTH = 32
FLARE_TRAIN_ARGUMENTS = [
    "lora", "--model", "{model}", "--task", "classification", "--data", "{data}",
    "--output", "{output}", "--target-modules", "q_proj,v_proj", "--rank", "4", "--alpha", "8",
    "--max-steps", "6", "--batch-size", "4", "--lr", "1e-3", "--schedule", "constant",
    "--seed", "5", "--max-length", str(MAX_LENGTH), "--no-shuffle", "--quiet", "--force",
]
FLARE_MERGE_ARGUMENTS = [
    "--base", "{model}", "--adapter", "{adapter}", "--output", "{output}", "--verify", "--json",
    "--force", "--quiet",
]
TOLERANCE = {"logits_absolute": 1e-3, "loss_absolute": 1e-5}

torch.set_num_threads(1)

# The same binary lookup and argument filling as the encoder run's script.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_encoder_trajectory import fill, flare_binary  # noqa: E402


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def logits_of(model, tokenizer, examples):
    rows = []
    with torch.no_grad():
        for start in range(0, len(examples), BATCH):
            chunk = examples[start : start + BATCH]
            ids = [
                tokenizer(row["text"], row.get("text_pair"), truncation="longest_first", max_length=MAX_LENGTH)["input_ids"]
                for row in chunk
            ]
            longest = max(len(i) for i in ids)
            pad = model.config.pad_token_id
            input_ids = torch.tensor([i + [pad] * (longest - len(i)) for i in ids])
            mask = torch.tensor([[1] * len(i) + [0] * (longest - len(i)) for i in ids])
            rows += model(input_ids=input_ids, attention_mask=mask).logits.tolist()
    return rows


def metrics(logits, truth):
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    values = torch.tensor(logits, dtype=torch.float64)
    predictions = values.argmax(dim=1).tolist()
    top2 = values.topk(2, dim=1).values
    return {
        "logits": logits,
        "predictions": predictions,
        "accuracy": float(accuracy_score(truth, predictions)),
        "macro_f1": float(f1_score(truth, predictions, average="macro")),
        "confusion": confusion_matrix(truth, predictions, labels=[0, 1, 2]).tolist(),
        "loss": float(torch.nn.functional.cross_entropy(values, torch.tensor(truth))),
        "smallest_top2_margin": float((top2[:, 0] - top2[:, 1]).min()),
    }


def main():
    import peft
    import transformers
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not os.path.isdir(MODEL):
        sys.exit(f"missing {MODEL}: run `make models`")
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    test = read_jsonl(os.path.join(DATA, "test.jsonl"))
    with tempfile.TemporaryDirectory() as scratch:
        adapter = os.path.join(scratch, "adapter")
        binary = flare_binary()
        arguments = fill(FLARE_TRAIN_ARGUMENTS, model=MODEL, data=os.path.join(DATA, "train.jsonl"), output=adapter)
        subprocess.run([binary] + arguments, check=True)
        labels = json.load(open(os.path.join(adapter, "flare_labels.json")))["labels"]
        truth = [labels.index(row["label"]) for row in test]
        with open(os.path.join(adapter, "adapter_model.safetensors"), "rb") as f:
            crc = zlib.crc32(f.read())

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            base = AutoModelForSequenceClassification.from_pretrained(MODEL, num_labels=3, dtype=torch.float32)
            model = PeftModel.from_pretrained(base, adapter)
        # PEFT warns about keys it could not place; library deprecation notices are not about
        # the adapter.
        about_keys = [str(w.message) for w in caught if "key" in str(w.message).lower()]
        assert not about_keys, about_keys
        model.eval()
        assert model.config.pad_token_id == 2
        peft_result = metrics(logits_of(model, tokenizer, test), truth)

        merged = os.path.join(scratch, "merged")
        result = subprocess.run(
            [flare_binary("flare-merge")] + fill(FLARE_MERGE_ARGUMENTS, model=MODEL, adapter=adapter, output=merged),
            check=True, capture_output=True, text=True,
        )
        verify = json.loads(result.stdout)
        loaded, info = AutoModelForSequenceClassification.from_pretrained(merged, dtype=torch.float32, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        loaded.eval()
        merged_result = metrics(logits_of(loaded, tokenizer, test), truth)
        architectures = loaded.config.architectures

    worst_merged = max(abs(a - b) for ra, rb in zip(peft_result["logits"], merged_result["logits"]) for a, b in zip(ra, rb))
    doc = {
        "oracle": "PeftModel.from_pretrained on transformers' LlamaForSequenceClassification (float32, eval) with the adapter flare-train wrote; transformers alone on the folder flare-merge wrote",
        "model": "smollm2-hf (SmolLM2-135M-Instruct, F32 safetensors)",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "flare_train_arguments": FLARE_TRAIN_ARGUMENTS,
        "flare_merge_arguments": FLARE_MERGE_ARGUMENTS,
        "labels": labels,
        "truth": truth,
        "flare_adapter_crc32": crc,
        "test_peft_with_flare_adapter": peft_result,
        "merged": {"architectures": architectures, "verify_max_abs_difference": verify.get("forward", {}).get("max_abs_diff"), **merged_result},
        "merged_vs_peft_logits_max_abs": worst_merged,
        "tolerance": TOLERANCE,
    }
    os.makedirs(HERE, exist_ok=True)
    with open(os.path.join(HERE, "oracle.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print("accuracy", peft_result["accuracy"], "merged vs peft", worst_merged, "crc", crc)


if __name__ == "__main__":
    main()

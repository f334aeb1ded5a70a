#!/usr/bin/env python3
"""Does PEFT load a classifier adapter written by flare-train, and does it agree with
`flare-eval classify`? Loads the base with transformers' AutoModelForSequenceClassification,
the adapter with PeftModel.from_pretrained (unchanged folder), runs the JSONL examples, and
compares accuracy and per-example logits with the `flare-eval classify --json` output.

Usage: python3 scripts/check-classifier.py MODEL ADAPTER DATA.jsonl FLARE_CLASSIFY.json
"""
import json
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

model_dir, adapter, data, flare_json = sys.argv[1:5]
labels = json.load(open(f"{adapter}/flare_labels.json"))["labels"]
tok = AutoTokenizer.from_pretrained(model_dir)
base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(labels),
                                                          dtype=torch.float32)
model = PeftModel.from_pretrained(base, adapter).eval()
rows = [json.loads(line) for line in open(data, encoding="utf-8") if line.strip()]
flare = json.load(open(flare_json))
torch.set_num_threads(2)
correct, worst = 0, 0.0
with torch.no_grad():
    for i in range(0, len(rows), 32):
        chunk = rows[i:i + 32]
        enc = tok([r["text"] for r in chunk], truncation=True, max_length=128, padding=True,
                  return_tensors="pt")
        logits = model(**enc).logits
        for j, r in enumerate(chunk):
            pred = int(logits[j].argmax())
            correct += labels[pred] == r["label"]
            theirs = flare["predictions"][i + j].get("logits")
            if theirs is not None:
                worst = max(worst, float((logits[j] - torch.tensor(theirs)).abs().max()))
acc = correct / len(rows)
print(f"PEFT + transformers: accuracy {acc:.4f} on {len(rows)} examples; "
      f"flare-eval classify: {flare['accuracy']:.4f}; max |logit difference| {worst:.2e}")
sys.exit(0 if abs(acc - flare["accuracy"]) < 0.005 and worst < 1e-3 else 1)

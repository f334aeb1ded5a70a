#!/usr/bin/env python3
"""Golden training trajectories for Flare's Trainer, from PyTorch autograd.

The model is the test double of Tests/FlareTrainTests/LinearSoftmaxModel.swift, written again here in
torch (an embedding table E and linear layers, all frozen, with LoRA on one linear layer):

  causal LM:      logits_t = W x_t + s * B (A x_t),  x_t = E[token_t],  CE against label_{t+1}
                  (labels -100 are skipped: prompt masks and padding)
  classification: h = mean of E[token] over the row's real tokens, z = W h + s * B (A h),
                  logits = H z + c, CE against the class (H and c trained in full: PEFT's
                  modules_to_save head; c is a bias and gets no weight decay)

Training follows transformers' Trainer (>= 4.46) exactly: the examples in file order, micro-batches
of `batch`, `accum` micro-batches per optimizer step, a shorter last step at the end of an epoch;
the loss of a step is the sum of its cross-entropies over N = its label tokens (causal LM) or
examples (classification), backpropagated per micro-batch as loss_sum / N; then
clip_grad_norm_, AdamW (weight decay on everything but names containing "bias"), and LambdaLR with
transformers' get_cosine_schedule_with_warmup / get_linear_schedule_with_warmup.

Recorded per step: the loss, the learning rate the step used, the gradient norm before clipping;
and every trainable tensor at the start and at the end.

Run from the repository root:  python3 Fixtures/training/make_trainer_golden.py
Writes Fixtures/training/trainer-golden.json (deterministic for fixed library versions).
"""
import json

import numpy as np
import torch
import transformers
from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

torch.set_num_threads(1)
V, D, C, R = 11, 6, 3, 2


def floats(t):
    return [float(x) for x in t.detach().reshape(-1).tolist()]


def make_case(rng, task):
    E = rng.normal(0, 1, size=(V, D)).astype(np.float32)
    out = V if task == "causal-lm" else D
    W = rng.normal(0, 0.4, size=(out, D)).astype(np.float32)
    A = rng.uniform(-0.4, 0.4, size=(R, D)).astype(np.float32)
    B = rng.normal(0, 0.3, size=(out, R)).astype(np.float32)
    examples = []
    n = 13 if task == "causal-lm" else 9
    for i in range(n):
        length = int(rng.integers(2, 8))
        tokens = [int(x) for x in rng.integers(0, V, size=length)]
        if task == "causal-lm":
            labels = list(tokens)
            prompt = int(rng.integers(0, length - 1)) if i % 3 == 0 else 0
            for j in range(prompt):
                labels[j] = -100
            examples.append({"tokens": tokens, "labels": labels})
        else:
            examples.append({"tokens": tokens, "class": int(rng.integers(0, C))})
    case = {"E": E, "W": W, "A": A, "B": B, "examples": examples}
    if task == "classification":
        case["H"] = rng.normal(0, 0.5, size=(C, D)).astype(np.float32)
        case["c"] = rng.normal(0, 0.1, size=(C,)).astype(np.float32)
    return case


def run(task, case, cfg):
    E = torch.tensor(case["E"])
    W = torch.tensor(case["W"])
    scale = cfg["alpha"] / R
    params = {
        "A": torch.nn.Parameter(torch.tensor(case["A"])),
        "B": torch.nn.Parameter(torch.tensor(case["B"])),
    }
    if task == "classification":
        params["H"] = torch.nn.Parameter(torch.tensor(case["H"]))
        params["c"] = torch.nn.Parameter(torch.tensor(case["c"]))
    names = {"A": "lora_A.weight", "B": "lora_B.weight", "H": "classifier.weight", "c": "classifier.bias"}
    decay = [p for k, p in params.items() if "bias" not in names[k]]
    no_decay = [p for k, p in params.items() if "bias" in names[k]]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg["lr"])
    examples = case["examples"]
    batch, accum = cfg["batch"], cfg["accum"]
    micro = [examples[i:i + batch] for i in range(0, len(examples), batch)]
    steps_per_epoch = -(-len(micro) // accum)
    total = steps_per_epoch * cfg["epochs"]
    make = get_cosine_schedule_with_warmup if cfg["schedule"] == "cosine" else get_linear_schedule_with_warmup
    scheduler = make(optimizer, cfg["warmup"], total)

    def micro_loss(rows):
        terms = []
        for row in rows:
            x = E[torch.tensor(row["tokens"])]
            if task == "causal-lm":
                z = x @ W.T + scale * (x @ params["A"].T) @ params["B"].T
                for t in range(len(row["tokens"]) - 1):
                    if row["labels"][t + 1] != -100:
                        terms.append(torch.nn.functional.cross_entropy(
                            z[t:t + 1], torch.tensor([row["labels"][t + 1]]), reduction="sum"))
            else:
                h = x.mean(dim=0, keepdim=True)
                z = h @ W.T + scale * (h @ params["A"].T) @ params["B"].T
                logits = z @ params["H"].T + params["c"]
                terms.append(torch.nn.functional.cross_entropy(
                    logits, torch.tensor([row["class"]]), reduction="sum"))
        return torch.stack(terms).sum(), len(terms)

    def count(rows):
        if task == "causal-lm":
            return sum(sum(1 for y in r["labels"][1:] if y != -100) for r in rows)
        return len(rows)

    steps = []
    for epoch in range(cfg["epochs"]):
        for s in range(steps_per_epoch):
            group = micro[s * accum:(s + 1) * accum]
            n = sum(count(rows) for rows in group)
            optimizer.zero_grad()
            total_loss = 0.0
            for rows in group:
                loss_sum, _ = micro_loss(rows)
                (loss_sum / n).backward()
                total_loss += float(loss_sum.detach())
            norm = torch.nn.utils.clip_grad_norm_(list(params.values()), cfg["max_grad_norm"])
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            steps.append({"loss": total_loss / n, "lr": lr, "grad_norm": float(norm)})
    final = {k: floats(p) for k, p in params.items()}
    return steps, final, steps_per_epoch, total


def main():
    rng = np.random.default_rng(20261204)
    out = {"versions": {"torch": torch.__version__, "transformers": transformers.__version__},
           "vocab": V, "dim": D, "classes": C, "rank": R, "cases": []}
    configs = {
        "causal-lm": {"alpha": 4.0, "lr": 0.05, "weight_decay": 0.05, "max_grad_norm": 0.5, "batch": 3,
                      "accum": 2, "epochs": 2, "warmup": 2, "schedule": "cosine"},
        "classification": {"alpha": 2.0, "lr": 0.03, "weight_decay": 0.1, "max_grad_norm": 1.0, "batch": 2,
                           "accum": 2, "epochs": 2, "warmup": 1, "schedule": "linear"},
    }
    for task, cfg in configs.items():
        case = make_case(rng, task)
        steps, final, steps_per_epoch, total = run(task, case, cfg)
        out["cases"].append({
            "task": task, "config": cfg, "steps_per_epoch": steps_per_epoch, "total_steps": total,
            "frozen": {k: [float(x) for x in case[k].reshape(-1)] for k in ["E", "W"]},
            "init": {k: [float(x) for x in case[k].reshape(-1)] for k in ["A", "B", "H", "c"] if k in case},
            "examples": case["examples"], "steps": steps, "final": final,
        })
    with open("Fixtures/training/trainer-golden.json", "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Golden trajectories for Flare's AdamW, learning-rate schedules and gradient clipping.

Oracle: torch.optim.AdamW (decoupled weight decay, bias correction, eps outside the square root),
torch.optim.lr_scheduler.LambdaLR driven by transformers' get_{constant,linear,cosine}_schedule_with_warmup,
and torch.nn.utils.clip_grad_norm_ (one global L2 norm, scale max/(norm+1e-6) when it exceeds max).

Three small tensors get a fixed, seeded sequence of gradients. Per run, after every optimizer step we
record the learning rate the step used, the gradient norm clip_grad_norm_ returned and every parameter.
Also recorded: the first outputs of SplitMix64 (Vigna's reference splitmix64.c) for two seeds, and the
bound of torch's kaiming_uniform_(a=sqrt(5)) (PEFT's lora_A init) for a few fan-ins.
A parameter whose name ends in "bias" gets no weight decay (a second parameter group), as transformers'
Trainer does. Several steps have gradients large enough to be clipped.

Run from the repository root:  python3 Fixtures/training/make_optimizer_golden.py
Writes Fixtures/training/optimizer-golden.json (deterministic for fixed library versions).
"""
import json
import math

import numpy as np
import torch
import transformers
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

torch.set_num_threads(1)
STEPS = 10


def f32list(t):
    return [float(x) for x in t.detach().reshape(-1).tolist()]


def make_data(seed):
    rng = np.random.default_rng(seed)
    shapes = {"layer.lora_A.weight": [3, 4], "layer.lora_B.weight": [5, 3], "head.bias": [5]}
    init = {n: rng.normal(0, 0.5, size=s).astype(np.float32) for n, s in shapes.items()}
    grads = []
    for step in range(STEPS):
        # Every third step is large enough to be clipped (global norm well above 1).
        scale = 4.0 if step % 3 == 1 else 0.2
        grads.append({n: (rng.normal(0, scale, size=s)).astype(np.float32) for n, s in shapes.items()})
    return shapes, init, grads


def run(schedule, warmup, lr, weight_decay, max_norm, betas, eps, shapes, init, grads):
    params = {n: torch.nn.Parameter(torch.tensor(init[n])) for n in shapes}
    decay = [p for n, p in params.items() if not n.endswith("bias")]
    no_decay = [p for n, p in params.items() if n.endswith("bias")]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=betas, eps=eps)
    if schedule == "constant":
        scheduler = get_constant_schedule_with_warmup(optimizer, warmup)
    elif schedule == "linear":
        scheduler = get_linear_schedule_with_warmup(optimizer, warmup, STEPS)
    else:
        scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, STEPS)
    steps = []
    for step in range(STEPS):
        for n, p in params.items():
            p.grad = torch.tensor(grads[step][n])
        norm = torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm)
        used_lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        steps.append({"lr": used_lr, "grad_norm": float(norm), "params": {n: f32list(p) for n, p in params.items()}})
    return steps


def splitmix64(seed, count):
    """Vigna's reference splitmix64.c, with Python integers masked to 64 bits."""
    mask = (1 << 64) - 1
    state, out = seed, []
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(z ^ (z >> 31))
    return out


def kaiming_bound(fan_in):
    """The bound of torch.nn.init.kaiming_uniform_(w, a=sqrt(5)) (PEFT's lora_A init)."""
    gain = torch.nn.init.calculate_gain("leaky_relu", math.sqrt(5))
    return gain * math.sqrt(3.0 / fan_in)


def main():
    shapes, init, grads = make_data(20261203)
    runs = []
    configs = [
        # name, schedule, warmup, lr, weight decay, max grad norm, betas, eps
        ("linear-warmup-decay", "linear", 3, 2e-2, 0.1, 1.0, (0.9, 0.999), 1e-8),
        ("cosine-warmup", "cosine", 2, 5e-3, 0.0, 1.0, (0.9, 0.999), 1e-8),
        ("constant-no-warmup", "constant", 0, 1e-3, 0.01, 0.5, (0.8, 0.99), 1e-6),
        ("constant-warmup-big-eps", "constant", 4, 1e-1, 0.0, 100.0, (0.9, 0.999), 1e-3),
    ]
    for name, schedule, warmup, lr, wd, max_norm, betas, eps in configs:
        runs.append({
            "name": name, "schedule": schedule, "warmup": warmup, "total": STEPS, "lr": lr,
            "weight_decay": wd, "max_grad_norm": max_norm, "beta1": betas[0], "beta2": betas[1],
            "eps": eps, "steps": run(schedule, warmup, lr, wd, max_norm, betas, eps, shapes, init, grads),
        })
    out = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "splitmix64": {str(seed): [str(x) for x in splitmix64(seed, 5)] for seed in (0, 1234567)},
        "kaiming_bounds": {str(n): kaiming_bound(n) for n in (1, 16, 576, 1536)},
        "shapes": shapes,
        "init": {n: [float(x) for x in v.reshape(-1)] for n, v in init.items()},
        "grads": [{n: [float(x) for x in v.reshape(-1)] for n, v in g.items()} for g in grads],
        "runs": runs,
    }
    with open("Fixtures/training/optimizer-golden.json", "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()

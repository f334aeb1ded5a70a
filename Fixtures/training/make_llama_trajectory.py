#!/usr/bin/env python3
"""make_llama_trajectory.py: a 20-step causal-LM LoRA run of SmolLM2-135M in PyTorch + PEFT, the
oracle of flare-train's run from the same start (Tests/FlareTrainTests/LlamaRunTests.swift).

Run from the repository root after `make models` (the F32 folder $FLARE_CACHE/models/smollm2-hf is
made by flare-convert from the SmolLM2 GGUF; the tests make it on first use):

    python3 Fixtures/training/make_llama_trajectory.py

Needs CPU torch, transformers, peft, numpy and safetensors. Writes Fixtures/training/llama-run/:

- train.jsonl: 8 short WEB verses ({"text"}) from Fixtures/data/bible/lm-train.jsonl, 8 to 19
  tokens (kept short: the test runs the debug build), so --max-length 32 truncates none.
- init/: the starting adapter, PEFT's save_pretrained of LoraConfig(CAUSAL_LM, r 4, alpha 8,
  q_proj and v_proj, lora_dropout 0) on LlamaForCausalLM, with B drawn N(0, 0.01) (PEFT's zero B
  would make the first step's A gradient zero) and every value rounded to float16 (exact there; the
  file is stored as F16 to halve it). target_modules sorted, base_model_name_or_path the hub id.
- trajectory.json: flare-train's arguments (FLARE_TRAIN_ARGUMENTS), the token ids, per step the
  loss, learning rate and gradient norm before clipping; the tolerances.
- trajectory.safetensors: the final LoRA tensors of the PyTorch run (F32, PEFT's names).

The PyTorch run is what transformers' Trainer (>= 4.46) does with these arguments: examples in
file order, micro-batches of 1 (the padding code is checked by the gradient tests), EOS
appended to each text as flare-train does, 2 micro-batches per optimizer step (4 steps an epoch),
loss = sum of the step's token cross-entropies / the step's label-token count, backpropagated per
micro-batch; clip_grad_norm_(1.0); AdamW(lr 1e-3, weight decay 0.01 on non-bias parameters,
betas 0.9/0.999, eps 1e-8); get_cosine_schedule_with_warmup(3 warm-up steps, 20 steps).
"""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402
from safetensors.torch import load_file, save_file as save_torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup  # noqa: E402

torch.set_num_threads(2)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.join(ROOT, "Fixtures", "training", "llama-run")
CACHE = os.environ.get("FLARE_CACHE") or os.path.expanduser("~/.cache/flare")
MODEL = os.path.join(CACHE, "models", "smollm2-hf")
STEPS, BATCH, ACCUM, LR, WARMUP, DECAY, MAXLEN = 20, 1, 2, 1e-3, 3, 0.01, 32
FLARE_TRAIN_ARGUMENTS = [
    "lora", "--model", "{model}", "--data", "{data}", "--output", "{output}",
    "--init-adapter", "{init}", "--task", "causal-lm", "--max-steps", str(STEPS),
    "--batch-size", str(BATCH),
    "--grad-accum", str(ACCUM), "--lr", str(LR), "--schedule", "cosine", "--warmup-steps",
    str(WARMUP), "--weight-decay", str(DECAY), "--max-grad-norm", "1.0", "--max-length",
    str(MAXLEN), "--no-shuffle", "--model-dropout", "0", "--seed", "0", "--quiet", "--force",
]


def main():
    os.makedirs(os.path.join(HERE, "init"), exist_ok=True)
    tok = AutoTokenizer.from_pretrained(MODEL)
    eos = tok.eos_token_id
    texts = []
    for line in open(os.path.join(ROOT, "Fixtures", "data", "bible", "lm-train.jsonl")):
        text = json.loads(line)["text"]
        if 8 <= len(tok(text)["input_ids"]) < 20:
            texts.append(text)
        if len(texts) == 8:
            break
    with open(os.path.join(HERE, "train.jsonl"), "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    ids = []
    for t in texts:
        row = tok(t)["input_ids"]
        if row[-1] != eos:
            row = row + [eos]
        ids.append(row)

    # The starting adapter.
    torch.manual_seed(1234)
    base = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                     task_type="CAUSAL_LM")
    model = get_peft_model(base, cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.01)
            if "lora_" in name:
                p.copy_(p.half().float())
    init = os.path.join(HERE, "init")
    model.save_pretrained(init)
    state = load_file(os.path.join(init, "adapter_model.safetensors"))
    save_torch({k: v.half() for k, v in state.items()},
               os.path.join(init, "adapter_model.safetensors"))
    conf = json.load(open(os.path.join(init, "adapter_config.json")))
    conf["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
    conf["target_modules"] = sorted(conf["target_modules"])
    json.dump(conf, open(os.path.join(init, "adapter_config.json"), "w"), indent=2, sort_keys=True)
    readme = os.path.join(init, "README.md")
    if os.path.exists(readme):
        os.remove(readme)

    # The run, from the saved (float16-exact) adapter.
    base = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, init, is_trainable=True)
    model.train()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if "bias" not in n], "weight_decay": DECAY},
        {"params": [p for n, p in params if "bias" in n], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.999), eps=1e-8)
    sched = get_cosine_schedule_with_warmup(opt, WARMUP, STEPS)
    micro = [ids[i:i + BATCH] for i in range(0, len(ids), BATCH)]
    per_epoch = (len(micro) + ACCUM - 1) // ACCUM
    steps = []
    for step in range(STEPS):
        k = step % per_epoch
        group = micro[k * ACCUM:(k + 1) * ACCUM]
        count = sum(len(r) - 1 for mb in group for r in mb)
        total = 0.0
        for mb in group:
            width = max(len(r) for r in mb)
            inp = torch.tensor([r + [eos] * (width - len(r)) for r in mb])
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in mb])
            labels = torch.tensor([r + [-100] * (width - len(r)) for r in mb])
            logits = model(input_ids=inp, attention_mask=mask).logits
            loss_sum = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                ignore_index=-100, reduction="sum")
            (loss_sum / count).backward()
            total += float(loss_sum.detach())
        lr = sched.get_last_lr()[0]
        norm = float(torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        steps.append({"step": step + 1, "loss": total / count, "lr": lr, "grad_norm": norm,
                      "tokens": count})
        print(steps[-1])
    final = {n.replace(".default", ""): p.detach().numpy().astype(np.float32).copy()
             for n, p in params}
    save_file(final, os.path.join(HERE, "trajectory.safetensors"))
    json.dump({
        "flare_train_arguments": FLARE_TRAIN_ARGUMENTS,
        "token_ids": ids,
        "steps": steps,
        "tolerances": {"loss_relative": 1e-4, "final_relative_frobenius": 1e-3},
        "versions": {"torch": torch.__version__,
                     "transformers": __import__("transformers").__version__,
                     "peft": __import__("peft").__version__},
    }, open(os.path.join(HERE, "trajectory.json"), "w"), indent=1)


if __name__ == "__main__":
    main()

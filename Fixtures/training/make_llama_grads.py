#!/usr/bin/env python3
"""make_llama_grads.py: PyTorch + PEFT gradients of one causal-LM LoRA step on SmolLM2-135M.

Run from the repository root after fetching the real models (`make models`; the F32 HF folder is
~/.cache/flare/models/smollm2-hf):

    python3 Fixtures/training/make_llama_grads.py

Needs CPU torch, transformers, peft, numpy and safetensors. It loads the folder as transformers'
`LlamaForCausalLM` (float32, eager attention), wraps it with PEFT (`task_type=CAUSAL_LM`,
`lora_dropout=0`), sets every LoRA A and B to values of a fixed integer generator that the Swift
test recomputes (so no init values are stored), runs one forward/backward in `train()` mode with
`labels` (transformers' causal-LM loss: shifted labels, `-100` ignored, mean over the label
tokens) and writes `smollm2.json` and `smollm2.safetensors` next to this script.

Cases (same batch of 3 texts, the second one padded; labels are the token ids with `-100` on
padding and on the first 4 tokens of the first text, a "prompt"):
  qv    LoRA r 4, alpha 8 on q_proj, v_proj; right padding. Every gradient stored.
  all   LoRA r 2, alpha 4 on all-linear (q, k, v, o, gate, up, down); right padding. Gradients
        of layers 0, 15 and 29 stored in full, the Frobenius norm of every gradient in the JSON.
  left  the qv adapter on the same texts left-padded, with `position_ids = cumsum(mask) - 1`
        (as `generate` passes them) and `-100` also on each row's first real token (a padding
        position must not predict it). Loss and gradient norms in the JSON; the script checks
        that its gradients equal the right-padded ones (figure recorded).
  cls   sequence classification: transformers' `LlamaForSequenceClassification` (3 labels,
        `pad_token_id` 2 as in config.json: the score head on each row's last non-padding
        token), PEFT `SEQ_CLS` (LoRA r 4, alpha 8 on q_proj, v_proj; `score` in
        `modules_to_save`, saved as `base_model.model.score.weight` and initialised by the same
        generator with the A scale), class labels 0, 2, 1, right padding. Gradients of layers 0,
        15, 29 and the head stored in full, the norm of every gradient in the JSON.

Init generator (per case seed; LoRA tensors in the order of their sorted saved keys, each
row-major): SplitMix64 (state += 0x9E3779B97F4A7C15; the usual output mix), value
`(int((next >> 40) % 2049) - 1024) * 2**-14` for A and `* 2**-15` for B: exact in float32.

Tensors (safetensors, F32): `<case>.grad.<key>` with `<key>` the name PEFT saves in
adapter_model.safetensors (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`).
The JSON has the token ids, mask, labels, per case the loss, label count, modules and scaling,
the gradient norms, the tolerances, the library versions and the measured distance of the
float32 oracle from the same step in float64 (its own rounding).

The float64 step (cases qv, all, cls) runs the same PEFT model in float64 with the RoPE tables
and the loss computed in float64 too (transformers computes both in float32 even for a float64
model, so its own float64 run shares float32 roundings with the float32 oracle); its loss is
`float64_loss` and its gradients of layers 0, 15, 28, 29 (and the score head) are
`<case>.grad64.<key>` (rounded to F32). It is the
reference of the 1e-4 gradient check: PEFT's float32 gradients are themselves up to 1.4e-4 from
it in the top layers.
"""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.environ.get("FLARE_CACHE") or os.path.expanduser("~/.cache/flare")
FOLDER = os.path.join(CACHE, "models", "smollm2-hf")
MASK64 = (1 << 64) - 1

torch.set_num_threads(1)

TEXTS = [
    "The quick brown fox jumps over the lazy dog near the quiet river bank.",
    "Paris is the capital of France.",
    "def add(a, b):\n    return a + b  # sum of two numbers",
]
PROMPT_TOKENS = 4
CASES = {
    "qv": dict(target_modules=["q_proj", "v_proj"], r=4, alpha=8, seed=11, padding="right"),
    "all": dict(target_modules="all-linear", r=2, alpha=4, seed=22, padding="right"),
    "left": dict(target_modules=["q_proj", "v_proj"], r=4, alpha=8, seed=11, padding="left"),
    "cls": dict(target_modules=["q_proj", "v_proj"], r=4, alpha=8, seed=33, padding="right", classes=[0, 2, 1]),
}
FULL_LAYERS = {"all": [0, 15, 29], "cls": [0, 15, 29]}
# Layers whose float64 gradients are stored (the float64 check needs the top layers, where the
# float32 oracle is farthest off, and a few others; all of them would double the file).
FLOAT64_LAYERS = [0, 15, 28, 29]
TOLERANCE = {"loss_relative": 1e-5, "gradient_relative_frobenius": 1e-4}


def splitmix(seed):
    state = seed & MASK64
    while True:
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        yield z ^ (z >> 31)


def init_values(keys_shapes, seed):
    """The generator's values for each (key, shape), keys in sorted order."""
    stream = splitmix(seed)
    values = {}
    for key, shape in sorted(keys_shapes):
        count = int(np.prod(shape))
        scale = 2.0**-15 if ".lora_B." in key else 2.0**-14
        raw = [(int((next(stream) >> 40) % 2049) - 1024) for _ in range(count)]
        values[key] = (np.array(raw, dtype=np.float64) * scale).astype(np.float32).reshape(shape)
    return values


def saved_key(parameter_name):
    return parameter_name.replace(".modules_to_save.default", "").replace(".default", "")


def batch(padding):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(FOLDER)
    rows = [tokenizer(text)["input_ids"] for text in TEXTS]
    t = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 2
    ids, mask, labels, positions = [], [], [], []
    for index, row in enumerate(rows):
        n = len(row)
        label = list(row)
        if index == 0:
            label[:PROMPT_TOKENS] = [-100] * PROMPT_TOKENS
        if padding == "left":
            label[0] = -100
            ids.append([pad] * (t - n) + row)
            mask.append([0] * (t - n) + [1] * n)
            labels.append([-100] * (t - n) + label)
            positions.append([0] * (t - n) + list(range(n)))
        else:
            ids.append(row + [pad] * (t - n))
            mask.append([1] * n + [0] * (t - n))
            labels.append(label + [-100] * (t - n))
            positions.append(list(range(t)))
    return ids, mask, labels, positions


def step(case, dtype):
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    spec = CASES[case]
    classes = spec.get("classes")
    if classes:
        from transformers import AutoModelForSequenceClassification

        base = AutoModelForSequenceClassification.from_pretrained(
            FOLDER, dtype=torch.float32, attn_implementation="eager", num_labels=3
        )
        assert base.config.pad_token_id == 2
    else:
        base = AutoModelForCausalLM.from_pretrained(FOLDER, dtype=torch.float32, attn_implementation="eager")
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS if classes else TaskType.CAUSAL_LM,
        r=spec["r"],
        lora_alpha=spec["alpha"],
        lora_dropout=0.0,
        target_modules=spec["target_modules"],
        bias="none",
    )
    model = get_peft_model(base, config)
    params = {saved_key(n): p for n, p in model.named_parameters() if p.requires_grad}
    init = init_values([(k, tuple(p.shape)) for k, p in params.items()], spec["seed"])
    with torch.no_grad():
        for key, parameter in params.items():
            parameter.copy_(torch.from_numpy(init[key]))
    model = model.to(dtype)
    model.train()
    ids, mask, labels, positions = batch(spec["padding"])
    if dtype == torch.float64:
        # float64 throughout: transformers computes the RoPE tables and the loss in float32
        # even for a float64 model (`inv_freq.float()`, `logits.float()`), which would make the
        # reference share float32 roundings with the float32 oracle.
        with float64_rope():
            out = model(
                input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(positions)
            )
        if classes:
            loss = torch.nn.functional.cross_entropy(out.logits, torch.tensor(classes))
        else:
            target = torch.tensor(labels)
            shifted = torch.full_like(target, -100)
            shifted[:, :-1] = target[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                out.logits.reshape(-1, out.logits.shape[-1]), shifted.reshape(-1), ignore_index=-100, reduction="sum"
            ) / (shifted != -100).sum()
        out.loss = loss
    else:
        out = model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(positions),
            labels=torch.tensor(classes if classes else labels),
        )
    out.loss.backward()
    grads = {saved_key(n): p.grad.detach().to(torch.float64).numpy() for n, p in model.named_parameters() if p.requires_grad}
    if classes:
        labels = classes
        count = len(classes)
    else:
        count = sum(1 for row in labels for label in row[1:] if label != -100)
    modules = sorted({k.rsplit(".lora_", 1)[0].replace("base_model.model.", "", 1) for k in grads if ".lora_" in k})
    return dict(
        loss=float(out.loss.detach()), count=count, grads=grads, modules=modules, batch=(ids, mask, labels), scale=spec["alpha"] / spec["r"]
    )


class float64_rope:
    """LlamaRotaryEmbedding computing its cos/sin tables in float64 while active."""

    def __enter__(self):
        from transformers.models.llama import modeling_llama

        self.cls = modeling_llama.LlamaRotaryEmbedding
        self.saved = self.cls.forward

        def forward(rope, x, position_ids):
            inv = rope.inv_freq.to(torch.float64)[None, :, None].expand(position_ids.shape[0], -1, 1)
            freqs = (inv @ position_ids[:, None, :].to(torch.float64)).transpose(1, 2)
            emb = torch.cat((freqs, freqs), dim=-1)
            return (emb.cos() * rope.attention_scaling).to(x.dtype), (emb.sin() * rope.attention_scaling).to(x.dtype)

        self.cls.forward = forward

    def __exit__(self, *exc):
        self.cls.forward = self.saved


def relative_frobenius(got, expected):
    return float(np.linalg.norm(np.asarray(got, np.float64) - expected) / max(np.linalg.norm(expected), 1e-300))


def main():
    import peft
    import transformers

    tensors = {}
    doc = {
        "oracle": "PEFT get_peft_model(CAUSAL_LM) on transformers LlamaForCausalLM (eager attention), float32, train(), one loss.backward()",
        "model": "smollm2-hf (SmolLM2-135M-Instruct, F32 safetensors, tied head)",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "tolerance": TOLERANCE,
        "cases": {},
    }
    results = {}
    for case, spec in CASES.items():
        r32 = step(case, torch.float32)
        # Left padding in float64: eager attention gives the all-padding query rows NaN (no key
        # to see), which reaches the gradients through zero upstream values; not measured.
        r64 = step(case, torch.float64) if spec["padding"] == "right" else None
        results[case] = r32
        ids, mask, labels = r32["batch"]
        full = FULL_LAYERS.get(case)
        stored = []
        if case != "left":
            for key, g in r32["grads"].items():
                layer = int(key.split(".layers.")[1].split(".")[0]) if ".layers." in key else None
                if full is None or layer in full:
                    tensors[f"{case}.grad.{key}"] = g.astype(np.float32)
                    if r64 and (layer is None or layer in FLOAT64_LAYERS):
                        tensors[f"{case}.grad64.{key}"] = r64["grads"][key].astype(np.float32)
                    stored.append(key)
        doc["cases"][case] = dict(
            target_modules=spec["target_modules"],
            r=spec["r"],
            alpha=spec["alpha"],
            scale=r32["scale"],
            seed=spec["seed"],
            padding=spec["padding"],
            input_ids=ids,
            attention_mask=mask,
            labels=labels,
            classes=spec.get("classes"),
            loss=r32["loss"],
            label_count=r32["count"],
            modules=r32["modules"],
            stored_gradients=sorted(stored),
            gradient_norms={k: float(np.linalg.norm(g)) for k, g in sorted(r32["grads"].items())},
            float64_loss=r64["loss"] if r64 else None,
            float64_loss_relative=abs(r32["loss"] - r64["loss"]) / abs(r64["loss"]) if r64 else None,
            float64_worst_gradient_relative=(
                max(relative_frobenius(r32["grads"][k], r64["grads"][k]) for k in r32["grads"]) if r64 else None
            ),
        )
    left, right = results["left"], results["qv"]
    doc["cases"]["left"]["relative_to_right_padding"] = dict(
        loss=abs(left["loss"] - right["loss"]) / abs(right["loss"]),
        worst_gradient=max(relative_frobenius(left["grads"][k], right["grads"][k]) for k in right["grads"]),
    )
    assert doc["cases"]["left"]["relative_to_right_padding"]["worst_gradient"] < 1e-4
    for case in results.values():
        assert all(np.isfinite(g).all() for g in case["grads"].values())
    save_file(tensors, os.path.join(HERE, "smollm2.safetensors"))
    with open(os.path.join(HERE, "smollm2.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print({c: (d["loss"], d["float64_worst_gradient_relative"]) for c, d in doc["cases"].items()})
    print(doc["cases"]["left"]["relative_to_right_padding"])


if __name__ == "__main__":
    main()

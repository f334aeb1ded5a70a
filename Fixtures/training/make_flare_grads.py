#!/usr/bin/env python3
"""make_flare_grads.py: whole-model gradients of one FLARE step on SmolLM2-135M, in float64.

Run from the repository root after fetching the real models (`make models`):

    python3 Fixtures/training/make_flare_grads.py

Needs CPU torch, transformers, peft, numpy and safetensors. The model is transformers'
`LlamaForCausalLM` (the F32 HF folder, run in float64 with eager attention, RoPE tables and loss
in float64 too: see make_llama_grads.py) with PEFT LoRA (r 4, alpha 8, dropout 0) on q_proj,
k_proj and v_proj of every layer, A and B set by make_llama_grads.py's integer generator. The
q_proj and v_proj layers are then made FLARE-fused layers (FLARE.md §2.2): their forward becomes

    y = W·x_t + s·f(A·x_s, A·x_t)·Bᵀ

with f from Fixtures/fusion/make_fusion_goldens.py and x_s the hidden state entering the same
block in the source pass (the raw residual stream, as the reference: `hidden_states[i]` of the
base model without adapters, run on the source tokens under no_grad). k_proj stays plain LoRA.
Target and source are left-padded to the same length (position j fuses with position j);
positions count real tokens. Each source is at least as long as its target, so every real target
position fuses with a real source position: what a padding position of the source holds is
implementation-defined (transformers' float64 eager attention even gives NaN there, so both
passes get an explicit additive 4D mask, causal plus padding, -1e30 where masked). Labels: the target ids, -100 on padding and on each row's first
real token; the loss is the mean cross-entropy over the shifted labels.

Cases: `add_relu` (the reference's default; element-wise), `matmul-causal` and
`cross-attention-causal` (2 heads, q/k/v weights set by the same generator after the LoRA
tensors) in Flare's decoder form (position j reads real target positions k <= j).

Writes `flare.json` (tokens, masks, labels, per case the loss, label count, gradient norms of
every trainable tensor) and `flare.safetensors` (`<case>.grad.<key>` for layers 0, 15 and 29,
F32) next to this script. Keys are PEFT's saved names; cross-attention weights are
`base_model.model.model.layers.<i>.self_attn.<q|v>_proj.cross_attention.<q|k|v>.<weight|bias>`.
"""

import json
import os
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "fusion"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from make_fusion_goldens import fuse  # noqa: E402
from make_llama_grads import FOLDER, float64_rope, init_values, saved_key  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

torch.set_num_threads(1)

TARGETS = [
    "El zorro salta sobre el perro perezoso.",
    "París es la capital de Francia.",
]
SOURCES = [
    "The quick brown fox jumps over the lazy dog, and then it runs away into the forest.",
    "Paris is the capital of France, a country in western Europe with many old cities.",
]
CASES = {
    "add_relu": dict(fusion="add_relu", causal=False, heads=1, seed=41),
    "matmul-causal": dict(fusion="matmul", causal=True, heads=1, seed=42),
    "cross-attention-causal": dict(fusion="cross-attention", causal=True, heads=2, seed=43),
}
R, ALPHA = 4, 8
FULL_LAYERS = [0, 15, 29]


def left_padded(tokenizer, texts, length):
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 2
    ids, mask, positions = [], [], []
    for text in texts:
        row = tokenizer(text)["input_ids"]
        n = len(row)
        ids.append([pad] * (length - n) + row)
        mask.append([0] * (length - n) + [1] * n)
        positions.append([0] * (length - n) + list(range(n)))
    return ids, mask, positions


def additive_mask(mask):
    """(N, 1, L, L): 0 where query j may attend key k (k <= j, k real), -1e30 elsewhere."""
    m = torch.tensor(mask, dtype=torch.float64)
    length = m.shape[1]
    allowed = torch.tril(torch.ones(length, length, dtype=torch.float64))[None] * m[:, None, :]
    return ((1 - allowed) * -1e30)[:, None]


def step(name):
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = CASES[name]
    tokenizer = AutoTokenizer.from_pretrained(FOLDER)
    length = max(len(tokenizer(t)["input_ids"]) for t in TARGETS + SOURCES)
    ids, mask, positions = left_padded(tokenizer, TARGETS, length)
    sids, smask, spositions = left_padded(tokenizer, SOURCES, length)
    assert all(sum(t) <= sum(u) for t, u in zip(mask, smask)), "a source is shorter than its target"
    labels = []
    for row, m in zip(ids, mask):
        first = m.index(1)
        labels.append([-100] * (first + 1) + row[first + 1:])

    base = AutoModelForCausalLM.from_pretrained(FOLDER, dtype=torch.float32, attn_implementation="eager")
    config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=R, lora_alpha=ALPHA, lora_dropout=0.0,
                        target_modules=["q_proj", "k_proj", "v_proj"], bias="none")
    model = get_peft_model(base, config)
    params = {saved_key(n): p for n, p in model.named_parameters() if p.requires_grad}
    shapes = [(k, tuple(p.shape)) for k, p in params.items()]
    layers = model.base_model.model.model.layers
    attention = {}
    if spec["fusion"] == "cross-attention":
        for i in range(len(layers)):
            for proj in ["q_proj", "v_proj"]:
                prefix = f"base_model.model.model.layers.{i}.self_attn.{proj}.cross_attention"
                for part in "qkv":
                    shapes.append((f"{prefix}.{part}.weight", (R, R)))
                    shapes.append((f"{prefix}.{part}.bias", (R,)))
    init = init_values(shapes, spec["seed"])
    with torch.no_grad():
        for key, parameter in params.items():
            parameter.copy_(torch.from_numpy(init[key]))
    model = model.to(torch.float64)
    sources = {}

    def fused_forward(module, layer_index, key_prefix):
        def forward(self, x, *args, **kwargs):
            y = self.base_layer(x)
            if self.disable_adapters:
                return y
            a = self.lora_A["default"].weight
            b = self.lora_B["default"].weight
            s_in = sources[layer_index]
            visible = torch.ones(x.shape[0], x.shape[1], x.shape[1], dtype=torch.float64)
            if spec["causal"]:
                visible = visible * torch.tril(torch.ones(x.shape[1], x.shape[1], dtype=torch.float64))
                visible = visible * torch.tensor(mask, dtype=torch.float64)[:, None, :]
            weights = None
            if spec["fusion"] == "cross-attention":
                weights = [attention[f"{key_prefix}.cross_attention.{p}.{w}"] for p in "qkv" for w in ("weight", "bias")]
            f = fuse(spec["fusion"], s_in @ a.T, x @ a.T, visible, spec["heads"], weights)
            return y + self.scaling["default"] * f @ b.T
        module.forward = types.MethodType(forward, module)

    for i, layer in enumerate(layers):
        for proj in ["q_proj", "v_proj"]:
            prefix = f"base_model.model.model.layers.{i}.self_attn.{proj}"
            if spec["fusion"] == "cross-attention":
                for p in "qkv":
                    for w in ("weight", "bias"):
                        key = f"{prefix}.cross_attention.{p}.{w}"
                        attention[key] = torch.tensor(init[key], dtype=torch.float64, requires_grad=True)
            fused_forward(getattr(layer.self_attn, proj), i, prefix)

    model.train()
    with float64_rope():
        with torch.no_grad(), model.disable_adapter():
            hidden = model(input_ids=torch.tensor(sids), attention_mask=additive_mask(smask),
                           position_ids=torch.tensor(spositions), output_hidden_states=True).hidden_states
        for i in range(len(layers)):
            sources[i] = hidden[i].detach()
        out = model(input_ids=torch.tensor(ids), attention_mask=additive_mask(mask),
                    position_ids=torch.tensor(positions))
    target = torch.tensor(labels)
    shifted = torch.full_like(target, -100)
    shifted[:, :-1] = target[:, 1:]
    count = int((shifted != -100).sum())
    loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), shifted.reshape(-1),
                                             ignore_index=-100, reduction="sum") / count
    loss.backward()
    grads = {saved_key(n): p.grad.detach().numpy() for n, p in model.named_parameters() if p.requires_grad}
    for key, tensor in attention.items():
        grads[key] = tensor.grad.detach().numpy()
    return dict(loss=float(loss.detach()), count=count, grads=grads, batch=(ids, mask, labels, sids, smask))


def main():
    import peft
    import transformers

    tensors = {}
    doc = {"model": "smollm2-hf (the F32 HF folder `make models` writes to ~/.cache/flare/models)", "r": R, "alpha": ALPHA, "scale": ALPHA / R,
           "modules": ["q_proj", "k_proj", "v_proj"], "fused": ["q_proj", "v_proj"],
           "full_layers": FULL_LAYERS, "cases": {},
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "peft": peft.__version__}}
    for name, spec in CASES.items():
        result = step(name)
        ids, mask, labels, sids, smask = result["batch"]
        doc.update(input_ids=ids, attention_mask=mask, labels=labels, source_ids=sids, source_mask=smask)
        stored = []
        for key, grad in result["grads"].items():
            if any(f".layers.{i}." in key for i in FULL_LAYERS):
                tensors[f"{name}.grad.{key}"] = grad.astype(np.float32)
                stored.append(key)
        doc["cases"][name] = dict(spec, loss=result["loss"], label_count=result["count"],
                                  stored_gradients=sorted(stored),
                                  gradient_norms={k: float(np.linalg.norm(g)) for k, g in result["grads"].items()})
        print(name, "loss", result["loss"], "count", result["count"])
    save_file(tensors, os.path.join(HERE, "flare.safetensors"))
    with open(os.path.join(HERE, "flare.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""make_encoder_flare_grads.py: gradients of one FLARE step on multilingual-e5-small.

Run from the repository root after fetching the real models (`make models`):

    python3 Fixtures/training/make_encoder_flare_grads.py

Needs CPU torch, transformers, peft, numpy and safetensors. The model is make_encoder_grads.py's
`e5` set-up (XLMRobertaForSequenceClassification with 3 labels, model dropout 0, PEFT SEQ_CLS,
classifier in modules_to_save, seeded float16-exact starting values) with LoRA r 4, alpha 8 on
query and value, and every query and value layer made a FLARE-fused layer (FLARE.md §2.2):

    y = W·x_t + b + s·f(A·x_s, A·x_t)·Bᵀ

with f from Fixtures/fusion/make_fusion_goldens.py in the reference's form (every position
reads every target position, padding included: no mask inside the fusion) and x_s the input of
the same block in the source pass (`hidden_states[i]` of the model with adapters disabled, run
on the parallel English text; post-LayerNorm, as the target side). Target and source are
padded on the right to the same length and fused position by position.

Writes `e5-flare-<fusion>.json` and `.safetensors` in make_encoder_grads.py's format (the
loss, every gradient of the float32 step, the float32 oracle's distance from float64), plus
`fusion`, `heads`, `source_ids`, `source_mask` and the cross-attention keys
(`base_model.model.<module>.cross_attention.<q|k|v>.<weight|bias>`, starting values in
`init.<key>`).
"""

import os
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "fusion"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import make_encoder_grads as base  # noqa: E402
from make_fusion_goldens import fuse  # noqa: E402

SOURCES = [
    "query: The movie was wonderful, truly one of the best this year.",
    "query: The film was terrible and boring.",
    "passage: The movie was quite okay.",
    "query: This movie is very exciting.",
]
base.CASES["e5-flare"] = dict(base.CASES["e5"], target_modules=["query", "value"], r=4, alpha=8, seed=303)
FUSIONS = {"add_relu": 1, "cross-attention": 2}


def make(fusion, heads):
    from transformers import AutoTokenizer

    spec = base.CASES["e5-flare"]
    tokenizer = AutoTokenizer.from_pretrained(spec["folder"])
    tokenizer.padding_side = "right"
    length = max(len(tokenizer(t)["input_ids"]) for t in spec["texts"] + SOURCES)
    enc = dict(tokenizer(spec["texts"], padding="max_length", max_length=length, return_tensors="pt"))
    enc["labels"] = torch.tensor(spec["labels"])
    src = tokenizer(SOURCES, padding="max_length", max_length=length, return_tensors="pt")

    def patch(model, init, dtype):
        rng = np.random.default_rng(spec["seed"] + 1)
        sources = {}
        extra = {}
        r = spec["r"]
        layers = model.base_model.model.roberta.encoder.layer
        for i, layer in enumerate(layers):
            for name in ["query", "value"]:
                module = getattr(layer.attention.self, name)
                prefix = f"base_model.model.roberta.encoder.layer.{i}.attention.self.{name}"
                weights = []
                for part in "qkv":
                    for w, shape in (("weight", (r, r)), ("bias", (r,))):
                        key = f"{prefix}.cross_attention.{part}.{w}"
                        values = base.f16_exact(rng, shape, -0.5, 0.5)
                        init[key] = values
                        extra[key] = torch.tensor(values, dtype=dtype, requires_grad=True)
                        weights.append(extra[key])

                def forward(self, x, *args, layer_index=i, weights=weights, **kwargs):
                    y = self.base_layer(x)
                    if self.disable_adapters:
                        return y
                    a = self.lora_A["default"].weight
                    b = self.lora_B["default"].weight
                    visible = torch.ones(x.shape[0], x.shape[1], x.shape[1], dtype=x.dtype)
                    f = fuse(fusion, sources[layer_index] @ a.T, x @ a.T, visible, heads,
                             weights if fusion == "cross-attention" else None)
                    return y + self.scaling["default"] * f @ b.T

                module.forward = types.MethodType(forward, module)
        with torch.no_grad(), model.disable_adapter():
            hidden = model.base_model.model.roberta(
                input_ids=src["input_ids"], attention_mask=src["attention_mask"], output_hidden_states=True
            ).hidden_states
        for i in range(len(layers)):
            sources[i] = hidden[i].detach()
        if fusion != "cross-attention":
            for key in list(extra):
                del init[key]
            return {}
        return extra

    def step_fn(case, dtype):
        return base.step(case, dtype, enc=enc, patch=patch)

    keys = sorted(
        f"base_model.model.roberta.encoder.layer.{i}.attention.self.{name}.cross_attention.{p}.{w}"
        for i in range(12) for name in ["query", "value"] for p in "qkv" for w in ("weight", "bias")
    ) if fusion == "cross-attention" else []
    base.make(
        "e5-flare", stem=f"e5-flare-{fusion}", step_fn=step_fn,
        extra={"fusion": fusion, "cross_attention_heads": heads, "causal": False, "cross_attention": keys,
               "source_ids": src["input_ids"].tolist(), "source_mask": src["attention_mask"].tolist()},
        oracle="make_encoder_grads.py's e5 set-up with FLARE-fused query/value layers (see make_encoder_flare_grads.py)",
    )


if __name__ == "__main__":
    for fusion, heads in FUSIONS.items():
        make(fusion, heads)

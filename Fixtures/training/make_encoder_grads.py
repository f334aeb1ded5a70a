#!/usr/bin/env python3
"""make_encoder_grads.py: PyTorch + PEFT gradients of one LoRA training step on the real encoders.

Run from the repository root after fetching the real models (`make models`):

    python3 Fixtures/training/make_encoder_grads.py            # both cases
    python3 Fixtures/training/make_encoder_grads.py minilm e5

Needs CPU torch, transformers, peft, numpy and safetensors. For each case it builds the task
model as transformers builds it from the encoder checkpoint (`AutoModelForSequenceClassification`
with 3 labels, model dropout 0: `hidden_dropout_prob=0, attention_probs_dropout_prob=0`), wraps it
with PEFT (`task_type=SEQ_CLS`, `lora_dropout=0`), overwrites every LoRA A and B and every freshly
initialised head tensor with seeded random values that are exact in float16 (so they are stored as
F16 and read back bit for bit), runs one forward/backward in `train()` mode on a fixed padded
batch with `labels` (transformers' mean cross-entropy), and writes `<case>.json` and
`<case>.safetensors` next to this script:

  minilm  all-MiniLM-L6-v2 -> BertForSequenceClassification: pooler (dense + tanh on [CLS]) ->
          dropout -> classifier. LoRA r 4, alpha 8 on query and value; modules_to_save
          classifier and pooler (the pooler starts from the checkpoint's pretrained values).
          A batch of 3 sentence pairs (text_pair, token_type_ids), right-padded.
  e5      multilingual-e5-small -> XLMRobertaForSequenceClassification: <s> -> dropout ->
          classifier.dense -> tanh -> dropout -> classifier.out_proj. LoRA r 2, alpha 8 on
          all-linear (query, key, value, attention output, intermediate, output of every layer);
          modules_to_save classifier (PEFT's default for SEQ_CLS). 4 sentences, right-padded.

Tensors (safetensors; names are the keys PEFT saves in adapter_model.safetensors):
  init.<key>                    F16: the starting value of every LoRA A/B and fresh head tensor
  grad.<key>                    F32: its gradient (PEFT's .grad after loss.backward())
  grad.<key>.left/.right        F32 [B, C] each, for the [C, C] dense head weights only (to keep
                                the file small): the gradient is exactly left^T . right, the
                                dense layer's output gradient and input for the B examples
                                (captured with hooks; checked here against .grad)
  logits                        F32 [B, 3]
The JSON has the token ids, mask, token types, labels, the loss (float), the LoRA modules with
their scaling, the head tensors (and which start from the checkpoint), the key names found in a
PEFT-saved folder, the tolerances, the library versions and measured figures: how far the float32
oracle is from the same step in float64 (the oracle's own rounding), per tensor.
"""

import json
import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.environ.get("FLARE_CACHE") or os.path.expanduser("~/.cache/flare")
PREFIX = "base_model.model."

torch.set_num_threads(1)

CASES = {
    "minilm": dict(
        folder=os.path.join(CACHE, "models", "all-MiniLM-L6-v2"),
        model="all-MiniLM-L6-v2 (BertModel checkpoint with pooler) as BertForSequenceClassification",
        pairs=[
            ("A man is playing a guitar.", "Someone plays music."),
            ("Is it raining?", "The streets are wet, so probably yes."),
            ("The cat sleeps.", "A dog barks loudly at the mailman."),
        ],
        labels=[0, 2, 1],
        target_modules=["query", "value"],
        r=4,
        alpha=8,
        modules_to_save=["classifier", "pooler"],
        seed=101,
    ),
    "e5": dict(
        folder=os.path.join(CACHE, "models", "multilingual-e5-small"),
        model="multilingual-e5-small (converted XLMRobertaModel, no pooler) as XLMRobertaForSequenceClassification",
        texts=[
            "query: The movie was wonderful.",
            "query: La película fue terrible y aburrida.",
            "passage: Der Film war ganz okay.",
            "query: 这部电影非常精彩。",
        ],
        labels=[2, 0, 1, 2],
        target_modules="all-linear",
        r=2,
        alpha=8,
        modules_to_save=None,
        seed=202,
    ),
}
LABELS = 3
TOLERANCE = {"loss_relative": 1e-5, "gradient_relative_frobenius": 1e-4}


def f16_exact(rng, shape, low, high):
    """Uniform values rounded to float16, returned as float32 (exact in both)."""
    return rng.uniform(low, high, size=shape).astype(np.float16).astype(np.float32)


def relative_frobenius(got, expected):
    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.linalg.norm(got - expected) / max(np.linalg.norm(expected), 1e-300))


def build(case, dtype):
    """The PEFT model with the case's init values, and the init values by saved key."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    spec = CASES[case]
    base = AutoModelForSequenceClassification.from_pretrained(
        spec["folder"],
        num_labels=LABELS,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=spec["r"],
        lora_alpha=spec["alpha"],
        lora_dropout=0.0,
        target_modules=spec["target_modules"],
        modules_to_save=spec["modules_to_save"],
        bias="none",
    )
    model = get_peft_model(base, config)
    rng = np.random.default_rng(spec["seed"])
    init = {}
    checkpoint_heads = []
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):
            if not parameter.requires_grad:
                continue
            key = saved_key(name)
            shape = tuple(parameter.shape)
            if ".lora_A." in name:
                bound = 1 / np.sqrt(shape[1])  # PEFT's default A range, U(-1/sqrt(in), 1/sqrt(in))
                values = f16_exact(rng, shape, -bound, bound)
            elif ".lora_B." in name:
                values = f16_exact(rng, shape, -0.1, 0.1)  # non-zero, so A gets a gradient
            elif ".pooler." in name:
                checkpoint_heads.append(key)  # pretrained pooler: starts from the checkpoint
                continue
            elif name.endswith(".bias"):
                values = f16_exact(rng, shape, -0.05, 0.05)
            else:
                values = f16_exact(rng, shape, -0.1, 0.1)
            parameter.copy_(torch.from_numpy(values))
            init[key] = values
    model = model.to(dtype)
    model.train()
    return model, init, checkpoint_heads


def saved_key(parameter_name):
    """The key PEFT writes for a trainable parameter (adapter name and modules_to_save removed)."""
    return parameter_name.replace(".modules_to_save.default", "").replace(".default", "")


def batch(case):
    from transformers import AutoTokenizer

    spec = CASES[case]
    tokenizer = AutoTokenizer.from_pretrained(spec["folder"])
    tokenizer.padding_side = "right"
    if "pairs" in spec:
        enc = tokenizer([a for a, _ in spec["pairs"]], [b for _, b in spec["pairs"]], padding=True, return_tensors="pt")
    else:
        enc = tokenizer(spec["texts"], padding=True, return_tensors="pt")
    enc = dict(enc)
    enc["labels"] = torch.tensor(spec["labels"])
    return enc


def step(case, dtype, enc=None, patch=None):
    """One forward/backward; returns loss, logits, gradients by saved key, dense factors, init.

    `enc` replaces the case's batch; `patch(model, init, dtype)`, called before the forward,
    may change the model and returns extra trainable tensors by saved key (their starting
    values added to `init` by it, their gradients returned with the others)."""
    model, init, checkpoint_heads = build(case, dtype)
    enc = enc if enc is not None else batch(case)
    extra = patch(model, init, dtype) if patch else {}
    factors = {}
    hooks = []
    for name, module in model.named_modules():
        if name.endswith("modules_to_save.default.dense") or name.endswith("pooler.modules_to_save.default.dense"):
            key = saved_key(name) + ".weight"
            factors[key] = {}

            def forward_hook(_m, args, _out, key=key):
                factors[key]["right"] = args[0].detach().clone()

            def backward_hook(_m, _grad_in, grad_out, key=key):
                factors[key]["left"] = grad_out[0].detach().clone()

            hooks.append(module.register_forward_hook(forward_hook))
            hooks.append(module.register_full_backward_hook(backward_hook))
    out = model(**enc)
    out.loss.backward()
    for hook in hooks:
        hook.remove()
    grads = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            grads[saved_key(name)] = parameter.grad.detach().numpy()
    for key, tensor in extra.items():
        grads[key] = tensor.grad.detach().numpy()
    return model, out.loss.item(), out.logits.detach().numpy(), grads, factors, init, checkpoint_heads, enc


def peft_saved_keys(model):
    """The tensor keys of a folder written by PEFT's save_pretrained."""
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        with safe_open(os.path.join(folder, "adapter_model.safetensors"), "np") as f:
            return sorted(f.keys())


def make(case, stem=None, step_fn=step, extra=None, oracle=None):
    """Runs `step_fn` in float32 and float64 and writes `<stem>.json` and `<stem>.safetensors`
    (stem defaults to the case); `extra` is merged into the JSON."""
    spec = CASES[case]
    stem = stem or case
    if not os.path.isdir(spec["folder"]):
        sys.exit(f"missing {spec['folder']}: run `make models`")
    model, loss, logits, grads, factors, init, checkpoint_heads, enc = step_fn(case, torch.float32)
    _, loss64, _, grads64, _, _, _, _ = step_fn(case, torch.float64)
    saved = peft_saved_keys(model)
    if extra is None and sorted(grads) != saved:
        sys.exit(f"{case}: gradient keys {sorted(grads)[:4]}... differ from PEFT's saved keys {saved[:4]}...")

    tensors = {"logits": np.ascontiguousarray(logits, dtype=np.float32)}
    for key, values in init.items():
        tensors[f"init.{key}"] = values.astype(np.float16)
    measured = {"float32_vs_float64_relative_frobenius": {}}
    for key, grad in grads.items():
        measured["float32_vs_float64_relative_frobenius"][key] = relative_frobenius(grad, grads64[key])
        if key in factors:
            left = factors[key]["left"].numpy().astype(np.float32)
            right = factors[key]["right"].numpy().astype(np.float32)
            rebuilt = left.astype(np.float64).T @ right.astype(np.float64)
            error = relative_frobenius(rebuilt, grad)
            if error > 1e-6:
                sys.exit(f"{case}: {key}: left^T.right differs from .grad by {error}")
            measured.setdefault("factor_vs_grad_relative_frobenius", {})[key] = error
            tensors[f"grad.{key}.left"] = np.ascontiguousarray(left)
            tensors[f"grad.{key}.right"] = np.ascontiguousarray(right)
        else:
            tensors[f"grad.{key}"] = np.ascontiguousarray(grad, dtype=np.float32)
    measured["loss_float32_vs_float64_relative"] = abs(loss - loss64) / abs(loss64)

    lora = []
    for key in sorted(k for k in grads if k.endswith(".lora_A.weight")):
        module = key[len(PREFIX) : -len(".lora_A.weight")]
        lora.append(
            {
                "module": module,
                "a": f"{PREFIX}{module}.lora_A.weight",
                "b": f"{PREFIX}{module}.lora_B.weight",
                "scale": spec["alpha"] / spec["r"],
            }
        )
    heads = {}
    for key in sorted(k for k in grads if ".lora_" not in k and ".cross_attention." not in k):
        heads[key] = {
            "shape": list(grads[key].shape),
            "init": "checkpoint" if key in checkpoint_heads else f"init.{key}",
            "gradient": {"left": f"grad.{key}.left", "right": f"grad.{key}.right"}
            if key in factors
            else f"grad.{key}",
        }
    golden = {
        "model": spec["model"],
        "oracle": oracle or "PEFT get_peft_model(task_type=SEQ_CLS) on transformers AutoModelForSequenceClassification, "
        "train() mode with hidden/attention dropout 0 and lora_dropout 0, float32, one loss.backward() "
        "(loss: transformers' mean cross-entropy over the batch)",
        "versions": versions(),
        "tolerance": TOLERANCE,
        "labels": LABELS,
        "input_ids": enc["input_ids"].tolist(),
        "attention_mask": enc["attention_mask"].tolist(),
        "token_type_ids": enc["token_type_ids"].tolist() if "token_type_ids" in enc else None,
        "targets": enc["labels"].tolist(),
        "loss": loss,
        "lora": lora,
        "heads": heads,
        "peft_saved_keys": [k for k in saved if ".lora_" not in k],
        "measured": measured,
    }
    golden.update(extra or {})
    save_file(tensors, os.path.join(HERE, f"{stem}.safetensors"), metadata={"format": "flare-golden"})
    with open(os.path.join(HERE, f"{stem}.json"), "w", encoding="utf-8") as f:
        json.dump(golden, f, indent=1, ensure_ascii=False)
        f.write("\n")
    worst = max(measured["float32_vs_float64_relative_frobenius"].values())
    print(f"wrote Fixtures/training/{stem}.json and {stem}.safetensors (loss {loss:.6f}, float32 vs float64 worst {worst:.2e})")


def versions():
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def main(argv):
    parts = argv[1:] or list(CASES)
    for part in parts:
        if part not in CASES:
            print(f"usage: make_encoder_grads.py [{'|'.join(CASES)}]...", file=sys.stderr)
            return 64
    for part in parts:
        make(part)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

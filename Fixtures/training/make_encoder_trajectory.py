#!/usr/bin/env python3
"""make_encoder_trajectory.py: a 20-step LoRA training run of all-MiniLM-L6-v2 in PyTorch + PEFT,
the run flare-train makes from the same start, and PEFT's logits with the adapter flare-train wrote.

Run from the repository root after fetching the real models (`make models`) and building Flare
(`swift build`, or `swift build -c release`, whichever is newer is used):

    python3 Fixtures/training/make_encoder_trajectory.py
    python3 Fixtures/training/make_encoder_trajectory.py --no-flare   # steps 1-3 only

Needs CPU torch, transformers, peft, numpy and safetensors. Writes into
Fixtures/training/encoder-run/ (next to the committed data, train.jsonl and test.jsonl):

1. init/: the starting adapter, written by PEFT's save_pretrained (converted to float16 first, to
   halve the file; every value is exact in float16). all-MiniLM-L6-v2 as
   BertForSequenceClassification (3 labels, hidden and attention dropout 0), LoraConfig(SEQ_CLS,
   r 4, alpha 8, query and value, lora_dropout 0, modules_to_save classifier and pooler): LoRA A
   uniform in PEFT's default range, B non-zero, the classifier random, the pooler the checkpoint's
   (rounded to float16). adapter_config.json is PEFT's, with base_model_name_or_path set to the hub
   id instead of this machine's path and target_modules sorted (PEFT keeps a set, whose order
   varies); PEFT's README.md is not kept.
2. The oracle: the run flare-train makes with `--init-adapter init --no-shuffle --model-dropout 0
   --max-steps 20 --batch-size 4 --grad-accum 2 --schedule cosine --warmup-steps 3 ...`
   (FLARE_TRAIN_ARGUMENTS below), done in PyTorch the way transformers' Trainer does it: the
   adapter loaded with PeftModel.from_pretrained(is_trainable=True); the 30 examples in file order
   (string labels numbered in sorted order, as flare-train does), tokenized by the model's
   tokenizer (truncation longest_first at --max-length 32), micro-batches of 4 padded on the right
   to their longest row, 2 micro-batches per optimizer step and a shorter last step per epoch (30
   examples: 8 micro-batches, 4 steps an epoch, the 4th of 6 examples), loss = sum of the step's
   cross-entropies / its example count, backpropagated per micro-batch; clip_grad_norm_;
   torch.optim.AdamW with weight decay on the parameters transformers' Trainer decays
   (Trainer.get_decay_parameter_names: not the biases); LambdaLR with
   get_cosine_schedule_with_warmup. Recorded per step: loss, learning rate, gradient norm before
   clipping. The same run in float64 measures the float32 oracle's own rounding.
3. PEFT's logits of test.jsonl's examples with the starting adapter (eval mode).
4. Unless --no-flare: runs the built flare-train with FLARE_TRAIN_ARGUMENTS into a temporary
   folder, loads the adapter it wrote with PeftModel.from_pretrained on
   AutoModelForSequenceClassification (eval mode) and records the logits of test.jsonl's examples,
   the SHA-256 and CRC-32 of the adapter_model.safetensors they come from, scikit-learn's accuracy,
   macro-F1 and confusion matrix of those logits' predictions, and how far flare-train's final
   tensors are from the PyTorch run's (measured, for the record).
5. With 4: runs the built flare-merge --verify (FLARE_MERGE_ARGUMENTS) on that adapter, loads the
   merged folder with transformers alone (AutoModelForSequenceClassification; no missing or
   unexpected keys allowed) and records its logits of test.jsonl's examples, its architectures
   and id2label.

Files:
  init/adapter_config.json, init/adapter_model.safetensors   the starting adapter (PEFT)
  trajectory.json        arguments, token ids, per-step loss / lr / grad norm, measured figures,
                         test-set logits of PEFT with flare-train's adapter, tolerances, versions
  trajectory.safetensors final tensors of the PyTorch run, F32, named as PEFT saves them; the
                         [384, 384] pooler weight is stored as a sketch to keep the file small:
                         `sketch.<key>` = final · R with R = `sketch.projection` ([384, 32], F16-exact
                         normal values), so a comparison of (W · R) estimates the relative Frobenius
                         error of W (E‖X·R‖² = 32‖X‖²)
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

torch.set_num_threads(1)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.join(ROOT, "Fixtures", "training", "encoder-run")
CACHE = os.environ.get("FLARE_CACHE") or os.path.expanduser("~/.cache/flare")
MODEL = os.path.join(CACHE, "models", "all-MiniLM-L6-v2")
PREFIX = "base_model.model."
SEED = 20260301

# The run. The Swift test reads these arguments from trajectory.json; {model}, {data}, {init} and
# {output} are filled in by whoever runs them.
LR = 1e-3
MAX_GRAD_NORM = 1.0
WEIGHT_DECAY = 0.1
WARMUP = 3
STEPS = 20
BATCH = 4
ACCUM = 2
MAX_LENGTH = 32
FLARE_TRAIN_ARGUMENTS = [
    "lora", "--model", "{model}", "--data", "{data}", "--output", "{output}",
    "--task", "classification", "--init-adapter", "{init}", "--no-shuffle", "--model-dropout", "0",
    "--max-steps", str(STEPS), "--batch-size", str(BATCH), "--grad-accum", str(ACCUM),
    "--lr", repr(LR), "--schedule", "cosine", "--warmup-steps", str(WARMUP),
    "--weight-decay", repr(WEIGHT_DECAY), "--max-grad-norm", repr(MAX_GRAD_NORM),
    "--max-length", str(MAX_LENGTH), "--seed", "0", "--quiet",
]
FLARE_MERGE_ARGUMENTS = [
    "--base", "{model}", "--adapter", "{adapter}", "--output", "{output}", "--verify", "--json",
]
TOLERANCE = {
    "loss_relative": 1e-4,
    "final_tensor_relative_frobenius": 1e-3,
    "logits_absolute": 1e-3,
}
SKETCHED = {PREFIX + "bert.pooler.dense.weight"}
SKETCH_COLUMNS = 32


def f16_exact(rng, shape, low, high):
    return rng.uniform(low, high, size=shape).astype(np.float16).astype(np.float32)


def relative_frobenius(got, expected):
    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.linalg.norm(got - expected) / max(np.linalg.norm(expected), 1e-300))


def saved_key(parameter_name):
    """The key PEFT writes for a trainable parameter."""
    return parameter_name.replace(".modules_to_save.default", "").replace(".default", "")


def read_jsonl(name):
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def base_model(dtype=torch.float32):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        MODEL, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    return model.to(dtype)


# MARK: - 1. The starting adapter


def make_init(folder):
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, lora_dropout=0.0,
        target_modules=["query", "value"], modules_to_save=["classifier", "pooler"], bias="none",
    )
    model = get_peft_model(base_model(), config)
    rng = np.random.default_rng(SEED)
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):
            if not parameter.requires_grad:
                continue
            shape = tuple(parameter.shape)
            if ".lora_A." in name:
                bound = 1 / np.sqrt(shape[1])
                values = f16_exact(rng, shape, -bound, bound)
            elif ".lora_B." in name:
                values = f16_exact(rng, shape, -0.05, 0.05)
            elif ".pooler." in name:
                continue  # the checkpoint's pooler
            elif name.endswith(".bias"):
                values = f16_exact(rng, shape, -0.05, 0.05)
            else:
                values = f16_exact(rng, shape, -0.1, 0.1)
            parameter.copy_(torch.from_numpy(values))
    model = model.half()
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    model.save_pretrained(folder)
    readme = os.path.join(folder, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    path = os.path.join(folder, "adapter_config.json")
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    saved["base_model_name_or_path"] = "sentence-transformers/all-MiniLM-L6-v2"
    # PEFT keeps target_modules as a set: its order varies from run to run.
    saved["target_modules"] = sorted(saved["target_modules"])
    with open(path, "w", encoding="utf-8") as f:
        json.dump(saved, f, indent=2, sort_keys=True)
        f.write("\n")


# MARK: - 2. The PyTorch run


def encoded_examples(tokenizer, rows, labels):
    out = []
    for row in rows:
        enc = tokenizer(row["text"], row.get("text_pair"), truncation=True, max_length=MAX_LENGTH)
        out.append(
            {
                "input_ids": enc["input_ids"],
                "token_type_ids": enc["token_type_ids"],
                "label": labels.index(row["label"]),
            }
        )
    return out


def collate(examples, dtype_long=torch.long):
    width = max(len(e["input_ids"]) for e in examples)
    ids, types, mask = [], [], []
    for e in examples:
        pad = width - len(e["input_ids"])
        ids.append(e["input_ids"] + [0] * pad)
        types.append(e["token_type_ids"] + [0] * pad)
        mask.append([1] * len(e["input_ids"]) + [0] * pad)
    return {
        "input_ids": torch.tensor(ids, dtype=dtype_long),
        "token_type_ids": torch.tensor(types, dtype=dtype_long),
        "attention_mask": torch.tensor(mask, dtype=dtype_long),
    }


def train(init_folder, examples, dtype):
    from peft import PeftModel
    from transformers import Trainer, get_cosine_schedule_with_warmup

    model = PeftModel.from_pretrained(base_model(dtype), init_folder, is_trainable=True)
    model.train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay_names = set(Trainer.get_decay_parameter_names(None, model))
    decayed = [p for n, p in named if n in decay_names]
    undecayed = [p for n, p in named if n not in decay_names]
    optimizer = torch.optim.AdamW(
        [
            {"params": decayed, "weight_decay": WEIGHT_DECAY},
            {"params": undecayed, "weight_decay": 0.0},
        ],
        lr=LR,
    )
    scheduler = get_cosine_schedule_with_warmup(optimizer, WARMUP, STEPS)
    micro = [examples[i : i + BATCH] for i in range(0, len(examples), BATCH)]
    steps_per_epoch = -(-len(micro) // ACCUM)
    steps = []
    for step in range(STEPS):
        within = step % steps_per_epoch
        group = micro[within * ACCUM : (within + 1) * ACCUM]
        n = sum(len(rows) for rows in group)
        optimizer.zero_grad()
        loss_sum = 0.0
        for rows in group:
            logits = model(**collate(rows)).logits
            labels = torch.tensor([r["label"] for r in rows])
            loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
            (loss / n).backward()
            loss_sum += float(loss.detach())
        norm = torch.nn.utils.clip_grad_norm_([p for _, p in named], MAX_GRAD_NORM)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        steps.append({"loss": loss_sum / n, "lr": lr, "grad_norm": float(norm)})
    final = {saved_key(n): p.detach().to(torch.float64).numpy() for n, p in named}
    decays = {saved_key(n): n in decay_names for n, _ in named}
    return steps, final, decays, steps_per_epoch


# MARK: - 3. flare-train's run and PEFT's logits with its adapter


def flare_binary(tool="flare-train"):
    candidates = [os.path.join(ROOT, ".build", kind, tool) for kind in ("release", "debug")]
    found = [c for c in candidates if os.path.exists(c)]
    if not found:
        sys.exit(f"no built {tool}: run `swift build` (or use --no-flare)")
    return max(found, key=os.path.getmtime)


def fill(arguments, **values):
    out = []
    for argument in arguments:
        for key, value in values.items():
            argument = argument.replace("{" + key + "}", value)
        out.append(argument)
    return out


def flare_run(init_folder, output):
    binary = flare_binary()
    arguments = fill(
        FLARE_TRAIN_ARGUMENTS, model=MODEL, data=os.path.join(HERE, "train.jsonl"),
        init=init_folder, output=output,
    )
    subprocess.run([binary] + arguments, check=True)
    return binary


def flare_merge(adapter, output):
    arguments = fill(FLARE_MERGE_ARGUMENTS, model=MODEL, adapter=adapter, output=output)
    result = subprocess.run([flare_binary("flare-merge")] + arguments, check=True, capture_output=True)
    return json.loads(result.stdout)


def merged_logits(folder, test_examples):
    """transformers alone (no PEFT) on the folder flare-merge wrote."""
    from transformers import AutoModelForSequenceClassification

    model, info = AutoModelForSequenceClassification.from_pretrained(folder, output_loading_info=True)
    problems = {k: sorted(v) for k, v in info.items() if v}
    if problems:
        sys.exit(f"transformers loads the merged folder with {problems}")
    model.eval()
    rows = []
    with torch.no_grad():
        for start in range(0, len(test_examples), BATCH):
            rows += model(**collate(test_examples[start : start + BATCH])).logits.tolist()
    return {
        "logits": rows,
        "architectures": model.config.architectures,
        "id2label": {str(k): v for k, v in model.config.id2label.items()},
    }


def peft_logits(adapter_folder, test_examples):
    from peft import PeftModel

    model = PeftModel.from_pretrained(base_model(), adapter_folder)
    model.eval()
    rows = []
    with torch.no_grad():
        for start in range(0, len(test_examples), BATCH):
            rows += model(**collate(test_examples[start : start + BATCH])).logits.tolist()
    return rows


def classification_metrics(logits, examples):
    """What `flare-eval classify` reports, from PEFT's logits (scikit-learn's metrics)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    truth = [e["label"] for e in examples]
    values = torch.tensor(logits, dtype=torch.float64)
    predictions = values.argmax(dim=1).tolist()
    top2 = values.topk(2, dim=1).values
    losses = torch.nn.functional.cross_entropy(values, torch.tensor(truth), reduction="none")
    return {
        "logits": logits,
        "predictions": predictions,
        "accuracy": float(accuracy_score(truth, predictions)),
        "macro_f1": float(f1_score(truth, predictions, average="macro")),
        "confusion": confusion_matrix(truth, predictions, labels=[0, 1, 2]).tolist(),
        "loss": float(losses.mean()),
        # The smallest gap between the two largest logits of an example: predictions cannot
        # change under logit errors below half of it.
        "smallest_top2_margin": float((top2[:, 0] - top2[:, 1]).min()),
    }


def main(argv):
    from transformers import AutoTokenizer
    import peft
    import transformers

    run_flare = "--no-flare" not in argv[1:]
    if not os.path.isdir(MODEL):
        sys.exit(f"missing {MODEL}: run `make models`")
    init_folder = os.path.join(HERE, "init")
    make_init(init_folder)

    train_rows = read_jsonl("train.jsonl")
    test_rows = read_jsonl("test.jsonl")
    labels = sorted({r["label"] for r in train_rows})
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    examples = encoded_examples(tokenizer, train_rows, labels)
    test_examples = encoded_examples(tokenizer, test_rows, labels)

    steps, final, decays, steps_per_epoch = train(init_folder, examples, torch.float32)
    steps64, final64, _, _ = train(init_folder, examples, torch.float64)

    rng = np.random.default_rng(SEED + 1)
    projection = rng.normal(0, 1, size=(384, SKETCH_COLUMNS)).astype(np.float16)
    tensors = {"sketch.projection": projection}
    for key, values in final.items():
        if key in SKETCHED:
            sketch = values.astype(np.float32).astype(np.float64) @ projection.astype(np.float64)
            tensors[f"sketch.{key}"] = np.ascontiguousarray(sketch, dtype=np.float32)
        else:
            tensors[f"final.{key}"] = np.ascontiguousarray(values, dtype=np.float32)
    with safe_open(os.path.join(init_folder, "adapter_model.safetensors"), "np") as f:
        init = {k: f.get_tensor(k).astype(np.float64) for k in f.keys()}

    measured = {
        "loss_float32_vs_float64_relative_max": max(
            abs(a["loss"] - b["loss"]) / abs(b["loss"]) for a, b in zip(steps, steps64)
        ),
        "final_float32_vs_float64_relative_frobenius": {
            k: relative_frobenius(final[k], final64[k]) for k in sorted(final)
        },
        # ‖final − init‖ / ‖final‖: how much of each final tensor the 20 steps made.
        "final_change_share": {
            k: relative_frobenius(init[k], final[k]) for k in sorted(final) if k in init
        },
        "clipped_steps": [i + 1 for i, s in enumerate(steps) if s["grad_norm"] > MAX_GRAD_NORM],
    }
    golden = {
        "model": "all-MiniLM-L6-v2 as BertForSequenceClassification (3 labels), LoRA r 4 / alpha 8 on "
        "query and value, modules_to_save classifier and pooler",
        "oracle": "PyTorch + PEFT (PeftModel.from_pretrained(init, is_trainable=True)), transformers "
        "Trainer semantics: AdamW, get_cosine_schedule_with_warmup, clip_grad_norm_, gradient "
        "accumulation with the loss summed over a step's examples / their count; float32",
        "versions": {
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        },
        "tolerance": TOLERANCE,
        "flare_train_arguments": FLARE_TRAIN_ARGUMENTS,
        "labels": labels,
        "steps_per_epoch": steps_per_epoch,
        "train": [{k: e[k] for k in ("input_ids", "token_type_ids", "label")} for e in examples],
        "test": [{k: e[k] for k in ("input_ids", "token_type_ids", "label")} for e in test_examples],
        "steps": steps,
        "decays": decays,
        "sketched": sorted(SKETCHED),
        "measured": measured,
    }

    # PEFT's logits with the starting adapter (read as PEFT wrote it, float16), for
    # `flare-eval classify` on an adapter without flare_labels.json.
    golden["test_peft_with_init_adapter"] = {"logits": peft_logits(init_folder, test_examples)}

    if run_flare:
        with tempfile.TemporaryDirectory() as scratch:
            output = os.path.join(scratch, "out")
            binary = flare_run(init_folder, output)
            adapter_bytes = open(os.path.join(output, "adapter_model.safetensors"), "rb").read()
            golden["flare_adapter_sha256"] = hashlib.sha256(adapter_bytes).hexdigest()
            golden["flare_adapter_crc32"] = zlib.crc32(adapter_bytes)
            golden["flare_binary"] = os.path.relpath(binary, ROOT)
            logits = peft_logits(output, test_examples)
            golden["test_peft_with_flare_adapter"] = classification_metrics(logits, test_examples)
            with open(os.path.join(output, "flare_labels.json"), encoding="utf-8") as f:
                flare_labels = json.load(f)["labels"]
            if flare_labels != labels:
                sys.exit(f"flare-train numbered the labels {flare_labels}, the oracle {labels}")
            with safe_open(os.path.join(output, "adapter_model.safetensors"), "np") as f:
                flare_final = {k: f.get_tensor(k).astype(np.float64) for k in f.keys()}
            measured["flare_vs_oracle_final_relative_frobenius"] = {
                k: relative_frobenius(flare_final[k], final[k]) for k in sorted(final)
            }
            with open(os.path.join(output, "training_log.jsonl"), encoding="utf-8") as f:
                log = [json.loads(line) for line in f if line.strip()]
            measured["flare_vs_oracle_loss_relative"] = [
                abs(e["loss"] - s["loss"]) / abs(s["loss"]) for e, s in zip(log, steps)
            ]
            merged = os.path.join(scratch, "merged")
            report = flare_merge(output, merged)
            golden["flare_merge_arguments"] = FLARE_MERGE_ARGUMENTS
            golden["test_transformers_with_merged"] = merged_logits(merged, test_examples)
            measured["flare_merge_forward_check"] = report["forward"]
            measured["merged_vs_peft_logits_max_abs"] = float(
                np.abs(
                    np.array(golden["test_transformers_with_merged"]["logits"])
                    - np.array(logits)
                ).max()
            )

    save_file(
        tensors, os.path.join(HERE, "trajectory.safetensors"), metadata={"format": "flare-golden"}
    )
    with open(os.path.join(HERE, "trajectory.json"), "w", encoding="utf-8") as f:
        json.dump(golden, f, indent=1, ensure_ascii=False)
        f.write("\n")
    losses = " ".join(f"{s['loss']:.4f}" for s in steps)
    print(f"losses: {losses}")
    norms = " ".join(f"{s['grad_norm']:.3f}" for s in steps)
    print(f"grad norms: {norms}")
    print(f"clipped steps: {measured['clipped_steps']}")
    worst64 = max(measured["final_float32_vs_float64_relative_frobenius"].values())
    print(f"float32 vs float64: loss {measured['loss_float32_vs_float64_relative_max']:.2e}, final {worst64:.2e}")
    if "flare_vs_oracle_final_relative_frobenius" in measured:
        worst = max(measured["flare_vs_oracle_final_relative_frobenius"].items(), key=lambda kv: kv[1])
        print(f"flare-train vs oracle: loss {max(measured['flare_vs_oracle_loss_relative']):.2e}, final {worst[1]:.2e} ({worst[0]})")
    print("wrote Fixtures/training/encoder-run/init/, trajectory.json, trajectory.safetensors")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

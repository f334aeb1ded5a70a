#!/usr/bin/env python3
"""PEFT as the oracle for the adapter folders Flare writes.

1. Goldens: the adapter_config.json PEFT itself writes for the settings Flare's tests use
   (peft-config-causal.json: LlamaForCausalLM, CAUSAL_LM, q_proj/v_proj, r 8, alpha 16, dropout 0.05,
   rsLoRA; peft-config-seqcls.json: BertForSequenceClassification, SEQ_CLS, all-linear, r 4, alpha 8),
   and how PEFT resolves target modules on three tiny models (peft-targets.json: the model's linear
   modules, what all-linear records in target_modules, and which modules get LoRA layers).
2. Check: PeftModel.from_pretrained loads the folders Flare wrote (flare-written/causal and
   flare-written/seqcls, recorded by FlareTrainTests with FLARE_RECORD=1) with no warning, every
   tensor of adapter_model.safetensors lands unchanged in the model, the loaded config equals the one
   PEFT writes for the same settings, and a forward pass with the adapter differs from the base model
   by exactly what the LoRA delta predicts (merge_and_unload's weights equal W + s*B*A).

Run from the repository root (needs torch, transformers, peft, safetensors):
    python3 Fixtures/training/check_peft_loads.py            # check the Flare-written folders
    python3 Fixtures/training/check_peft_loads.py --goldens  # rewrite the three golden files first
Prints "ok" lines and exits 1 on the first mismatch.
"""
import json
import os
import sys
import tempfile
import warnings

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

ROOT = "Fixtures"
HERE = f"{ROOT}/training"
LLAMA = f"{ROOT}/peft/base-llama"
BERT = f"{ROOT}/encoders/tiny-bert-cls"
XLMR = f"{ROOT}/encoders/tiny-xlmr-cls"
torch.manual_seed(0)


def causal_config():
    return LoraConfig(task_type=TaskType.CAUSAL_LM, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                      lora_dropout=0.05, use_rslora=True)


def seqcls_config():
    return LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules="all-linear")


def saved_config(model, config):
    peft = get_peft_model(model, config)
    with tempfile.TemporaryDirectory() as folder:
        peft.save_pretrained(folder)
        with open(f"{folder}/adapter_config.json") as f:
            return json.load(f)


def write_goldens():
    for name, load, path, make in [("causal", AutoModelForCausalLM, LLAMA, causal_config),
                                   ("seqcls", AutoModelForSequenceClassification, BERT, seqcls_config)]:
        config = saved_config(load.from_pretrained(path), make())
        for key in ["target_modules", "modules_to_save"]:
            if isinstance(config.get(key), list):
                config[key] = sorted(config[key])
        with open(f"{HERE}/peft-config-{name}.json", "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")
    targets = {}
    for name, load, path, task in [("base-llama", AutoModelForCausalLM, LLAMA, TaskType.CAUSAL_LM),
                                   ("base-llama-seqcls", AutoModelForSequenceClassification, LLAMA, TaskType.SEQ_CLS),
                                   ("tiny-bert-cls", AutoModelForSequenceClassification, BERT, TaskType.SEQ_CLS),
                                   ("tiny-xlmr-cls", AutoModelForSequenceClassification, XLMR, TaskType.SEQ_CLS)]:
        model = load.from_pretrained(path, num_labels=3) if task == TaskType.SEQ_CLS else load.from_pretrained(path)
        linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        shapes = {n: list(m.weight.shape) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        peft = get_peft_model(model, LoraConfig(task_type=task, r=2, target_modules="all-linear"))
        adapted = sorted({n[len("base_model.model."):].rsplit(".lora_A", 1)[0]
                          for n, _ in peft.named_parameters() if ".lora_A." in n})
        with tempfile.TemporaryDirectory() as folder:
            peft.save_pretrained(folder)
            saved = load_file(f"{folder}/adapter_model.safetensors")
        heads = {k: list(v.shape) for k, v in saved.items() if ".lora_" not in k}
        targets[name] = {
            "saved_head_tensors": heads,
            "linear_modules": linear,
            "linear_shapes": shapes,
            "all_linear_target_modules": sorted(peft.peft_config["default"].target_modules),
            "all_linear_adapted": adapted,
            "modules_to_save": sorted(peft.peft_config["default"].modules_to_save or []),
        }
    with open(f"{HERE}/peft-targets.json", "w") as f:
        json.dump(targets, f, indent=1, sort_keys=True)
        f.write("\n")
    print("ok: goldens written")


def check_folder(name, load, base_path, make):
    folder = f"{HERE}/flare-written/{name}"
    base = load.from_pretrained(base_path)
    reference = load.from_pretrained(base_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft = PeftModel.from_pretrained(base, folder)
    # Any warning fails the check, except transformers' own deprecation notice of 5.x.
    relevant = [str(w.message) for w in caught if "is_gradient_checkpointing" not in str(w.message)]
    if relevant:
        sys.exit(f"{name}: PEFT warned while loading: {relevant}")
    state = dict(peft.named_parameters())
    saved = load_file(f"{folder}/adapter_model.safetensors")
    for key, value in saved.items():
        # PEFT's in-memory names carry the adapter name ("default") and the modules_to_save copy.
        stem, leaf = key.rsplit(".", 1)
        candidates = [f"{stem}.default.{leaf}", f"{stem.rsplit('.', 1)[0]}.modules_to_save.default."
                      f"{stem.rsplit('.', 1)[1]}.{leaf}", f"{stem}.modules_to_save.default.{leaf}"]
        loaded = next((state[c] for c in candidates if c in state), None)
        if loaded is None:
            sys.exit(f"{name}: {key} was not loaded into the model")
        if not torch.equal(loaded.detach(), value):
            sys.exit(f"{name}: {key} differs after loading")
    loaded_config = peft.peft_config["default"].to_dict()
    with open(f"{HERE}/peft-config-{name}.json") as f:
        golden = json.load(f)
    for key, want in golden.items():
        got = loaded_config.get(key)
        if key in ("target_modules", "modules_to_save") and got is not None:
            # Sets: PEFT's SEQ_CLS wrapper appends classifier/score to the loaded list again.
            got = sorted(set(got))
        if key in ("peft_type", "task_type") and got is not None:
            got = str(got.value if hasattr(got, "value") else got)
        if key in ("inference_mode", "base_model_name_or_path", "revision"):
            continue
        if got != want:
            sys.exit(f"{name}: config {key} loads as {got!r}, PEFT writes {want!r}")
    # The merged weights are W + s*B*A for every adapted module (s from the config).
    merged = peft.merge_and_unload()
    config = json.load(open(f"{folder}/adapter_config.json"))
    r, alpha = config["r"], config["lora_alpha"]
    scale = alpha / (r ** 0.5) if config["use_rslora"] else alpha / r
    base_state = reference.state_dict()
    merged_state = merged.state_dict()
    checked = 0
    for key in saved:
        if ".lora_A." not in key:
            continue
        module = key[len("base_model.model."):].rsplit(".lora_A", 1)[0]
        a = saved[key]
        b = saved[key.replace(".lora_A.", ".lora_B.")]
        expected = base_state[f"{module}.weight"] + scale * b @ a
        if not torch.allclose(merged_state[f"{module}.weight"], expected, atol=1e-6, rtol=0):
            sys.exit(f"{name}: merged {module} is not W + s*B*A")
        checked += 1
    print(f"ok: {name}: PEFT loads {folder} unchanged ({len(saved)} tensors, {checked} merged modules checked)")


def main():
    if "--goldens" in sys.argv:
        write_goldens()
    check_folder("causal", AutoModelForCausalLM, LLAMA, causal_config)
    check_folder("seqcls", AutoModelForSequenceClassification, BERT, seqcls_config)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Regenerate Flare's PEFT fixtures and the LoRA merge oracle.

This script is the oracle for `flare-merge`. It builds tiny real models with
transformers, real LoRA adapters with PEFT, merges them with PEFT's
`merge_and_unload()`, and records what came out:

  Fixtures/peft/
    base-llama/           untied LlamaForCausalLM, float32
    base-llama-tied/      the same architecture with tie_word_embeddings=True
    base-llama-bf16/      base-llama cast to bfloat16 and saved in bfloat16
    base-llama-bias/      base-llama's architecture with attention_bias=True
                          (for lora_bias: PEFT cannot merge a LoRA bias into a
                          layer that has no bias)
    base-gpt2/            GPT2LMHeadModel; c_attn/c_proj are Conv1D, (in, out)
    lora-*/               adapters (adapter_config.json + adapter_model.safetensors)
    merged-f32/<case>.safetensors
                          for every float32 case, only the tensors the merge
                          changed, as PEFT merged them
    smollm2-demo-lora/    a bf16 LoRA for the real SmolLM2-135M-Instruct
  Fixtures/golden/
    peft-merges.json      the merge oracle (layout in Fixtures/README.md)

The merged models themselves are too big to commit. They are written to
${FLARE_CACHE:-~/.cache/flare}/peft-oracle/merged/<case>/ (config.json and
model.safetensors, saved by transformers) and the golden describes them.

Needs torch (the CPU build), transformers, safetensors, numpy and peft; the
golden records the versions. Run from anywhere:

    scripts/fetch-models.sh                 # the SmolLM2 GGUF, for smollm2-demo
    swift build -c release                  # .build/release/flare-convert, ditto
    python3 Fixtures/peft/make_fixtures.py  # --no-real-model skips smollm2-demo

With --no-real-model the script leaves smollm2-demo-lora/ and the golden's
"smollm2-demo" entry as they are.

The output is deterministic: every random value comes from a seeded torch
generator, and the script re-executes itself with PYTHONHASHSEED=0 because
PEFT writes `target_modules` (a Python set) in set iteration order.
"""

import os
import sys

if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

import importlib.metadata
import json
import shutil
import struct
import subprocess
import warnings
import zlib

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import peft
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.utils.other import ModulesToSaveWrapper, get_pattern_key

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
warnings.filterwarnings("ignore")
torch.set_num_threads(1)  # float32 results must not depend on the number of cores

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
GOLDEN = os.path.join(ROOT, "Fixtures", "golden", "peft-merges.json")
MERGED_F32 = os.path.join(HERE, "merged-f32")
CACHE = os.environ.get("FLARE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "flare")
ORACLE = os.path.join(CACHE, "peft-oracle")
GGUF = os.path.join(CACHE, "models", "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf")
FLARE_CONVERT = os.path.join(ROOT, ".build", "release", "flare-convert")
SMOLLM2_HF = os.path.join(ORACLE, "smollm2-hf")
SMOLLM2_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"

BASE_KEEP = {"config.json", "model.safetensors", "generation_config.json"}
ADAPTER_KEEP = {"adapter_config.json", "adapter_model.safetensors"}


def rel(path):
    return os.path.relpath(path, ROOT)


def crc(data):
    return zlib.crc32(data) & 0xFFFFFFFF


# --------------------------------------------------------------------------
# Reading safetensors files byte for byte


def read_safetensors(path):
    """{name: (dtype, shape, raw little-endian bytes)} straight from the file."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    data = blob[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        out[name] = (info["dtype"], info["shape"], data[begin:end])
    return out


NP_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64}


def as_float64(dtype, shape, raw):
    """Values of a tensor as float64 (BF16 is widened through its bit pattern)."""
    if dtype == "BF16":
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).astype(np.float64).reshape(shape)
    if dtype == "F16":
        return np.frombuffer(raw, dtype="<f2").astype(np.float64).reshape(shape)
    return np.frombuffer(raw, dtype=NP_DTYPES[dtype]).astype(np.float64).reshape(shape)


def tensor_listing(path):
    return [
        {"name": name, "dtype": dtype, "shape": shape, "crc32": crc(raw)}
        for name, (dtype, shape, raw) in sorted(read_safetensors(path).items())
    ]


# --------------------------------------------------------------------------
# Models


def llama_config(tie, **extra):
    return LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
        **extra,
    )


def save_model(model, folder):
    """transformers' save_pretrained (v5 always writes safetensors), then keep only the model files."""
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    model.save_pretrained(folder)
    for name in os.listdir(folder):
        if name not in BASE_KEEP:
            os.remove(os.path.join(folder, name))


def load_model(folder, dtype):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)


BASES = {}  # name -> golden entry


def make_bases():
    specs = [
        ("base-llama", 1001, lambda: LlamaForCausalLM(llama_config(False))),
        ("base-llama-tied", 1002, lambda: LlamaForCausalLM(llama_config(True))),
        ("base-llama-bias", 1004, lambda: LlamaForCausalLM(llama_config(False, attention_bias=True))),
        (
            "base-gpt2",
            1003,
            lambda: GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64)),
        ),
    ]
    for name, seed, build in specs:
        torch.manual_seed(seed)
        model = build().to(torch.float32).eval()
        if name == "base-llama-bias":
            # transformers initialises biases to zero; give them values so a merged bias is visible
            g = torch.Generator().manual_seed(seed + 50)
            with torch.no_grad():
                for pname, p in sorted(model.named_parameters()):
                    if pname.endswith(".bias"):
                        p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        save_model(model, os.path.join(HERE, name))
        BASES[name] = {"seed": seed}
    # the untied model, cast to bfloat16 and saved as such
    model = load_model(os.path.join(HERE, "base-llama"), torch.float32).to(torch.bfloat16)
    save_model(model, os.path.join(HERE, "base-llama-bf16"))
    BASES["base-llama-bf16"] = {"seed": None, "from": "Fixtures/peft/base-llama, .to(torch.bfloat16)"}
    for name, entry in BASES.items():
        folder = os.path.join(HERE, name)
        cfg = json.load(open(os.path.join(folder, "config.json")))
        entry.update(
            {
                "dir": rel(folder),
                "architecture": cfg["architectures"][0],
                "tie_word_embeddings": cfg.get("tie_word_embeddings"),
                "files": sorted(os.listdir(folder)),
                "tensors": tensor_listing(os.path.join(folder, "model.safetensors")),
            }
        )


# --------------------------------------------------------------------------
# Adapters

ADAPTERS = {}  # name -> golden entry


def fill_adapter(peft_model, seed):
    """Seeded values for every adapter parameter: lora_A ~ 0.1*N, lora_B (weight and bias) ~ 0.05*N,
    DoRA magnitude = row norm of (W + s*B@A) times (1 + 0.05*N), a saved module copy = original + 0.01*N."""
    g = torch.Generator().manual_seed(seed)
    named = dict(peft_model.named_parameters())
    with torch.no_grad():
        for name in sorted(named):
            p = named[name]
            if ".lora_A." in name or ".lora_embedding_A." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif ".lora_B." in name or ".lora_embedding_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            elif ".modules_to_save." in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.01)
        for mname, module in sorted(peft_model.named_modules(), key=lambda kv: kv[0]):
            if isinstance(module, LoraLayer) and "default" in module.lora_magnitude_vector:
                base_w = module.get_base_layer().weight.float()
                delta = module.lora_B["default"].weight @ module.lora_A["default"].weight
                norm = torch.linalg.norm(base_w + module.scaling["default"] * delta, dim=1)
                mag = module.lora_magnitude_vector["default"].weight
                mag.copy_(norm * (1 + 0.05 * torch.randn(mag.shape, generator=g)))


def make_adapter(name, base, seed, config, after_fill=None):
    folder = os.path.join(HERE, name)
    model = load_model(os.path.join(HERE, base), torch.float32)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, config)
    fill_adapter(peft_model, seed)
    if after_fill:
        after_fill(peft_model)
    peft_model.peft_config["default"].base_model_name_or_path = f"Fixtures/peft/{base}"
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    peft_model.save_pretrained(folder, safe_serialization=True)
    for entry in os.listdir(folder):
        if entry not in ADAPTER_KEEP:
            os.remove(os.path.join(folder, entry))
    saved = json.load(open(os.path.join(folder, "adapter_config.json")))
    ADAPTERS[name] = {
        "dir": rel(folder),
        "made_on": f"Fixtures/peft/{base}",
        "seed": seed,
        "config": {
            k: saved.get(k)
            for k in (
                "r",
                "lora_alpha",
                "use_rslora",
                "use_dora",
                "lora_bias",
                "fan_in_fan_out",
                "target_modules",
                "modules_to_save",
                "rank_pattern",
                "alpha_pattern",
                "base_model_name_or_path",
            )
        },
        "tensors": tensor_listing(os.path.join(folder, "adapter_model.safetensors")),
    }


def cast_lora_to_bf16(peft_model):
    for name, p in peft_model.named_parameters():
        if "lora_" in name:
            p.data = p.data.to(torch.bfloat16)


def make_adapters():
    qv = ["q_proj", "v_proj"]
    make_adapter("lora-plain", "base-llama", 2001, LoraConfig(r=4, lora_alpha=8, target_modules=qv, init_lora_weights=False))
    make_adapter("lora-plain-2", "base-llama", 2011, LoraConfig(r=2, lora_alpha=4, target_modules=qv, init_lora_weights=False))
    make_adapter(
        "lora-rslora",
        "base-llama",
        2002,
        LoraConfig(r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False),
    )
    make_adapter(
        "lora-patterns",
        "base-llama",
        2003,
        LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules="all-linear",
            rank_pattern={"model.layers.1.self_attn.q_proj": 2, "mlp.down_proj": 6},
            alpha_pattern={"layers.0.self_attn.v_proj": 3, "down_proj": 12},
            init_lora_weights=False,
        ),
    )
    make_adapter("lora-dora", "base-llama", 2004, LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=qv, init_lora_weights=False))
    make_adapter("lora-bias", "base-llama-bias", 2005, LoraConfig(r=4, lora_alpha=8, lora_bias=True, target_modules=qv, init_lora_weights=False))
    make_adapter(
        "lora-embedding", "base-llama", 2006, LoraConfig(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"], init_lora_weights=False)
    )
    make_adapter(
        "lora-modules-to-save",
        "base-llama",
        2007,
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["lm_head"], init_lora_weights=False),
    )
    make_adapter("lora-tied-head", "base-llama-tied", 2008, LoraConfig(r=4, lora_alpha=8, target_modules=["lm_head"], init_lora_weights=False))
    make_adapter(
        "lora-tied-head-mts",
        "base-llama-tied",
        2010,
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["lm_head"], init_lora_weights=False),
    )
    make_adapter(
        "lora-fan-in-fan-out",
        "base-gpt2",
        2009,
        LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False),
    )


# --------------------------------------------------------------------------
# Merging


def module_records(peft_model, adapter_name, peft_config):
    """Per adapted module, what PEFT resolved: r, alpha, scaling, and which pattern keys matched."""
    records = []
    inner = peft_model.base_model.model
    for name, module in inner.named_modules():
        if isinstance(module, LoraLayer) and adapter_name in module.r:
            base_layer = module.get_base_layer()
            rec = {
                "name": name,
                "lora_class": type(module).__name__,
                "base_class": type(base_layer).__name__,
                "r": module.r[adapter_name],
                "lora_alpha": module.lora_alpha[adapter_name],
                "scaling": module.scaling[adapter_name],
                "use_rslora": module.use_rslora[adapter_name],
                "use_dora": bool(module.use_dora.get(adapter_name, False)),
                "lora_bias": bool(module.lora_bias.get(adapter_name, False)),
                "fan_in_fan_out": bool(getattr(module, "fan_in_fan_out", False)),
            }
            if peft_config.rank_pattern or peft_config.alpha_pattern:
                rk = get_pattern_key(list(peft_config.rank_pattern.keys()), name)
                ak = get_pattern_key(list(peft_config.alpha_pattern.keys()), name)
                rec["rank_pattern_key"] = rk if rk in peft_config.rank_pattern else None
                rec["alpha_pattern_key"] = ak if ak in peft_config.alpha_pattern else None
            records.append(rec)
        elif isinstance(module, ModulesToSaveWrapper):
            records.append({"name": name, "modules_to_save": True})
    return records


def reference_merge(base_file, adapters):
    """The merge by formula, in float64, from the files alone: {tensor name: float64 array}.

    `adapters` is a list of (folder, weight, module records). W' = W + weight * s * B@A
    (transposed for fan_in_fan_out and embeddings), b' = b + weight * s * lora_B.bias,
    DoRA: W' = (m / ||W + s*B@A||_row)[:, None] * (W + s*B@A), a saved module copy replaces the tensor.
    A LoRA on the output head of a tied model (no lm_head.weight in the file) lands on the embedding."""
    base = {k: as_float64(*v) for k, v in read_safetensors(base_file).items()}
    out = dict(base)
    embedding = next(n for n in ("model.embed_tokens.weight", "transformer.wte.weight") if n in base)
    for folder, weight, records in adapters:
        ad = {k: as_float64(*v) for k, v in read_safetensors(os.path.join(folder, "adapter_model.safetensors")).items()}
        for rec in records:
            key = "base_model.model." + rec["name"]
            wname = rec["name"] + ".weight"
            if rec.get("modules_to_save"):
                out[wname] = ad[key + ".weight"]
                continue
            if wname == "lm_head.weight" and wname not in base:
                wname = embedding
            s = rec["scaling"] * weight
            if rec["base_class"] == "Embedding":
                delta = (ad[key + ".lora_embedding_B"] @ ad[key + ".lora_embedding_A"]).T
            else:
                delta = ad[key + ".lora_B.weight"] @ ad[key + ".lora_A.weight"]
                if rec["fan_in_fan_out"]:
                    delta = delta.T
            if rec["use_dora"]:
                v = out[wname] + s * delta
                mag = ad[key + ".lora_magnitude_vector"]
                out[wname] = (mag / np.linalg.norm(v, axis=1))[:, None] * v
            else:
                out[wname] = out[wname] + s * delta
            if rec["lora_bias"]:
                out[rec["name"] + ".bias"] = out[rec["name"] + ".bias"] + s * ad[key + ".lora_B.bias"]
    return out


def describe_merged(merged_file, base_file, with_bits):
    merged = read_safetensors(merged_file)
    base = read_safetensors(base_file)
    tensors = []
    for name in sorted(merged):
        dtype, shape, raw = merged[name]
        entry = {"name": name, "dtype": dtype, "shape": shape, "crc32": crc(raw)}
        if name in base:
            diff = np.abs(as_float64(dtype, shape, raw) - as_float64(*base[name]))
            entry["max_abs_diff"] = float(diff.max()) if diff.size else 0.0
        else:
            entry["max_abs_diff"] = None
        if with_bits and dtype == "F32":
            entry["first8_f32_bits"] = [int(b) for b in np.frombuffer(raw[:32], dtype="<u4")]
        tensors.append(entry)
    return tensors


CASES = {}


def run_case(name, base, adapters, dtype=torch.float32, combine=None, notes=None):
    """adapters: list of (adapter folder name, weight). Without `combine`, the adapters are merged one after
    the other (load, merge_and_unload, load the next onto the result). combine="cat" uses
    add_weighted_adapter(combination_type="cat") and merges the combined adapter."""
    base_dir = os.path.join(HERE, base)
    base_file = os.path.join(base_dir, "model.safetensors")
    model = load_model(base_dir, dtype)
    records_per_adapter = []
    if combine is None:
        for adapter, weight in adapters:
            assert weight == 1.0
            pm = PeftModel.from_pretrained(model, os.path.join(HERE, adapter))
            records = module_records(pm, "default", pm.peft_config["default"])
            records_per_adapter.append(records)
            model = pm.merge_and_unload()
    else:
        first, _ = adapters[0]
        pm = PeftModel.from_pretrained(model, os.path.join(HERE, first), adapter_name=first)
        for adapter, _ in adapters[1:]:
            pm.load_adapter(os.path.join(HERE, adapter), adapter_name=adapter)
        for adapter, _ in adapters:
            records_per_adapter.append(module_records(pm, adapter, pm.peft_config[adapter]))
        pm.add_weighted_adapter([a for a, _ in adapters], [w for _, w in adapters], "combined", combination_type=combine)
        pm.set_adapter("combined")
        combined_records = module_records(pm, "combined", pm.peft_config["combined"])
        model = pm.merge_and_unload(adapter_names=["combined"])
    out_dir = os.path.join(ORACLE, "merged", name)
    save_model(model, out_dir)
    merged_file = os.path.join(out_dir, "model.safetensors")
    merged_cfg = json.load(open(os.path.join(out_dir, "config.json")))
    f32 = dtype == torch.float32
    tensors = describe_merged(merged_file, base_file, with_bits=f32)
    case = {
        "base": rel(base_dir),
        "adapters": [{"dir": f"Fixtures/peft/{a}", "weight": w} for a, w in adapters],
        "method": (
            "PeftModel.from_pretrained + merge_and_unload, one adapter after the other"
            if combine is None
            else f"add_weighted_adapter(combination_type={combine!r}) + merge_and_unload"
        ),
        "dtype": "F32" if f32 else "BF16",
        "modules": records_per_adapter[0] if len(adapters) == 1 else {a: r for (a, _), r in zip(adapters, records_per_adapter)},
        "merged_tie_word_embeddings": merged_cfg.get("tie_word_embeddings"),
        "changed": [t["name"] for t in tensors if t["max_abs_diff"] != 0.0],
        "tensors": tensors,
    }
    if combine is not None:
        case["combined_modules"] = combined_records
    if f32:
        ref = reference_merge(
            base_file,
            [(os.path.join(HERE, a), w, r) for (a, w), r in zip(adapters, records_per_adapter)],
        )
        merged = read_safetensors(merged_file)
        case["reference_max_abs_diff"] = max(float(np.abs(as_float64(*merged[t]) - ref[t]).max()) for t in merged)
        for t in merged:  # float32 rounding of the merge is all that may separate PEFT from the formula
            assert np.all(np.abs(as_float64(*merged[t]) - ref[t]) <= 2e-7 * np.maximum(1.0, np.abs(ref[t]))), (name, t)
        os.makedirs(MERGED_F32, exist_ok=True)
        path = os.path.join(MERGED_F32, f"{name}.safetensors")
        save_file({t: torch.from_numpy(np.frombuffer(merged[t][2], dtype="<f4").reshape(merged[t][1]).copy()) for t in case["changed"]}, path, metadata={"format": "pt"})
        case["merged_f32"] = rel(path)
    else:
        case["merged_f32"] = None
    if notes:
        case["notes"] = notes
    CASES[name] = case
    return case, model


def bf16_roundings(case):
    """For the BF16 case: PEFT's merge against one- and two-rounding references, per changed tensor."""
    base = read_safetensors(os.path.join(HERE, "base-llama-bf16", "model.safetensors"))
    peft_default = read_safetensors(os.path.join(ORACLE, "merged", "lora-bf16", "model.safetensors"))
    # the same merge with PEFT's autocast off: the F32 adapter weights are then cast to the base dtype (bf16)
    model = load_model(os.path.join(HERE, "base-llama-bf16"), torch.bfloat16)
    pm = PeftModel.from_pretrained(model, os.path.join(HERE, "lora-plain"), autocast_adapter_dtype=False)
    lora_dtype = str(pm.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight.dtype)
    no_autocast = {k: v.contiguous() for k, v in pm.merge_and_unload().state_dict().items()}
    adapter = load_file(os.path.join(HERE, "lora-plain", "adapter_model.safetensors"))
    records = {r["name"]: r for r in case["modules"]}
    out = []
    for name in case["changed"]:
        mod = name[: -len(".weight")]
        a = adapter[f"base_model.model.{mod}.lora_A.weight"]
        b = adapter[f"base_model.model.{mod}.lora_B.weight"]
        delta = (b @ a) * records[mod]["scaling"]  # float32, as PEFT computes it
        w = torch.frombuffer(bytearray(base[name][2]), dtype=torch.bfloat16).reshape(base[name][1])
        one = (w.float() + delta).to(torch.bfloat16)
        two = (w.float() + delta.to(torch.bfloat16).float()).to(torch.bfloat16)
        peft_t = torch.frombuffer(bytearray(peft_default[name][2]), dtype=torch.bfloat16).reshape(peft_default[name][1])
        noac = no_autocast[name]
        as_bytes = lambda t: t.contiguous().view(torch.int16).numpy().astype("<i2").tobytes()
        out.append(
            {
                "name": name,
                "n_elements": int(w.numel()),
                "peft_crc32": crc(peft_default[name][2]),
                "peft_no_autocast_crc32": crc(as_bytes(noac)),
                "one_rounding_crc32": crc(as_bytes(one)),
                "two_rounding_crc32": crc(as_bytes(two)),
                "differ": {
                    "peft_vs_one_rounding": int((peft_t != one).sum()),
                    "peft_vs_two_rounding": int((peft_t != two).sum()),
                    "one_vs_two_rounding": int((one != two).sum()),
                    "peft_no_autocast_vs_one_rounding": int((noac != one).sum()),
                    "peft_no_autocast_vs_two_rounding": int((noac != two).sum()),
                },
            }
        )
    return {
        "reference": "one_rounding = (W.float() + s*(B_f32 @ A_f32)).to(bfloat16); two_rounding = (W.float() + (s*(B_f32 @ A_f32)).to(bfloat16).float()).to(bfloat16); s*(B@A) is computed in float32 by torch",
        "peft_default": "PeftModel.from_pretrained(bf16 base, F32 adapter): autocast_adapter_dtype=True keeps the LoRA weights float32, the delta is float32 and `bf16_weight.data += delta` rounds once",
        "peft_no_autocast": f"autocast_adapter_dtype=False: the LoRA weights are cast to the base dtype ({lora_dtype}); the delta is computed in float32 from those bf16 values, rounded to bf16, then added in bf16",
        "tensors": out,
    }


def biasless_probe():
    """lora-bias on a base whose q_proj/v_proj have no bias: PEFT loads it, then refuses to merge."""
    model = load_model(os.path.join(HERE, "base-llama"), torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = PeftModel.from_pretrained(model, os.path.join(HERE, "lora-bias"))
    load_warnings = sorted({str(w.message) for w in caught if "lora_bias" in str(w.message)})
    try:
        pm.merge_and_unload()
        return {"base": "Fixtures/peft/base-llama", "merged": True}
    except Exception as e:  # the expected outcome
        return {
            "base": "Fixtures/peft/base-llama",
            "merged": False,
            "load_warnings": load_warnings,
            "error_type": type(e).__name__,
            "error": str(e),
        }


def pattern_probes():
    probes = [
        (["q_proj", "model.layers.1.self_attn.q_proj"], "model.layers.1.self_attn.q_proj"),
        (["model.layers.1.self_attn.q_proj", "q_proj"], "model.layers.1.self_attn.q_proj"),
        (["proj"], "model.layers.0.self_attn.q_proj"),
        (["self_attn.q_proj"], "model.layers.0.self_attn.q_proj"),
        (["layers.1.self_attn.q_proj"], "model.layers.11.self_attn.q_proj"),
        (["layers.1.self_attn.q_proj"], "model.layers.1.self_attn.q_proj"),
        (["model.layers.1.self_attn.q_proj"], "base_model.model.model.layers.1.self_attn.q_proj"),
        (["layers\\.[01]\\.self_attn\\.v_proj"], "model.layers.0.self_attn.v_proj"),
        (["mlp.down_proj"], "model.layers.0.mlpXdown_proj"),
        (["q_proj"], "model.layers.0.self_attn.q_proj_extra"),
        (["down_proj", "mlp.down_proj"], "model.layers.1.mlp.down_proj"),
    ]
    out = []
    for patterns, key in probes:
        found = get_pattern_key(patterns, key)
        out.append({"patterns": patterns, "key": key, "match": found if found in patterns else None})
    return out


# --------------------------------------------------------------------------
# SmolLM2 demo


def smollm2_demo():
    if not os.path.isfile(GGUF):
        sys.exit(f"missing {GGUF}: run scripts/fetch-models.sh (or pass --no-real-model)")
    if not os.access(FLARE_CONVERT, os.X_OK):
        sys.exit(f"missing {FLARE_CONVERT}: run swift build -c release (or pass --no-real-model)")
    os.makedirs(ORACLE, exist_ok=True)
    subprocess.run([FLARE_CONVERT, GGUF, SMOLLM2_HF, "--force", "-q"], check=True)
    base_file = os.path.join(SMOLLM2_HF, "model.safetensors")
    folder = os.path.join(HERE, "smollm2-demo-lora")

    model = load_model(SMOLLM2_HF, torch.float32)
    torch.manual_seed(3001)
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    g = torch.Generator().manual_seed(3001)
    named = dict(pm.named_parameters())
    with torch.no_grad():
        for name in sorted(named):
            p = named[name]
            if ".lora_A." in name:
                p.copy_(torch.randn(p.shape, generator=g) / 24.0)  # about 1/sqrt(576)
            elif ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
    cast_lora_to_bf16(pm)
    pm.peft_config["default"].base_model_name_or_path = SMOLLM2_REPO
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    pm.save_pretrained(folder, safe_serialization=True)
    for entry in os.listdir(folder):
        if entry not in ADAPTER_KEEP:
            os.remove(os.path.join(folder, entry))
    del pm, model

    model = load_model(SMOLLM2_HF, torch.float32)
    pm = PeftModel.from_pretrained(model, folder)
    records = module_records(pm, "default", pm.peft_config["default"])
    lora_dtype = str(pm.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight.dtype)
    merged = pm.merge_and_unload()
    out_dir = os.path.join(ORACLE, "merged", "smollm2-demo")
    save_model(merged, out_dir)
    del pm, model, merged
    merged_file = os.path.join(out_dir, "model.safetensors")
    merged_cfg = json.load(open(os.path.join(out_dir, "config.json")))

    base = read_safetensors(base_file)
    result = read_safetensors(merged_file)
    ad = {k: as_float64(*v) for k, v in read_safetensors(os.path.join(folder, "adapter_model.safetensors")).items()}
    changed, unchanged, ref_max = [], 0, 0.0
    scaling = {r["name"]: r["scaling"] for r in records}
    for name in sorted(result):
        dtype, shape, raw = result[name]
        braw = base[name][2]  # flare-convert writes every tensor the merged model has
        if raw == braw:
            unchanged += 1
            continue
        mv = as_float64(dtype, shape, raw)
        bv = as_float64(*base[name])
        mod = name[: -len(".weight")]
        ref = bv + scaling[mod] * (ad[f"base_model.model.{mod}.lora_B.weight"] @ ad[f"base_model.model.{mod}.lora_A.weight"])
        ref_max = max(ref_max, float(np.abs(mv - ref).max()))
        assert np.all(np.abs(mv - ref) <= 2e-7 * np.maximum(1.0, np.abs(ref))), name
        changed.append(
            {
                "name": name,
                "dtype": dtype,
                "shape": shape,
                "crc32": crc(raw),
                "base_crc32": crc(braw),
                "max_abs_diff": float(np.abs(mv - bv).max()),
                "first8_f32_bits": [int(b) for b in np.frombuffer(raw[:32], dtype="<u4")],
            }
        )
    convert_check = None
    convert_golden = os.path.join(ROOT, "Fixtures", "golden", "convert-smollm2.json")
    if os.path.isfile(convert_golden):
        expected = {t["hf_name"]: t["hf_f32_crc32"] for t in json.load(open(convert_golden))["quantized"]["tensors"]}
        convert_check = all(expected.get(c["name"]) == c["base_crc32"] for c in changed)
    adapter_file = os.path.join(folder, "adapter_model.safetensors")
    return {
        "gguf": os.path.basename(GGUF),
        "base": "${FLARE_CACHE:-~/.cache/flare}/peft-oracle/smollm2-hf",
        "base_made_by": "flare-convert SmolLM2-135M-Instruct.Q4_1.gguf <base> --force -q (F32 HF folder)",
        "base_crc32s_match_convert_golden": convert_check,
        "adapter": {
            "dir": rel(folder),
            "seed": 3001,
            "file_size": os.path.getsize(adapter_file),
            "file_crc32": crc(open(adapter_file, "rb").read()),
            "tensor_count": len(ad),
            "values": "lora_A = N(0,1)/24, lora_B = 0.01*N(0,1), seeded, then rounded to bfloat16 and saved in bfloat16",
            "lora_dtype_in_peft_after_load": lora_dtype,
        },
        "modules": records,
        "merge": "PeftModel.from_pretrained(float32 base, bf16 adapter) + merge_and_unload; saved by transformers",
        "merged_tie_word_embeddings": merged_cfg.get("tie_word_embeddings"),
        "reference_max_abs_diff": ref_max,
        "unchanged_tensor_count": unchanged,
        "changed": changed,
    }


# --------------------------------------------------------------------------


def main():
    real = "--no-real-model" not in sys.argv[1:]
    previous = json.load(open(GOLDEN)) if os.path.isfile(GOLDEN) else {}
    if os.path.isdir(MERGED_F32):
        shutil.rmtree(MERGED_F32)

    make_bases()
    make_adapters()

    run_case("lora-plain", "base-llama", [("lora-plain", 1.0)])
    run_case("lora-rslora", "base-llama", [("lora-rslora", 1.0)], notes="use_rslora: scaling = lora_alpha / sqrt(r)")
    run_case(
        "lora-patterns",
        "base-llama",
        [("lora-patterns", 1.0)],
        notes=(
            "target_modules='all-linear' is expanded by PEFT to every nn.Linear except the output head and saved as a "
            "list. A pattern key K matches module name N when re.match(r'(.*\\.)?(K)$', N) does (K is a regex and must "
            "start at a dot boundary). The first matching key wins, in the dict's order; adapter_config.json is written "
            "with sort_keys=True, so after loading, that order is alphabetical. N is the module name inside the "
            "transformers model (model.layers.0.self_attn.q_proj), without PEFT's base_model.model. prefix."
        ),
    )
    run_case(
        "lora-dora",
        "base-llama",
        [("lora-dora", 1.0)],
        notes=(
            "DoRA: V = W + s*B@A, W' = (m / ||V||)[:, None] * V, where ||V|| is the L2 norm of each output row "
            "(torch.linalg.norm(V, dim=1) for W of shape [out, in]) and m = lora_magnitude_vector, shape [out]."
        ),
    )
    run_case(
        "lora-bias",
        "base-llama-bias",
        [("lora-bias", 1.0)],
        notes="lora_bias: lora_B has a bias; merged bias = b + s * lora_B.bias. Needs a base bias, hence base-llama-bias (attention_bias=True).",
    )
    CASES["lora-bias"]["on_biasless_base"] = biasless_probe()
    run_case(
        "lora-embedding",
        "base-llama",
        [("lora-embedding", 1.0)],
        notes=(
            "Embedding LoRA: lora_embedding_A [r, vocab], lora_embedding_B [hidden, r], delta = s * (B @ A).T. "
            "PEFT also saves the embedding's own weight as ...embed_tokens.base_layer.weight in the adapter "
            "(save_embedding_layers='auto' turns itself on when an embedding is targeted)."
        ),
    )
    run_case(
        "lora-modules-to-save",
        "base-llama",
        [("lora-modules-to-save", 1.0)],
        notes="modules_to_save: the adapter holds a full copy, base_model.model.lm_head.weight, which replaces the base tensor.",
    )
    run_case(
        "lora-tied-head",
        "base-llama-tied",
        [("lora-tied-head", 1.0)],
        notes=(
            "LoRA on lm_head of a tied model: lm_head.weight and embed_tokens.weight are one Parameter, the in-place merge "
            "adds the delta to it, so the input embedding changes too and the model stays tied (tie_word_embeddings "
            "stays true, only model.embed_tokens.weight is saved). PEFT only warns. The adapter also holds "
            "base_model.model.lm_head.base_layer.weight (the tied matrix)."
        ),
    )
    run_case(
        "lora-tied-head-mts",
        "base-llama-tied",
        [("lora-tied-head-mts", 1.0)],
        notes=(
            "modules_to_save=['lm_head'] on a tied model: the saved copy replaces lm_head, the two weights no longer share "
            "storage, and merge_and_unload sets tie_word_embeddings to false; lm_head.weight is then saved separately and "
            "embed_tokens.weight is unchanged."
        ),
    )
    run_case(
        "lora-fan-in-fan-out",
        "base-gpt2",
        [("lora-fan-in-fan-out", 1.0)],
        notes="GPT-2 Conv1D stores its weight as [in, out]; with fan_in_fan_out the delta is s * (B @ A).T.",
    )
    case, _ = run_case("lora-bf16", "base-llama-bf16", [("lora-plain", 1.0)], dtype=torch.bfloat16)
    case["bf16"] = bf16_roundings(case)
    run_case(
        "lora-mixed-weights",
        "base-llama",
        [("lora-plain", 1.0), ("lora-plain-2", 1.0)],
        notes="lora-plain merged into base-llama, then lora-plain-2 merged into that result, all in float32.",
    )
    run_case(
        "lora-mixed-weighted",
        "base-llama",
        [("lora-plain", 0.75), ("lora-plain-2", -0.5)],
        combine="cat",
        notes=(
            "add_weighted_adapter(combination_type='cat'): A = cat(w_i * s_i * A_i), B = cat(B_i), r = sum r_i, "
            "lora_alpha = r (scaling 1), so W' = W + sum_i w_i * s_i * B_i @ A_i."
        ),
    )

    golden = {
        "generator": "Fixtures/peft/make_fixtures.py",
        "versions": {
            p: importlib.metadata.version(p) for p in ("peft", "torch", "transformers", "safetensors", "numpy")
        },
        "notes": [
            "crc32: zlib CRC-32 of the tensor's little-endian bytes as saved in model.safetensors.",
            "max_abs_diff: max |merged - base| over the tensor, in float64 (BF16 widened exactly); null if the base has no such tensor.",
            "first8_f32_bits: the first 8 merged values (row-major) as float32 bit patterns, F32 cases only.",
            "changed: the tensors with max_abs_diff != 0; merged_f32 holds exactly those, as PEFT merged them.",
            "reference_max_abs_diff: max |PEFT merged - the formula in float64| over every merged tensor, computed from the fixture files alone.",
            "modules: what PEFT resolved per adapted module (r, lora_alpha, scaling = lora_alpha/r, or lora_alpha/sqrt(r) with use_rslora).",
            "Merged models are saved by transformers to ${FLARE_CACHE:-~/.cache/flare}/peft-oracle/merged/<case>/ (not committed).",
            "torch runs single-threaded, so the float32 results do not depend on the number of cores.",
        ],
        "bases": BASES,
        "adapters": ADAPTERS,
        "pattern_probes": pattern_probes(),
        "cases": CASES,
    }
    if real:
        golden["smollm2-demo"] = smollm2_demo()
    elif "smollm2-demo" in previous:
        golden["smollm2-demo"] = previous["smollm2-demo"]
    with open(GOLDEN, "w") as f:
        json.dump(golden, f, indent=1, sort_keys=False)
        f.write("\n")
    print(f"wrote {rel(GOLDEN)}: {len(CASES)} cases" + (", smollm2-demo" if "smollm2-demo" in golden else ""))


if __name__ == "__main__":
    main()

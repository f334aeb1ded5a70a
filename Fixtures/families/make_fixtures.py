#!/usr/bin/env python3
"""Tiny Qwen2, Qwen3, Gemma 2 and Gemma 3 models with random weights, and the goldens Flare is
checked against.

For each family (Qwen2 with a tied head and q/k/v biases; Qwen3 with an untied head, q/k RMSNorm
and a head size that is not hidden / heads; Gemma 2 with a sliding window of 4 tokens on layer 0
and soft-caps of 5 (attention) and 3 (logits), small enough to bite; Gemma 3 with six layers,
five of them sliding (window 4) with their own RoPE base, and q/k RMSNorm):

  tiny-<family>/                config.json, model.safetensors (F32, seeded random weights made
                                by transformers' <Family>ForCausalLM from a config), tokenizer.json
                                (a byte-level BPE trained here with the `tokenizers` library, with
                                Qwen2's pre-tokenizer) and tokenizer_config.json.
  tiny-<family>-lora/           a PEFT LoRA adapter (r 4, alpha 8, every linear layer of the
                                blocks), seeded random A and B.
  tiny-<family>-grads.safetensors
                                PEFT's gradients of every LoRA tensor for one causal-LM step
                                (the prompts as a right-padded batch), float32.
  tiny-<family>-flare-grads.safetensors
                                The same for one FLARE step (add_relu on q_proj and v_proj, the
                                second prompt as the source of the first; `flare_step`).
  tiny-<family>-merged.safetensors
                                PEFT's merge_and_unload() of the two, the tensors PEFT changed.
  spm-{gemma,llama2}-tokenizer.json
                                SentencePiece-style BPE tokenizers (`make_spm_tokenizers`): Gemma's
                                and Llama 2's tokenizer.json form, trained here; golden.json's
                                "spm_tokenizers" has the ids and text `tokenizers` gives for
                                Fixtures/tokenizers/hf-golden.json's strings.
  golden.json                   per family, per prompt: the token ids (the tokenizer above, no
                                special tokens) and the logits of the first, middle and last
                                positions, from
                                transformers (float32, eager attention); the same with the
                                adapter applied unmerged by PEFT; and llama.cpp's logits of those
                                positions (F32 KV cache) and its tokens of the text, on the
                                GGUF flare-convert writes from the folder (F32), with that file's
                                CRC-32, so the test knows it checks the same bytes. For Gemma
                                also how far llama.cpp's logits are from transformers' with ggml's
                                F16 GELU table put in (`f16_gelu_transformers_vs_llamacpp`): its
                                GELU explains its 1e-3 distance from transformers.

Oracles: transformers 5.25.0, peft 0.21.2, torch 2.15 (CPU), tokenizers; llama-cpp-python 0.3.36.
The llama.cpp part needs Flare's converter: pass its path (after `swift build`).

    python3 Fixtures/families/make_fixtures.py .build/debug/flare-convert

Deterministic: the same seeds give the same files.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import types
import zlib

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    Qwen2Config,
    Qwen3Config,
)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "Fixtures", "fusion"))
from make_fusion_goldens import fuse  # noqa: E402

torch.set_num_threads(1)  # the same reductions on every run: the outputs are deterministic
VOCAB = 288
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PROMPTS = [
    "Once upon a time, there was a little",
    "In the beginning God created the heaven and the earth. 1234",
]
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_tokenizer(folder):
    """A byte-level BPE of VOCAB tokens (the 256 bytes, merges, one special token)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    with open(os.path.join(ROOT, "Fixtures", "llama", "prompts.txt"), encoding="utf-8") as f:
        text = f.read()
    tok.train_from_iterator([text] * 4 + PROMPTS, trainer=trainer)
    assert tok.get_vocab_size() <= VOCAB, tok.get_vocab_size()
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                   "model_max_length": 128, "tokenizer_class": "PreTrainedTokenizerFast"},
                  f, indent=2, sort_keys=True)
        f.write("\n")
    return tok


def make_spm_tokenizers():
    """SentencePiece-style BPE tokenizer.json files, as Gemma's and Llama 2's are: a BPE with
    byte_fallback over "▁"-spelled text, no pre-tokenizer (the whole text one word), the 256
    `<0xXX>` byte tokens in the vocabulary; Gemma's normalizer replaces spaces, Llama 2's also
    prepends "▁" (and its decoder strips it). Trained here on prompts.txt (400 pieces), and the
    ids and decoded text `tokenizers` gives for hf-golden.json's strings."""
    with open(os.path.join(ROOT, "Fixtures", "llama", "prompts.txt"), encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    with open(os.path.join(ROOT, "Fixtures", "tokenizers", "hf-golden.json"), encoding="utf-8") as f:
        strings = json.load(f)["strings"]
    out = {}
    for style in ("gemma", "llama2"):
        steps = [normalizers.Replace(" ", "\u2581")]
        decode = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
        if style == "llama2":
            steps.insert(0, normalizers.Prepend("\u2581"))
            decode.append(decoders.Strip(" ", 1, 0))
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
        tok.normalizer = normalizers.Sequence(steps)
        tok.decoder = decoders.Sequence(decode)
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<unk>", "<bos>"],
                                      show_progress=False)
        tok.train_from_iterator(lines, trainer=trainer)
        # The byte tokens join the vocabulary as ordinary pieces (as in Gemma's), after the
        # special tokens; the trained pieces keep their order after them.
        spec = json.loads(tok.to_str())
        vocab = spec["model"]["vocab"]
        specials = ["<pad>", "<unk>", "<bos>"]
        trained = [p for p, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if p not in specials]
        bytes_ = [f"<0x{b:02X}>" for b in range(256)]
        ordered = specials + bytes_ + [p for p in trained if p not in bytes_]
        spec["model"]["vocab"] = {p: i for i, p in enumerate(ordered)}
        for entry in spec["added_tokens"]:
            entry["id"] = spec["model"]["vocab"][entry["content"]]
        text = json.dumps(spec, ensure_ascii=False, indent=2)
        path = os.path.join(HERE, f"spm-{style}-tokenizer.json")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        tok = Tokenizer.from_file(path)
        cases = []
        for string in strings:
            ids = tok.encode(string, add_special_tokens=False).ids
            cases.append({"ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False)})
        out[style] = cases
    return {"strings": strings, "cases": out}


def config_for(family):
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  rms_norm_eps=1e-6, eos_token_id=0, bos_token_id=None)
    if family == "qwen2":
        return Qwen2Config(tie_word_embeddings=True, rope_theta=10000.0, **common)
    if family == "qwen3":
        return Qwen3Config(tie_word_embeddings=False, head_dim=16, rope_theta=1000000.0, **common)
    # Gemma: query_pre_attn_scalar equal to the head size, which is what llama.cpp derives for
    # these sizes (a GGUF cannot hold another value).
    if family == "gemma2":
        return Gemma2Config(head_dim=16, query_pre_attn_scalar=16, sliding_window=4,
                            attn_logit_softcapping=5.0, final_logit_softcapping=3.0,
                            pad_token_id=0, **common)
    common.update(num_hidden_layers=6, num_key_value_heads=1)
    return Gemma3TextConfig(head_dim=8, query_pre_attn_scalar=8, sliding_window=4,
                            pad_token_id=0, **common)


def randomize(model, seed, gemma):
    """Weights ~ N(0, 0.2), norms 1 + 0.1·N (Gemma's, applied as 1 + w: 0.1·N), biases 0.1·N:
    logits of a few units, so every part of the arithmetic shows in them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_((0 if gemma else 1) + 0.1 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.2 * noise)


def positions(ids):
    """The positions whose logits are kept: the first, the middle and the last."""
    return [0, len(ids) // 2, len(ids) - 1]


def rows(matrix, ids):
    """Those rows, 7 significant digits (the tests' tolerance is 1e-4)."""
    return [[float(f"{float(x):.7g}") for x in matrix[p]] for p in positions(ids)]


def logits_of(model, ids):
    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=False).logits[0]
    return rows(out.tolist(), ids)


def save_gradients(peft_model, name):
    """Every trainable tensor's gradient, under its module path
    (`model.layers.0.self_attn.q_proj.lora_A`), to `name` next to this script."""
    grads = {}
    for key, p in peft_model.named_parameters():
        if p.requires_grad:
            key = key.removeprefix("base_model.model.").replace(".default.weight", "")
            grads[key] = p.grad.detach().clone().contiguous()
    save_file(grads, os.path.join(HERE, name), metadata={"format": "pt"})


def training_step(peft_model, sequences, family):
    """One causal-LM step of the adapter as saved (lora_dropout 0): the prompts right-padded with
    token 0, labels the ids with -100 on padding, transformers' loss (shifted, mean over the
    label tokens), loss.backward(). The gradients go to tiny-<family>-grads.safetensors under
    the module path (`model.layers.0.self_attn.q_proj.lora_A`)."""
    t = max(len(x) for x in sequences)
    ids = [x + [0] * (t - len(x)) for x in sequences]
    mask = [[1] * len(x) + [0] * (t - len(x)) for x in sequences]
    labels = [x + [-100] * (t - len(x)) for x in sequences]
    peft_model.train()
    peft_model.zero_grad()
    out = peft_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                     labels=torch.tensor(labels), use_cache=False)
    out.loss.backward()
    save_gradients(peft_model, f"tiny-{family}-grads.safetensors")
    peft_model.zero_grad()
    peft_model.eval()
    count = sum(1 for row in labels for label in row[1:] if label != -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "label_count": count,
            "loss": out.loss.item(), "scale": 2.0}


class F16GELU(torch.nn.Module):
    """ggml's GELU on CPU (GGML_GELU_FP16): the input rounded to F16, the tanh GELU of it
    looked up as an F16 value; x ≤ -10 gives 0, x ≥ 10 gives x."""

    def forward(self, x):
        y = torch.nn.functional.gelu(x.half().float(), approximate="tanh").half().float()
        return torch.where(x <= -10, torch.zeros_like(x), torch.where(x >= 10, x, y))


def flare_step(peft_model, target, source, family):
    """One FLARE step (FLARE.md §2.2) with the adapter as saved: q_proj and v_proj fused with
    add_relu, `y = W·x_t + s·(relu(A·x_s) + relu(A·x_t))·Bᵀ`, the other LoRA layers plain; x_s
    the hidden state entering the same block when the base model (adapters off, no gradient)
    runs the source (transformers' hidden_states[i]: for Gemma the embeddings already scaled
    by √hidden). One sequence, target and source of the same length (position j fuses with j),
    labels the target ids; gradients to tiny-<family>-flare-grads.safetensors."""
    n = min(len(target), len(source))
    target, source = target[:n], source[:n]
    sources = {}
    layers = peft_model.base_model.model.model.layers
    originals = []

    def fused(module, index):
        def forward(self, x, *args, **kwargs):
            y = self.base_layer(x)
            if self.disable_adapters:
                return y
            a = self.lora_A["default"].weight
            b = self.lora_B["default"].weight
            f = fuse("add_relu", sources[index] @ a.T, x @ a.T, None, 1, None)
            return y + self.scaling["default"] * f @ b.T
        originals.append((module, module.forward))
        module.forward = types.MethodType(forward, module)

    for i, layer in enumerate(layers):
        for proj in ("q_proj", "v_proj"):
            fused(getattr(layer.self_attn, proj), i)
    peft_model.train()
    peft_model.zero_grad()
    with torch.no_grad(), peft_model.disable_adapter():
        hidden = peft_model(input_ids=torch.tensor([source]), use_cache=False,
                            output_hidden_states=True).hidden_states
    for i in range(len(layers)):
        sources[i] = hidden[i].detach()
    out = peft_model(input_ids=torch.tensor([target]), labels=torch.tensor([target]),
                     use_cache=False)
    out.loss.backward()
    save_gradients(peft_model, f"tiny-{family}-flare-grads.safetensors")
    for module, forward in originals:
        module.forward = forward
    peft_model.zero_grad()
    peft_model.eval()
    return {"target_ids": target, "source_ids": source, "fusion": "add_relu",
            "fused": ["q_proj", "v_proj"], "label_count": n - 1, "loss": out.loss.item(),
            "scale": 2.0}


def make_family(family, seed, converter):
    folder = os.path.join(HERE, f"tiny-{family}")
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    tok = make_tokenizer(folder)
    torch.manual_seed(seed)
    config = config_for(family)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").float().eval()
    gemma = family.startswith("gemma")
    randomize(model, seed, gemma)
    # save_pretrained writes config.json and model.safetensors (the tied head is not stored).
    model.save_pretrained(folder)
    for name in os.listdir(folder):
        if name not in ("config.json", "model.safetensors", "tokenizer.json",
                        "tokenizer_config.json"):
            os.remove(os.path.join(folder, name))
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").float().eval()
    cases = []
    for text in PROMPTS:
        ids = tok.encode(text, add_special_tokens=False).ids
        cases.append({"text": text, "ids": ids, "positions": positions(ids),
                      "logits": logits_of(model, ids)})

    # PEFT: a LoRA on every linear layer, applied unmerged, then merged.
    lora_folder = os.path.join(HERE, f"tiny-{family}-lora")
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, lora_dropout=0.0,
                          init_lora_weights=False))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in sorted(peft_model.named_parameters()):
            if ".lora_A." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            elif ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    peft_model.peft_config["default"].base_model_name_or_path = f"Fixtures/families/tiny-{family}"
    if os.path.isdir(lora_folder):
        shutil.rmtree(lora_folder)
    peft_model.save_pretrained(lora_folder, safe_serialization=True)
    for name in os.listdir(lora_folder):
        if name not in ("adapter_config.json", "adapter_model.safetensors"):
            os.remove(os.path.join(lora_folder, name))
    # PEFT writes target_modules from a set, in hash order: sorted, the file is deterministic.
    config_path = os.path.join(lora_folder, "adapter_config.json")
    with open(config_path, encoding="utf-8") as f:
        saved = json.load(f)
    saved["target_modules"] = sorted(saved["target_modules"])
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(saved, f, indent=2, sort_keys=True)
        f.write("\n")
    peft_model.eval()
    for case in cases:
        case["lora_logits"] = logits_of(peft_model, case["ids"])
    training = training_step(peft_model, [c["ids"] for c in cases], family)
    flare = flare_step(peft_model, cases[0]["ids"], cases[1]["ids"], family)
    merged = peft_model.merge_and_unload()
    changed = {name: t.detach().clone().contiguous() for name, t in merged.state_dict().items()
               if any(f".{target}." in name for target in LORA_TARGETS)}
    save_file(changed, os.path.join(HERE, f"tiny-{family}-merged.safetensors"),
              metadata={"format": "pt"})

    # llama.cpp on the GGUF flare-convert writes.
    with tempfile.TemporaryDirectory() as scratch:
        gguf = os.path.join(scratch, f"tiny-{family}.gguf")
        subprocess.run([converter, folder, gguf, "--outtype", "f32", "--quiet"], check=True)
        with open(gguf, "rb") as f:
            digest = zlib.crc32(f.read())
        from llama_cpp import Llama
        # F32 keys and values (llama.cpp's cache is F16 unless told), no flash attention.
        llm = Llama(model_path=gguf, n_ctx=128, n_batch=128, n_threads=2, logits_all=True,
                    type_k=0, type_v=0, flash_attn=False, verbose=False)
        for case in cases:
            llm.reset()
            llm.eval(case["ids"])
            case["llamacpp_logits"] = rows(llm.scores[: len(case["ids"])].tolist(), case["ids"])
            case["llamacpp_tokens"] = llm.tokenize(case["text"].encode(), add_bos=False,
                                                   special=False)
        del llm
    if gemma:
        # Why llama.cpp's Gemma logits are ~1e-3 from transformers': with ggml's F16 GELU put
        # into transformers, the two agree far more closely (recorded, not asserted here).
        base = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
        for layer in base.model.layers:
            layer.mlp.act_fn = F16GELU()
        for case in cases:
            patched = np.array(logits_of(base, case["ids"]))
            case["f16_gelu_transformers_vs_llamacpp"] = float(
                np.abs(patched - np.array(case["llamacpp_logits"])).max())
    return {"folder": f"Fixtures/families/tiny-{family}", "seed": seed, "gguf_crc32": digest,
            "cases": cases, "training": training, "flare": flare}


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    converter = os.path.abspath(sys.argv[1])
    import llama_cpp
    import peft
    import transformers
    golden = {
        "oracles": {"transformers": transformers.__version__, "peft": peft.__version__,
                    "torch": torch.__version__, "llama_cpp_python": llama_cpp.__version__},
        "families": {"qwen2": make_family("qwen2", 20261205, converter),
                     "qwen3": make_family("qwen3", 20261206, converter),
                     "gemma2": make_family("gemma2", 20261207, converter),
                     "gemma3": make_family("gemma3", 20261208, converter)},
        "spm_tokenizers": make_spm_tokenizers(),
    }
    with open(os.path.join(HERE, "golden.json"), "w", encoding="utf-8") as f:
        json.dump(golden, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()

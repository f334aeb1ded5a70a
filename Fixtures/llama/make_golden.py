#!/usr/bin/env python3
"""Golden values for Flare's Llama forward pass, from transformers (CPU, float32).

Model: SmolLM2-135M-Instruct. The GGUF (Q4_1) fetched by scripts/fetch-models.sh is converted
to an F32 HF folder by `flare-convert FILE.gguf OUT` (the tests make the same folder under
$FLARE_CACHE/models/smollm2-hf), and transformers' LlamaForCausalLM loads that folder. Both
sides therefore run the same F32 weights; what is compared is the arithmetic.

Writes, next to this script:
  smollm2-golden.json   per prompt: token ids (the tokenizer.json in the folder, no BOS),
                        the top-10 ids and logits at the last position, the greedy
                        continuation (ids and text) where asked; transformers' version.
  smollm2-logits.f32    the full last-position logits of every prompt, little-endian
                        float32, prompts in the JSON's order (vocab values each).
  smollm2-lora.json     the same model with the PEFT adapter Fixtures/peft/smollm2-demo-lora
                        applied unmerged by PEFT: top-10 at the last position per prompt.

  The golden JSON also holds "perplexity": the perplexity of Fixtures/llama/prompts.txt with
  flare-eval's rule (the whole file tokenized without special tokens, cut into windows of 32
  tokens that do not overlap, every token of a window but its first scored given the ones
  before it in the window), computed from transformers' logits in float64.

Usage: python3 Fixtures/llama/make_golden.py HF_FOLDER
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = Path(__file__).resolve().parent
PROMPTS = [
    ("en", "Once upon a time, there was a little", 15),
    ("es", "La capital de Francia es", 8),
    ("de", "Der schnelle braune Fuchs springt über den", 0),
    ("zh", "人工智能的未来是", 0),
    ("code", "def fibonacci(n):\n    ", 0),
]


def main() -> None:
    folder = sys.argv[1]
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)
    model.eval()
    cases = []
    logits_blob = bytearray()
    with torch.no_grad():
        for name, text, greedy in PROMPTS:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            out = model(torch.tensor([ids])).logits[0, -1].float().numpy()
            logits_blob += out.astype("<f4").tobytes()
            top = np.argsort(-out, kind="stable")[:10]
            case = {
                "name": name,
                "text": text,
                "ids": ids,
                "top": [{"id": int(i), "logit": float(out[i])} for i in top],
            }
            if greedy:
                generated = model.generate(
                    torch.tensor([ids]), max_new_tokens=greedy, do_sample=False,
                    attention_mask=torch.ones(1, len(ids), dtype=torch.long))
                new = generated[0, len(ids):].tolist()
                case["greedy"] = {"ids": new, "text": tokenizer.decode(new)}
            cases.append(case)
        text = (HERE / "prompts.txt").read_text()
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        context, nll, scored = 32, 0.0, 0
        for start in range(0, len(ids) - 1, context):
            window = ids[start:start + context]
            if len(window) < 2:
                break
            logits = model(torch.tensor([window])).logits[0].double()
            logp = torch.log_softmax(logits, dim=-1)
            for i in range(len(window) - 1):
                nll -= float(logp[i, window[i + 1]])
                scored += 1
        perplexity = {"file": "Fixtures/llama/prompts.txt", "context": context, "tokens": len(ids),
                      "scored": scored, "perplexity": float(np.exp(nll / scored))}
    (HERE / "smollm2-logits.f32").write_bytes(bytes(logits_blob))
    golden = {
        "oracle": f"transformers {transformers.__version__} LlamaForCausalLM, torch "
        f"{torch.__version__}, float32, CPU",
        "model": "SmolLM2-135M-Instruct Q4_1 GGUF converted to F32 by flare-convert",
        "vocab": int(model.config.vocab_size),
        "cases": cases,
        "perplexity": perplexity,
    }
    (HERE / "smollm2-golden.json").write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n")

    from peft import PeftModel  # imported late: only this part needs it
    import peft

    adapter = HERE.parent / "peft" / "smollm2-demo-lora"
    lora = PeftModel.from_pretrained(model, str(adapter))
    lora.eval()
    lora_cases = []
    with torch.no_grad():
        for name, text, _ in PROMPTS:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            out = lora(torch.tensor([ids])).logits[0, -1].float().numpy()
            top = np.argsort(-out, kind="stable")[:10]
            lora_cases.append({
                "name": name, "ids": ids,
                "top": [{"id": int(i), "logit": float(out[i])} for i in top],
            })
    (HERE / "smollm2-lora.json").write_text(json.dumps({
        "oracle": f"peft {peft.__version__} PeftModel (unmerged) on transformers "
        f"{transformers.__version__}, float32, CPU",
        "adapter": "Fixtures/peft/smollm2-demo-lora",
        "cases": lora_cases,
    }, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()

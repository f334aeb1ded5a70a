#!/usr/bin/env python3
"""Oracle for the Q/K RoPE row order in flare-convert (GGUF -> HF).

llama.cpp's converter permutes the rows of q_proj/k_proj (HF order) into GGUF order with
    w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)
This script inverts that permutation with numpy on gguf-py's dequantization of the real SmolLM2
GGUF and records the CRC-32 of the float32 HF-order rows, for the tensors listed below.
Regenerate: scripts/fetch-models.sh && python3 Fixtures/golden/make_permute_golden.py
"""
import json
import os
import zlib

import gguf
import numpy as np

CACHE = os.environ.get("FLARE_CACHE") or os.path.expanduser("~/.cache/flare")
MODEL = os.path.join(CACHE, "models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "convert-permute.json")


def hf_to_gguf_rows(rows: int, heads: int) -> np.ndarray:
    """Index array p with gguf[i] = hf[p[i]], built by permuting the row indices."""
    index = np.arange(rows)
    return index.reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(rows)


def main() -> None:
    reader = gguf.GGUFReader(MODEL)
    heads = int(reader.fields["llama.attention.head_count"].contents())
    kv_heads = int(reader.fields["llama.attention.head_count_kv"].contents())
    wanted = {
        "blk.0.attn_q.weight": ("model.layers.0.self_attn.q_proj.weight", heads),
        "blk.0.attn_k.weight": ("model.layers.0.self_attn.k_proj.weight", kv_heads),
        "blk.29.attn_q.weight": ("model.layers.29.self_attn.q_proj.weight", heads),
        "blk.29.attn_k.weight": ("model.layers.29.self_attn.k_proj.weight", kv_heads),
        "blk.0.attn_v.weight": ("model.layers.0.self_attn.v_proj.weight", None),
    }
    result = {"model": os.path.basename(MODEL), "tensors": []}
    for tensor in reader.tensors:
        if tensor.name not in wanted:
            continue
        hf_name, n = wanted[tensor.name]
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        if n is not None:
            p = hf_to_gguf_rows(values.shape[0], n)
            hf = np.empty_like(values)
            hf[p] = values  # gguf[i] = hf[p[i]]  =>  hf[p[i]] = gguf[i]
        else:
            hf = values
        result["tensors"].append({
            "gguf": tensor.name, "hf": hf_name, "heads": n, "shape": list(hf.shape),
            "hf_crc32": zlib.crc32(np.ascontiguousarray(hf).tobytes()),
        })
    with open(OUT, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()

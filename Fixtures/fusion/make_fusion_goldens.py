#!/usr/bin/env python3
"""make_fusion_goldens.py: PyTorch autograd goldens for FLARE's fused LoRA layer.

Run from the repository root:

    python3 Fixtures/fusion/make_fusion_goldens.py

Needs CPU torch, numpy and safetensors. Writes `goldens.safetensors` next to this script.

The layer is the reference's `LinearFuse.forward` as `../shared/reference/FLARE.md` §2.2-2.3
describes it, written here from those formulas (the reference's own code is not available):

    y = x_t·Wᵀ + b + s·f(A·x_s, A·x_t)·Bᵀ

with the same A on both paths, and f one of `add` (S+T), `mul` (S⊙T), `add_relu`
(relu(S)+relu(T)), `matmul` (S·Tᵀ·T), `matmul_relu` (relu(S)·relu(T)ᵀ·relu(T)) and
`cross-attention` (FuseCrossAttention: r×r query/key/value projections with bias, queries from
S, keys and values from T, `heads` heads of r/heads values, softmax(QKᵀ/√(r/heads)), no output
projection; attention dropout 0 here). Inputs are seeded random F32 values, widened to float64;
autograd gives y and the gradients of A, B, x_t and the cross-attention weights for a random
upstream gradient dy, rounded to F32.

Cases `<fusion>` are the reference's form: every position reads every target position (no mask).
Cases `<fusion>-causal` (matmul, matmul_relu, cross-attention) are Flare's decoder variant:
position j reads target positions k <= j that are real tokens (sequence 1 is left-padded by 2);
a position that reads none gets F[j] = 0 (a zero row, no gradient).

Tensors are named `<case>.<name>`; sizes are in `<case>.sizes` (I64: N, L, d_in, d_out, r,
heads, causal) and the key mask in `<case>.mask` (I64, 1 = real token).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
torch.set_num_threads(1)
rng = np.random.default_rng(20261204)
out = {}

N, L, DIN, DOUT, R = 2, 5, 6, 7, 4
SCALE = 2.0


def f32(shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def fuse(name, S, T, visible, heads, attn):
    """f(S, T) for (N, L, r) tensors; visible[n, j, k] says whether j reads target k."""
    if name == "add":
        return S + T
    if name == "mul":
        return S * T
    if name == "add_relu":
        return torch.relu(S) + torch.relu(T)
    if name in ("matmul", "matmul_relu"):
        if name == "matmul_relu":
            S, T = torch.relu(S), torch.relu(T)
        P = S @ T.transpose(1, 2)
        P = P * visible
        return P @ T
    assert name == "cross-attention"
    wq, bq, wk, bk, wv, bv = attn
    Q = S @ wq.T + bq
    K = T @ wk.T + bk
    V = T @ wv.T + bv
    d = S.shape[-1] // heads
    outs = []
    for h in range(heads):
        cs = slice(h * d, (h + 1) * d)
        scores = Q[..., cs] @ K[..., cs].transpose(1, 2) / (d ** 0.5)
        scores = scores.masked_fill(~visible.bool(), float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        probs = torch.nan_to_num(probs, nan=0.0)  # a row with no visible key: zeros
        outs.append(probs @ V[..., cs])
    return torch.cat(outs, dim=-1)


def case(name, fusion, causal, heads=1):
    x_t = f32((N, L, DIN))
    x_s = f32((N, L, DIN))
    W = f32((DOUT, DIN), 0.4)
    b = f32((DOUT,), 0.1)
    A = f32((R, DIN), 0.5)
    B = f32((DOUT, R), 0.5)  # non-zero, so every gradient is exercised
    attn = [f32((R, R), 0.5), f32((R,), 0.1), f32((R, R), 0.5), f32((R,), 0.1),
            f32((R, R), 0.5), f32((R,), 0.1)]
    dy = f32((N, L, DOUT))
    mask = np.ones((N, L), dtype=np.int64)
    if causal:
        mask[1, :2] = 0
    vis = np.ones((N, L, L), dtype=np.float64)
    if causal:
        vis = vis * np.tril(np.ones((L, L)))[None] * mask[:, None, :]
    t = lambda a, grad=False: torch.tensor(a, dtype=torch.float64, requires_grad=grad)  # noqa
    tx_t, tA, tB = t(x_t, True), t(A, True), t(B, True)
    tattn = [t(a, True) for a in attn]
    S = t(x_s) @ tA.T
    T = tx_t @ tA.T
    F = fuse(fusion, S, T, torch.tensor(vis), heads, tattn)
    y = tx_t @ t(W).T + t(b) + SCALE * F @ tB.T
    y.backward(t(dy))
    p = f"{name}."
    out.update({
        p + "x_t": x_t, p + "x_s": x_s, p + "W": W, p + "b": b, p + "A": A, p + "B": B, p + "dy": dy,
        p + "y": y.detach().numpy().astype(np.float32),
        p + "F": F.detach().numpy().astype(np.float32),
        p + "dA": tA.grad.numpy().astype(np.float32),
        p + "dB": tB.grad.numpy().astype(np.float32),
        p + "dx_t": tx_t.grad.numpy().astype(np.float32),
        p + "mask": mask,
        p + "sizes": np.array([N, L, DIN, DOUT, R, heads, int(causal)], dtype=np.int64),
    })
    if fusion == "cross-attention":
        for key, a, ta in zip(["wq", "bq", "wk", "bk", "wv", "bv"], attn, tattn):
            out[p + key] = a
            out[p + "d" + key] = ta.grad.numpy().astype(np.float32)


def main():
    for fusion in ["add", "mul", "add_relu", "matmul", "matmul_relu"]:
        case(fusion, fusion, False)
    case("cross-attention", "cross-attention", False, heads=2)
    case("cross-attention-1head", "cross-attention", False, heads=1)
    for fusion in ["matmul", "matmul_relu"]:
        case(fusion + "-causal", fusion, True)
    case("cross-attention-causal", "cross-attention", True, heads=2)
    save_file(out, os.path.join(HERE, "goldens.safetensors"))
    print(f"wrote {len(out)} tensors")


if __name__ == "__main__":
    main()

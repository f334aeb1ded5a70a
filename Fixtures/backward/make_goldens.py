#!/usr/bin/env python3
"""make_goldens.py: PyTorch autograd goldens for Flare's backward kernels.

Run from the repository root:

    python3 Fixtures/backward/make_goldens.py

Needs CPU torch, transformers, numpy and safetensors. Writes `goldens.safetensors` next to this
script: for every kernel of `Sources/FlareModels/Kernels+Backward.swift` and
`Kernels+Training.swift`, seeded random F32 inputs and upstream gradients, and the forward
outputs and input/weight gradients that torch autograd computes from them in float64 (the F32
inputs are widened, the results rounded to F32). Tensors are named `<case>.<name>`; integer
inputs (token ids, positions, labels, masks, sizes) are I64. The Swift tests
(`Tests/FlareModelsTests/BackwardTests.swift`) read the file and name their tolerances.

Where transformers defines a piece the float64 expression is checked here against transformers'
own code (run in float32, which is what it upcasts to): `LlamaRMSNorm`, `LlamaRotaryEmbedding`
(angles of real tokens), `apply_rotary_pos_emb` (used directly for the `halves` convention),
`repeat_kv` (used directly for grouped-query attention) and `ForCausalLMLoss` (label shift and
normalisation over `num_items_in_batch`). The adjacent-pair RoPE (`pairs`, llama.cpp / GGUF) is
computed as Meta's reference does it: each pair as a complex number times `e^(i·angle)`.

Conventions shared with Flare's forward: positions count real tokens only (a left-padded
sequence starts at 0 after its padding; padding slots take the next real position); a key that is
masked out has probability 0; a query that sees no key (left padding under a causal mask) gets a
zero output and no gradient.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402
from transformers.loss.loss_utils import ForCausalLMLoss  # noqa: E402
from transformers.models.llama.configuration_llama import LlamaConfig  # noqa: E402
from transformers.models.llama.modeling_llama import (  # noqa: E402
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
    repeat_kv,
)

HERE = os.path.dirname(os.path.abspath(__file__))
torch.set_num_threads(1)
rng = np.random.default_rng(20260101)
out = {}


def rand(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def t64(a, grad=True):
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


def put(case, **arrays):
    for name, value in arrays.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().numpy()
        value = np.asarray(value)
        if value.dtype.kind in "iub":
            value = value.astype(np.int64)
        else:
            value = value.astype(np.float32)
        out[f"{case}.{name}"] = np.ascontiguousarray(value)


def positions_from_mask(mask):
    """Flare's positions: each slot gets the number of real tokens before it."""
    positions = np.zeros_like(mask)
    for b in range(mask.shape[0]):
        nxt = 0
        for i in range(mask.shape[1]):
            positions[b, i] = nxt
            nxt += int(mask[b, i])
    return positions


# matmul: out = x·Wᵀ + b; one case with several rows (sgemm) and one with one row (sgemv).
for case, n in (("matmul", 5), ("matmul1", 1)):
    c, oc = 20, 13
    x, w, b, dy = rand(n, c), rand(oc, c, scale=0.3), rand(oc), rand(n, oc)
    X, W, B = t64(x), t64(w), t64(b)
    y = X @ W.T + B
    y.backward(t64(dy, False))
    put(case, x=x, w=w, b=b, dy=dy, out=y, dx=X.grad, dw=W.grad, db=B.grad)

# LoRA on a frozen linear layer (PEFT's forward): y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ + s·lora_bias.
n, c, oc, r, s = 4, 12, 10, 3, 2.5
x, w, a, b, bias, dy = rand(n, c), rand(oc, c, scale=0.3), rand(r, c), rand(oc, r), rand(oc), rand(n, oc)
X, A, B, BIAS = t64(x), t64(a), t64(b), t64(bias)
y = X @ t64(w, False).T + s * ((X @ A.T) @ B.T) + s * BIAS
y.backward(t64(dy, False))
put("lora", x=x, w=w, a=a, b=b, bias=bias, dy=dy, scale=np.array([s]), out=y, dx=X.grad,
    da=A.grad, db=B.grad, dbias=BIAS.grad)

# Token embedding (repeated ids accumulate).
table, tokens = rand(9, 6), np.array([3, 1, 3, 8, 0, 3, 1])
dy = rand(len(tokens), 6)
T = t64(table)
y = T[torch.tensor(tokens)]
y.backward(t64(dy, False))
put("embedding", table=table, tokens=tokens, dy=dy, out=y, dtable=T.grad)

# BERT's embedding sum: (word + token type) + position.
word, pos, typ = rand(9, 6), rand(8, 6), rand(2, 6)
tokens, positions, types = np.array([2, 5, 5, 0, 8]), np.array([0, 1, 2, 3, 1]), np.array([0, 0, 1, 1, 0])
dy = rand(5, 6)
Wd, Pd, Td = t64(word), t64(pos), t64(typ)
y = (Wd[torch.tensor(tokens)] + Td[torch.tensor(types)]) + Pd[torch.tensor(positions)]
y.backward(t64(dy, False))
put("embsum", word=word, pos=pos, type=typ, tokens=tokens, positions=positions, types=types,
    dy=dy, out=y, dword=Wd.grad, dpos=Pd.grad, dtype=Td.grad)

# RMSNorm (LlamaRMSNorm): weight · x / sqrt(mean(x²) + eps). C = 20 exercises the 8-lane tail.
n, c, eps = 6, 20, 1e-5
x, w, dy = rand(n, c, scale=2.0), 1 + rand(c, scale=0.2), rand(n, c)
X, Wt = t64(x), t64(w)
rstd = torch.rsqrt(X.pow(2).mean(-1, keepdim=True) + eps)
y = Wt * (X * rstd)
y.backward(t64(dy, False))
hf = LlamaRMSNorm(c, eps=eps)
with torch.no_grad():
    hf.weight.copy_(torch.tensor(w))
    assert torch.allclose(hf(torch.tensor(x)).double(), y, atol=2e-6), "LlamaRMSNorm disagrees"
put("rmsnorm", x=x, w=w, dy=dy, eps=np.array([eps]), out=y, rstd=rstd.squeeze(-1), dx=X.grad,
    dw=Wt.grad)

# LayerNorm (biased variance), BERT's eps.
n, c, eps = 6, 20, 1e-12
x, w, b, dy = rand(n, c, scale=2.0) + 0.5, 1 + rand(c, scale=0.2), rand(c, scale=0.2), rand(n, c)
X, Wt, Bt = t64(x), t64(w), t64(b)
y = F.layer_norm(X, (c,), Wt, Bt, eps)
y.backward(t64(dy, False))
xd = torch.tensor(x, dtype=torch.float64)
put("layernorm", x=x, w=w, b=b, dy=dy, eps=np.array([eps]), out=y, mean=xd.mean(-1),
    rstd=torch.rsqrt(xd.var(-1, unbiased=False) + eps), dx=X.grad, dw=Wt.grad, db=Bt.grad)

# RoPE over a left- and a right-padded sequence, both conventions, heads × d per row.
batch, length, heads, d, theta = 2, 6, 3, 8, 10000.0
mask = np.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])
positions = positions_from_mask(mask)
# transformers' inv_freq, in float32, then the angles and their cos/sin in float64.
inv = (1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))).double()
angles = torch.tensor(positions.reshape(-1), dtype=torch.float64)[:, None] * inv[None, :]
cos_h, sin_h = torch.cos(angles), torch.sin(angles)  # [rows, d/2]
# Real tokens' angles agree with LlamaRotaryEmbedding given transformers' position ids.
rotary = LlamaRotaryEmbedding(LlamaConfig(head_dim=d, hidden_size=heads * d, num_attention_heads=heads,
                                          rope_theta=theta))
hf_pos = torch.tensor(mask).cumsum(-1) - 1
hf_pos.masked_fill_(torch.tensor(mask) == 0, 1)
hf_cos, hf_sin = rotary(torch.zeros(1, dtype=torch.float32), hf_pos)
real = torch.tensor(mask.reshape(-1) == 1)
assert torch.allclose(hf_cos.reshape(-1, d)[real, : d // 2].double(), cos_h[real], atol=1e-6)
assert torch.allclose(hf_sin.reshape(-1, d)[real, : d // 2].double(), sin_h[real], atol=1e-6)
rows = batch * length
x, dy = rand(rows, heads * d), rand(rows, heads * d)
# halves: transformers' apply_rotary_pos_emb (q as [rows, heads, d], cos/sin repeated twice).
X = t64(x)
cos_full = torch.cat([cos_h, cos_h], -1)[:, None, :]
sin_full = torch.cat([sin_h, sin_h], -1)[:, None, :]
yh, _ = apply_rotary_pos_emb(X.view(rows, heads, d), X.view(rows, heads, d), cos_full, sin_full,
                             unsqueeze_dim=0)
yh = yh.reshape(rows, heads * d)
yh.backward(t64(dy, False))
dx_h = X.grad
# pairs: (x[2i] + i·x[2i+1]) · e^(i·angle).
X = t64(x)
z = torch.view_as_complex(X.view(rows, heads, d // 2, 2))
rot = torch.polar(torch.ones_like(angles), angles)[:, None, :]
yp = torch.view_as_real(z * rot).reshape(rows, heads * d)
yp.backward(t64(dy, False))
put("rope", x=x, dy=dy, mask=mask, positions=positions, cos=cos_h, sin=sin_h, theta=np.array([theta]),
    heads=np.array([heads]), head_dim=np.array([d]), out_halves=yh, dx_halves=dx_h, out_pairs=yp,
    dx_pairs=X.grad)


def attention(q, k, v, allowed, heads, kv_heads, d, keep=None):
    """q: [B, T, H·d], k/v: [B, T, KV·d], allowed: [B, T(query), T(key)] bool."""
    bsz, length = q.shape[0], q.shape[1]
    qh = q.view(bsz, length, heads, d).transpose(1, 2)
    kh = repeat_kv(k.view(bsz, length, kv_heads, d).transpose(1, 2), heads // kv_heads)
    vh = repeat_kv(v.view(bsz, length, kv_heads, d).transpose(1, 2), heads // kv_heads)
    scores = qh @ kh.transpose(-1, -2) / d**0.5
    allow = allowed[:, None, :, :]
    seen = allow.any(-1, keepdim=True)
    # Rows that see no key are given finite scores and zeroed after the softmax.
    scores = scores.masked_fill(~allow, float("-inf")).masked_fill(~seen, 0.0)
    probs = torch.softmax(scores, -1) * allow
    mixed = probs if keep is None else probs * keep
    y = (mixed @ vh).transpose(1, 2).reshape(bsz, length, heads * d)
    return y, probs


def attention_case(case, bsz, length, heads, kv_heads, d, mask, causal, keep_p=None):
    q, k, v = rand(bsz, length, heads * d), rand(bsz, length, kv_heads * d), rand(bsz, length, kv_heads * d)
    dy = rand(bsz, length, heads * d)
    allowed = torch.tensor(mask, dtype=torch.bool)[:, None, :].expand(bsz, length, length)
    if causal:
        allowed = allowed & torch.tril(torch.ones(length, length, dtype=torch.bool))
    keep = None
    extra = {}
    if keep_p is not None:
        kept = rng.random((bsz, heads, length, length)) >= keep_p
        keep = (kept / (1 - keep_p)).astype(np.float32)
        extra["keep"] = keep
        keep = torch.tensor(keep, dtype=torch.float64)
    Q, K, V = t64(q), t64(k), t64(v)
    y, probs = attention(Q, K, V, allowed, heads, kv_heads, d, keep)
    y.backward(t64(dy, False))
    put(case, q=q, k=k, v=v, dy=dy, mask=mask, heads=np.array([heads]), kv_heads=np.array([kv_heads]),
        head_dim=np.array([d]), out=y, probs=probs, dq=Q.grad, dk=K.grad, dv=V.grad, **extra)


# Decoder attention: causal, grouped-query (4 query heads over 2 key/value heads), one
# sequence left-padded by 2 (its first queries see no key), one right-padded by 1.
attention_case("attn_causal", 2, 6, 4, 2, 8, np.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]]), True)
# Encoder attention: bidirectional, padding mask only (right- and left-padded).
bert_mask = np.array([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])
attention_case("attn_bidir", 2, 5, 2, 2, 8, bert_mask, False)
# The same with attention dropout (p = 0.3) through a mask both sides share.
attention_case("attn_dropout", 2, 5, 2, 2, 8, bert_mask, False, keep_p=0.3)

# Softmax.
x, dy = rand(4, 11, scale=3.0), rand(4, 11)
X = t64(x)
y = torch.softmax(X, -1)
y.backward(t64(dy, False))
put("softmax", x=x, dy=dy, out=y, dx=X.grad)

# Elementwise activations over 37 values (8-lane loops plus a tail), wide ranges.
g, u, dy = rand(37, scale=6.0), rand(37), rand(37)
g[:2] = [-30.0, 25.0]
G, U = t64(g), t64(u)
y = F.silu(G) * U
y.backward(t64(dy, False))
put("swiglu", gate=g, up=u, dy=dy, out=y, dgate=G.grad, dup=U.grad)

x, dy = rand(37, scale=3.0), rand(37)
X = t64(x)
y = F.gelu(X, approximate="none")
y.backward(t64(dy, False))
put("gelu", x=x, dy=dy, out=y, dx=X.grad)

X = t64(x)
y = torch.tanh(X)
y.backward(t64(dy, False))
put("tanh", x=x, dy=dy, out=y, dx=X.grad)

a, b, dy = rand(10), rand(10), rand(10)
A, B = t64(a), t64(b)
(A + B).backward(t64(dy, False))
put("residual", a=a, b=b, dy=dy, da=A.grad, db=B.grad)

x, dy = rand(4, 9), rand(4, 9)
keep_mask = ((rng.random((4, 9)) >= 0.4) / 0.6).astype(np.float32)
X = t64(x)
y = X * torch.tensor(keep_mask, dtype=torch.float64)
y.backward(t64(dy, False))
put("dropout", x=x, dy=dy, keep=keep_mask, out=y, dx=X.grad)

# Mean pooling (sentence-transformers: sum(h·mask) / clamp(mask.sum, 1e-9)), right- and
# left-padded rows and one without padding.
bsz, length, c = 3, 5, 6
mask = np.array([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
h, dy = rand(bsz, length, c), rand(bsz, c)
H = t64(h)
m = torch.tensor(mask, dtype=torch.float64)[:, :, None]
y = (H * m).sum(1) / torch.clamp(m.sum(1), min=1e-9)
y.backward(t64(dy, False))
put("meanpool", h=h, mask=mask, dy=dy, out=y, dh=H.grad)

# Row gathers: CLS (b·T) and the last real token (LlamaForSequenceClassification) of the same
# batch; row 10 is both, so its gradients add up.
indices = np.array([0, 5, 10, 2, 9, 14, 10])
dy = rand(len(indices), c)
H = t64(h)
y = H.reshape(-1, c)[torch.tensor(indices)]
y.backward(t64(dy, False))
put("gather", h=h, indices=indices, dy=dy, out=y, dh=H.grad)

# Classification: mean cross-entropy over the examples.
logits, labels = rand(5, 3, scale=2.0), np.array([0, 2, 1, 2, 0])
L = t64(logits)
loss = F.cross_entropy(L, torch.tensor(labels))
loss.backward()
put("classify", logits=logits, labels=labels, loss=np.array([loss.item()]), dlogits=L.grad)

# Causal-LM loss through a frozen head: prompt and padding labelled -100, shifted as
# transformers shifts them, normalised over the label tokens of the whole optimizer step (this
# micro-batch's plus `extra` from the others).
bsz, length, c, vocab, extra = 2, 7, 16, 50, 5
hidden, head = rand(bsz, length, c), rand(vocab, c, scale=0.5)
labels = rng.integers(0, vocab, size=(bsz, length))
labels[0, :3] = -100  # prompt
labels[1, 5:] = -100  # right padding
shifted = np.concatenate([labels[:, 1:], np.full((bsz, 1), -100)], axis=1)
count = int((shifted != -100).sum())
items = count + extra
Hd = t64(hidden)
logits = Hd @ t64(head, False).T
loss = F.cross_entropy(logits.reshape(-1, vocab), torch.tensor(shifted.reshape(-1)), ignore_index=-100,
                       reduction="sum") / items
loss.backward()
hf_loss = ForCausalLMLoss(torch.tensor(hidden) @ torch.tensor(head).T, torch.tensor(labels), vocab,
                          num_items_in_batch=torch.tensor(items))
assert abs(hf_loss.item() - loss.item()) < 1e-5, (hf_loss.item(), loss.item())
put("lmhead", hidden=hidden, head=head, labels=labels, shifted=shifted, items=np.array([items]),
    loss=np.array([loss.item()]), dhidden=Hd.grad)

save_file(out, os.path.join(HERE, "goldens.safetensors"),
          metadata={"torch": torch.__version__, "generator": "Fixtures/backward/make_goldens.py"})
total = sum(v.nbytes for v in out.values())
print(f"{len(out)} tensors, {total} bytes")

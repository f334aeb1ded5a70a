#!/usr/bin/env python3
"""flare-train vs PyTorch + PEFT: time and peak memory of a LoRA (or FLARE) training step.

Cases (same model, data, batch, adapter and optimizer on both sides, 2 threads each):
  smollm2-qv     SmolLM2-135M F32, LoRA r=8 on q_proj,v_proj, causal LM, batch 8 x 128 tokens
  smollm2-flare  SmolLM2-135M F32, FLARE (fusion add_relu) r=8 on q_proj,v_proj, both fused,
                 causal LM, batch 8 x 128 target tokens plus 8 x 128 source tokens
  smollm2-all    SmolLM2-135M F32, LoRA r=16 on all linear layers, causal LM, batch 8 x 128
  e5-cls         multilingual-e5-small, LoRA r=8 on query,value + head, classification, 32 x 128

Each side runs as its own process (peak RSS from wait4): Flare is `flare-train lora --json`
(per-step seconds from its log), PyTorch a script that builds the same PEFT model and times
forward + backward + clip + AdamW per step with torch.set_num_threads(2). For smollm2-flare
Flare runs `flare-train flare --fusion add_relu --fused-modules q_proj,v_proj`, and PyTorch
patches PEFT's q_proj and v_proj LoRA layers to compute y = W x_t + s B (relu(A x_s) +
relu(A x_t)) (FLARE.md 2.2), x_s being hidden_states[i] of a source pass: the raw residual
entering block i, from the base model's blocks with the adapters disabled, under no_grad,
without the LM head (neither side computes it there). The source pass is inside the timed step;
tokens/s count target tokens. PyTorch keeps transformers' default attention (SDPA) here too:
the reference forces eager attention only because its own SDPA path misroutes x_source (FLARE.md
3.2), which patching the q/v modules does not, and SDPA is the faster peer. The first --warmup steps are left
out; the median of the rest is a run's step time. A case runs --rounds times, Flare and PyTorch
back to back (the order alternating from round to round), and the speed ratio reported is the
median of the rounds' ratios: this host's speed drifts by tens of percent over minutes, and only
runs made close together compare fairly. Peak RSS is the largest of the rounds. Data: running
WEB Bible text (Fixtures/data/bible/lm-train.jsonl) cut into examples that fill all 128 tokens,
identical token counts on both sides; a FLARE example's source is the next example's window
(also 128 tokens, so neither side pads). Model FLOPs per step count the matrix products of the
forward pass (2 per weight per token) and of the input gradients (2 more; frozen weights get no
weight gradient), plus attention; FLARE adds the source pass's forward (2 per block weight per
source token, plus attention; no LM head, no backward). "Of peak" divides by this machine's
SGEMM rate (numpy float32 4096^2 at 2 threads, measured in the same run).

When smollm2-qv and smollm2-flare run in the same invocation, the cost of FLARE over LoRA is also
given per side: "FLARE step / LoRA step" is that side's smollm2-flare step time over its
smollm2-qv step time (each the median over the rounds; the two cases run one after the other, so
host drift between them enters this ratio, unlike the Flare/PyTorch ratios).

Usage: python3 scripts/bench-train.py [--cases smollm2-qv,...] [--steps 6] [--warmup 2]
       [--rounds 3] [--wait-idle] [--json OUT]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("FLARE_CACHE") or Path.home() / ".cache" / "flare")
RELEASE = REPO / ".build" / "release"
SMOL = CACHE / "models" / "smollm2-hf"
E5 = CACHE / "models" / "multilingual-e5-small"

CASES = {
    "smollm2-qv": dict(model=SMOL, task="causal-lm", targets="q_proj,v_proj", rank=8, batch=8),
    # FLARE: `flare-train flare` with these fused modules and fusion; rows carry a source.
    "smollm2-flare": dict(model=SMOL, task="causal-lm", targets="q_proj,v_proj", rank=8, batch=8,
                          fusion="add_relu", fused="q_proj,v_proj"),
    "smollm2-all": dict(model=SMOL, task="causal-lm", targets="all-linear", rank=16, batch=8),
    "e5-cls": dict(model=E5, task="classification", targets="query,value", rank=8, batch=32),
}
LENGTH = 128

TORCH_SIDE = r'''
import json, sys, time, torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
from peft import LoraConfig, get_peft_model
model_dir, task, targets, rank, data, steps = sys.argv[1:7]
rank, steps = int(rank), int(steps)
# FLARE (add_relu): the fused modules, comma-separated; empty for plain LoRA.
fused = sys.argv[8].split(",") if len(sys.argv) > 8 and sys.argv[8] else []
torch.set_num_threads(2)
torch.manual_seed(0)
rows = [json.loads(l) for l in open(data)]
if task == "causal-lm":
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets if targets == "all-linear"
                     else targets.split(","), lora_dropout=0.0, task_type="CAUSAL_LM")
else:
    labels = sorted({r["label"] for r in rows})
    base = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(labels), dtype=torch.float32)
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets.split(","),
                     lora_dropout=0.0, task_type="SEQ_CLS")
model = get_peft_model(base, cfg)
sources = {}  # block index -> source state entering that block (this step's source pass)
if fused:
    body = model.base_model.model.model  # the Llama blocks without the LM head
    def fuse(module, index):
        """y = W x_t + s B (relu(A x_s) + relu(A x_t)) (FLARE add_relu; dropout is 0)."""
        base_layer, a, b = module.base_layer, module.lora_A["default"], module.lora_B["default"]
        scale = module.scaling["default"]
        def forward(x, *args, **kwargs):
            y = base_layer(x)
            if module.disable_adapters:
                return y
            return y + scale * b(torch.relu(a(sources[index])) + torch.relu(a(x)))
        module.forward = forward
    for index, layer in enumerate(body.layers):
        for name in fused:
            fuse(getattr(layer.self_attn, name), index)
model.train()
for m in model.modules():
    if isinstance(m, torch.nn.Dropout):
        m.p = 0.0
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4,
                        weight_decay=0.0)
batch = int(sys.argv[7])
out = []
for step in range(steps):
    chunk = rows[step * batch:(step + 1) * batch]
    ids = torch.tensor([r["ids"] for r in chunk])
    t0 = time.perf_counter()
    if fused:
        source_ids = torch.tensor([r["source_ids"] for r in chunk])
        with torch.no_grad(), model.disable_adapter():
            hidden = body(input_ids=source_ids, use_cache=False,
                          output_hidden_states=True).hidden_states
        sources.update(enumerate(hidden[:len(body.layers)]))  # hidden[i] enters block i
    if task == "causal-lm":
        loss = model(input_ids=ids, labels=ids).loss
    else:
        y = torch.tensor([labels.index(r["label"]) for r in chunk])
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=y).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    out.append({"step": step + 1, "seconds": time.perf_counter() - t0,
                "tokens": int(ids.numel()), "loss": float(loss)})
print(json.dumps(out))
'''


def wait_idle(limit=0.5, timeout=600):
    start = time.time()
    while os.getloadavg()[0] >= limit and time.time() - start < timeout:
        time.sleep(5)
    return os.getloadavg()[0]


def make_data(case, work, steps):
    """Examples of exactly LENGTH tokens (by the model's tokenizer): the same token ids go to
    PyTorch, and their decoded text (re-encoded to the same ids, checked) to Flare. A FLARE case's
    example k also gets a source, example k+1's window ("source" for Flare, "source_ids" for
    PyTorch); its targets are the same as the LoRA cases'."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(case["model"]))
    text = " ".join(json.loads(l)["text"] for l in
                    open(REPO / "Fixtures" / "data" / "bible" / "lm-train.jsonl"))
    classification = case["task"] == "classification"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    body = LENGTH - (2 if classification else 0)  # <s> ... </s> around an XLM-R example
    need = case["batch"] * steps + (1 if "fusion" in case else 0)
    rows, flare_rows, pos = [], [], 0
    while len(rows) < need:
        piece = ids[pos:pos + body]
        pos += body // 2
        if pos + body >= len(ids):
            pos = 0
        string = tok.decode(piece)
        enc = tok(string, add_special_tokens=classification)["input_ids"][:LENGTH]
        if len(enc) != LENGTH:
            continue
        label = ["a", "b", "c", "d"][len(rows) % 4]
        rows.append({"ids": enc, "label": label})
        flare_rows.append({"text": string, "label": label} if classification else {"text": string})
    if "fusion" in case:
        for k in range(need - 1):
            rows[k]["source_ids"] = rows[k + 1]["ids"]
            flare_rows[k]["source"] = flare_rows[k + 1]["text"]
        rows, flare_rows = rows[:-1], flare_rows[:-1]
    torch_data, flare_data = work / "torch.jsonl", work / "flare.jsonl"
    torch_data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    flare_data.write_text("".join(json.dumps(r) + "\n" for r in flare_rows))
    return torch_data, flare_data


def model_flops(case, tokens_per_step):
    cfg = json.load(open(case["model"] / "config.json"))
    h, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    inter = cfg["intermediate_size"]
    if case["task"] == "causal-lm":
        kv = h // cfg["num_attention_heads"] * cfg.get("num_key_value_heads",
                                                       cfg["num_attention_heads"])
        per_layer = h * h * 2 + h * kv * 2 + 3 * h * inter
        head = cfg["vocab_size"] * h
    else:
        per_layer = 4 * h * h + 2 * h * inter
        head = 0
    weights = layers * per_layer + head
    attention = layers * 2 * 2 * LENGTH * h  # QK^T and PV per token, 2 FLOPs each
    forward = tokens_per_step * (2 * weights + attention)
    # FLARE: the source pass's forward over as many source tokens (every block, no LM head: the
    # fused layers read only block inputs), no backward.
    source = tokens_per_step * (2 * layers * per_layer + attention) if "fusion" in case else 0
    return forward * 2 + source  # forward + input gradients (+ the source forward)


def sgemm_peak():
    code = ("import numpy as np, time\n"
            "a=np.random.rand(4096,4096).astype(np.float32); b=a.copy(); a@b\n"
            "t=time.perf_counter(); [a@b for _ in range(5)]; d=time.perf_counter()-t\n"
            "print(5*2*4096**3/d)")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="2")
    return float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                text=True, check=True).stdout)


def run_flare(name, case, args, work, steps, data):
    out = work / f"flare-{name}"
    log = work / f"flare-{name}.jsonl"
    command, extra = "lora", []
    if "fusion" in case:
        command, extra = "flare", ["--fused-modules", case["fused"], "--fusion", case["fusion"]]
    cmd = [str(RELEASE / "flare-train"), command, "--model", str(case["model"]), "--task",
           case["task"], "--data", str(data), "--output", str(out), "--target-modules",
           case["targets"], "--rank", str(case["rank"]), "--alpha", str(2 * case["rank"]),
           "--batch-size", str(case["batch"]), "--max-steps", str(steps), "--max-length",
           str(LENGTH), "--no-shuffle", "--model-dropout", "0", "--threads", "2", "--json",
           "--force", "--quiet"] + extra
    with open(log, "w") as f:
        wall, rss = benchlib.run_once(cmd, stdout=f)
    rows = [json.loads(l) for l in open(log) if l.strip()]
    return wall, rss, [s for s in rows if "seconds" in s][args.warmup:]


def run_torch(name, case, args, work, steps, data):
    out = work / f"torch-{name}.json"
    with open(out, "w") as f:
        wall, rss = benchlib.run_once(
            [sys.executable, "-c", TORCH_SIDE, str(case["model"]), case["task"], case["targets"],
             str(case["rank"]), str(data), str(steps), str(case["batch"]),
             case.get("fused", "")], stdout=f)
    return wall, rss, json.load(open(out))[args.warmup:]


def run_case(name, args, work):
    case = CASES[name]
    steps = args.steps + args.warmup
    torch_data, flare_data = make_data(case, work, steps)
    rounds = []
    for index in range(args.rounds):
        flare_first = index % 2 == 0
        if flare_first:
            flare = run_flare(name, case, args, work, steps, flare_data)
            torch = run_torch(name, case, args, work, steps, torch_data)
        else:
            torch = run_torch(name, case, args, work, steps, torch_data)
            flare = run_flare(name, case, args, work, steps, flare_data)
        fs = statistics.median(s["seconds"] for s in flare[2])
        ts = statistics.median(s["seconds"] for s in torch[2])
        rounds.append({"flare_step_s": fs, "torch_step_s": ts, "speed_ratio": ts / fs,
                       "flare_first": flare_first, "flare_rss": flare[1], "torch_rss": torch[1],
                       "flare_wall_s": flare[0], "torch_wall_s": torch[0],
                       "flare_losses": [s["loss"] for s in flare[2]],
                       "torch_losses": [s["loss"] for s in torch[2]],
                       "flare_tokens": statistics.median(s["tokens"] for s in flare[2])})
    tokens = case["batch"] * LENGTH
    ratio = statistics.median(r["speed_ratio"] for r in rounds)
    fs = statistics.median(r["flare_step_s"] for r in rounds)
    ts = statistics.median(r["torch_step_s"] for r in rounds)
    flare_rss = max(r["flare_rss"] for r in rounds)
    torch_rss = max(r["torch_rss"] for r in rounds)
    return {
        "case": name, "tokens_per_step": tokens, "flare_tokens_counted": rounds[0]["flare_tokens"],
        "flare_step_s": fs, "torch_step_s": ts,
        "flare_tok_s": tokens / fs, "torch_tok_s": tokens / ts, "speed_ratio": ratio,
        "speed_ratio_min": min(r["speed_ratio"] for r in rounds),
        "speed_ratio_max": max(r["speed_ratio"] for r in rounds),
        "flare_rss_mib": flare_rss / 1024, "torch_rss_mib": torch_rss / 1024,
        "rss_ratio": flare_rss / torch_rss, "model_gflop_per_step": model_flops(case, tokens) / 1e9,
        "rounds": rounds,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="smollm2-qv,smollm2-flare,smollm2-all,e5-cls")
    ap.add_argument("--steps", type=int, default=6, help="timed steps (default: 6)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed first steps (default: 2)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="Flare/PyTorch pairs per case; the median ratio is reported (default: 3)")
    ap.add_argument("--wait-idle", action="store_true", help="wait for 1-min load < 0.5 first")
    ap.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    args = ap.parse_args()
    if not benchlib.executable(RELEASE / "flare-train"):
        benchlib.die("build first: swift build -c release")
    info = benchlib.machine_info(["torch", "transformers", "peft", "numpy"])
    load = wait_idle() if args.wait_idle else os.getloadavg()[0]
    peaks = [sgemm_peak()]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases.split(","):
            results.append(run_case(name, args, Path(tmp)))
            peaks.append(sgemm_peak())
    peak = statistics.median(peaks)
    print(f"machine: {info['cpu_model']}, nproc={info['nproc']}, load before: {load:.2f}; "
          f"torch {info['torch']}, peft {info['peft']}; SGEMM peak (numpy, 2 threads, median "
          f"of {len(peaks)} between cases): {peak / 1e9:.0f} GFLOP/s (range "
          f"{min(peaks) / 1e9:.0f}-{max(peaks) / 1e9:.0f}); {args.rounds} rounds per case")
    print("| case | Flare s/step | PyTorch s/step | Flare tok/s | PyTorch tok/s | speed ratio "
          "(rounds' range) | Flare RSS MiB | PyTorch RSS MiB | RSS ratio | GFLOP/step "
          "| Flare % of peak |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        frac = r["model_gflop_per_step"] * 1e9 / r["flare_step_s"] / peak
        r["flare_fraction_of_peak"] = frac
        print(f"| {r['case']} | {r['flare_step_s']:.2f} | {r['torch_step_s']:.2f} | "
              f"{r['flare_tok_s']:.0f} | {r['torch_tok_s']:.0f} | {r['speed_ratio']:.2f}x "
              f"({r['speed_ratio_min']:.2f}-{r['speed_ratio_max']:.2f}) | "
              f"{r['flare_rss_mib']:.0f} | {r['torch_rss_mib']:.0f} | {r['rss_ratio']:.2f} | "
              f"{r['model_gflop_per_step']:.0f} | {100 * frac:.0f}% |")
    by_case = {r["case"]: r for r in results}
    flare_over_lora = None
    if "smollm2-qv" in by_case and "smollm2-flare" in by_case:
        lora, fused = by_case["smollm2-qv"], by_case["smollm2-flare"]
        flare_over_lora = {side: fused[f"{side}_step_s"] / lora[f"{side}_step_s"]
                           for side in ("flare", "torch")}
        print(f"FLARE step / LoRA step (smollm2-flare over smollm2-qv, same side): "
              f"Flare {flare_over_lora['flare']:.2f}, PyTorch {flare_over_lora['torch']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "load_before": load,
                                               "sgemm_peaks_flops": peaks, "results": results,
                                               "flare_over_lora_step": flare_over_lora},
                                              indent=2))


if __name__ == "__main__":
    main()

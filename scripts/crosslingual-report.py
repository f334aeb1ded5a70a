#!/usr/bin/env python3
"""The report of scripts/crosslingual.sh (standard library only; the statistics come from
`flare-eval significance`).

  crosslingual-report.py --best-fusion OUT FUSION...   print the fusion with the best mean
                                                      validation accuracy over the seeds
  crosslingual-report.py --report OUT --seeds N --best F --fusions "..." --bin BIN --quick Q
                                                      write OUT/report.md, accuracy.svg,
                                                      curves.svg and summary.json
  crosslingual-report.py --sweep OUT LR...             the learning-rate sweep: validation
                                                      accuracy per rate, OUT/sweep.json
  crosslingual-report.py --export OUT DEST             copy a finished grid's report to DEST
                                                      (the committed form): report.md, the
                                                      charts, summary.json, sweep.json, every
                                                      training log (logs/NAME.jsonl) and every
                                                      evaluation (logs/eval/NAME.json, per
                                                      example the predicted class index)
"""
import argparse
import glob
import json
import os
import platform
import shutil
import subprocess
import sys


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load(path):
    with open(path) as f:
        return json.load(f)


def seeds_of(out, name, seeds):
    return [f"{out}/eval/{name}-s{s}.json" for s in range(seeds)
            if os.path.exists(f"{out}/eval/{name}-s{s}.json")]


def best_fusion(out, fusions):
    best, best_accuracy = None, -1.0
    for fusion in fusions:
        files = sorted(glob.glob(f"{out}/eval/flare-{fusion}-valid-s*.json"))
        if not files:
            continue
        accuracy = sum(load(f)["accuracy"] for f in files) / len(files)
        if accuracy > best_accuracy:
            best, best_accuracy = fusion, accuracy
    return best


def significance(binary, a_files, b_files):
    command = [f"{binary}/flare-eval", "significance", "--json"]
    for a, b in zip(a_files, b_files):
        command += ["--a", a, "--b", b]
    return json.loads(subprocess.run(command, check=True, capture_output=True,
                                     text=True).stdout)


def training_cost(out, name, seeds):
    """The fastest seed's wall time and tokens/s and the largest peak RSS of a trained row's
    runs (the fastest: a run slowed by other work on the machine does not count)."""
    walls, rates, rss = [], [], []
    for s in range(seeds):
        cost_file = f"{out}/runs/{name}-s{s}.cost"
        if not os.path.exists(cost_file):
            continue
        cost = load(cost_file)
        walls.append(cost["wall_s"])
        if cost.get("peak_rss_kib"):
            rss.append(cost["peak_rss_kib"] / 1024)
        steps = [json.loads(l) for l in open(f"{out}/runs/{name}-s{s}.log.jsonl") if l.strip()]
        steps = [l for l in steps if "tokens_per_second" in l]
        if steps:
            tokens = sum(l["tokens"] for l in steps)
            seconds = sum(l["seconds"] for l in steps)
            rates.append(tokens / seconds)
    return (min(walls) if walls else None, max(rates) if rates else None,
            max(rss) if rss else None)


def curve(out, name):
    path = f"{out}/runs/{name}-s0.log.jsonl"
    if not os.path.exists(path):
        return []
    lines = [json.loads(l) for l in open(path) if l.strip()]
    return [(l["step"], l["loss"]) for l in lines if "loss" in l and "step" in l
            and "tokens_per_second" in l]


def bar_chart(rows, path):
    """Accuracy per method, mean over seeds with the 95 % interval."""
    width, left, bar, gap = 760, 230, 22, 10
    height = 40 + len(rows) * (bar + gap) + 40
    scale = lambda v: left + v * (width - left - 30)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="12">',
             f'<text x="{left}" y="20">test accuracy (mean over seeds, 95 % interval)</text>']
    for tick in [0, 0.2, 0.4, 0.6, 0.8, 1.0]:
        x = scale(tick)
        parts.append(f'<line x1="{x:.1f}" y1="30" x2="{x:.1f}" y2="{height - 30}" '
                     f'stroke="#ddd"/><text x="{x:.1f}" y="{height - 14}" '
                     f'text-anchor="middle">{tick:.1f}</text>')
    for i, row in enumerate(rows):
        y = 36 + i * (bar + gap)
        mean, half = row["accuracy"]["mean"], row["accuracy"]["half_width"]
        colour = "#c0504d" if row["name"].startswith("flare") else "#4f81bd"
        parts.append(f'<text x="{left - 8}" y="{y + bar * 0.7:.1f}" text-anchor="end">'
                     f'{row["name"]}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{scale(mean) - left:.1f}" '
                     f'height="{bar}" fill="{colour}"/>')
        if half > 0:
            parts.append(f'<line x1="{scale(mean - half):.1f}" y1="{y + bar / 2}" '
                         f'x2="{scale(mean + half):.1f}" y2="{y + bar / 2}" stroke="black" '
                         f'stroke-width="2"/>')
        parts.append(f'<text x="{scale(mean + half) + 6:.1f}" y="{y + bar * 0.7:.1f}">'
                     f'{mean:.3f}</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")


def curves_chart(curves, path):
    """Training loss per step (seed 0) of every trained row."""
    width, height, left, bottom = 760, 380, 50, 40
    points = [p for c in curves.values() for p in c]
    if not points:
        return
    steps = max(p[0] for p in points)
    top = max(p[1] for p in points)
    sx = lambda s: left + (s - 1) / max(steps - 1, 1) * (width - left - 170)
    sy = lambda v: 20 + (1 - v / top) * (height - bottom - 20)
    colours = ["#4f81bd", "#c0504d", "#9bbb59", "#8064a2", "#4bacc6", "#f79646", "#7f7f7f",
               "#2c4d75", "#772c2a"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="12">',
             f'<text x="{left}" y="14">training loss per step (seed 0)</text>',
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - 170}" '
             f'y2="{height - bottom}" stroke="black"/>',
             f'<text x="{(left + width - 170) / 2}" y="{height - 8}" text-anchor="middle">'
             f'step (1-{steps})</text>',
             f'<text x="4" y="{sy(top) + 4:.1f}">{top:.2f}</text>',
             f'<text x="4" y="{sy(0):.1f}">0</text>']
    for i, (name, c) in enumerate(sorted(curves.items())):
        colour = colours[i % len(colours)]
        line = " ".join(f"{sx(s):.1f},{sy(v):.1f}" for s, v in c)
        parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" '
                     f'stroke-width="1.2"/>')
        parts.append(f'<text x="{width - 160}" y="{30 + i * 16}" fill="{colour}">{name}</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")


def report(args):
    out, seeds = args.report, args.seeds
    fusions = args.fusions.split()
    best = args.best
    rows = []
    names = (["zero-shot", "translate-test", "lora-tt", "input-fusion"]
             + [f"flare-{f}" for f in fusions]
             + [f"flare-{best}-oracle", f"flare-{best}-target-only"])
    trained = {"lora-tt", "input-fusion", *[f"flare-{f}" for f in fusions]}
    for name in names:
        files = seeds_of(out, name, seeds)
        if not files:
            continue
        # The seeds' accuracy and macro-F1 with intervals, from flare-eval significance
        # (each run against itself: its "a" side is the row's own seed summary).
        summary = significance(args.bin, files, files)["metrics"]
        row = {"name": name, "seeds": len(files),
               "accuracy": summary["accuracy"]["a"], "macro_f1": summary["macro_f1"]["a"],
               "eval_s": min(float(open(f[:-5] + ".seconds").read()) for f in files)}
        source = name.rsplit("-oracle", 1)[0].rsplit("-target-only", 1)[0]
        if source in trained:
            row["train_wall_s"], row["tokens_per_s"], row["peak_rss_mib"] = training_cost(
                out, source, seeds)
        if name != "lora-tt":
            baseline = seeds_of(out, "lora-tt", seeds)
            if len(baseline) == len(files):
                result = significance(args.bin, baseline, files)
                row["vs_lora_tt"] = [{"accuracy": p["accuracy"], "macro_f1": p["macro_f1"]}
                                     for p in result["pairs"]]
                row["vs_lora_tt_seeds"] = {m: result["metrics"][m]["difference"]
                                           for m in ("accuracy", "macro_f1")}
        rows.append(row)
    bar_chart(rows, f"{out}/accuracy.svg")
    curves_chart({n: curve(out, n) for n in ["stage1", *sorted(trained)]}, f"{out}/curves.svg")
    test = len(load(seeds_of(out, "zero-shot", seeds)[0])["predictions"])
    for row in rows:
        row["eval_examples_per_s"] = test / row["eval_s"] if row["eval_s"] > 0 else None
    model = {"e5": "multilingual-e5-small, LoRA/FLARE r=8 (alpha 16) on query,value",
             "smollm2": "SmolLM2-135M-Instruct (F32 folder of the Q4_1 GGUF), LoRA/FLARE r=8 "
                        "(alpha 16) on q_proj,v_proj, classification head on the last token"}
    sweep_note = (" (chosen on validation by `--sweep`, sweep.json)"
                  if os.path.exists(f"{out}/sweep.json") else "")
    lines = [
        "# Cross-lingual grid: FLARE vs translate-train LoRA on the Bible genre task", "",
        f"Made by `scripts/crosslingual.sh{({'1': ' --quick', '2': ' --tiny'}).get(args.quick, '')}` "
        f"({seeds} seed{'s' if seeds > 1 else ''}, {test} Spanish test verses) on "
        f"{cpu_name()}, {os.cpu_count()} cores. "
        f"{model[args.model]}; learning rate {args.lr}{sweep_note}; best fusion on validation: "
        f"`{best}`. Intervals: 95 %, Student's t over seeds. Paired comparisons: per seed, "
        "per-example bootstrap over the test set (10,000 resamples) of the row minus "
        "lora-tt (`flare-eval significance`). Chance (majority) level: 1/6 = 0.1667.", ""]
    if args.note:
        lines += [f"**{args.note}**", ""]
    if args.quick != "0":
        lines += ["**A pipeline check, not a result:** this mode trains too few steps to learn the "
                  "task; `make crosslingual` runs the grid.", ""]
    lines += [
        "| method | accuracy | macro-F1 | vs lora-tt: accuracy difference [95 % interval], p "
        "(per seed) | training s | tokens/s | peak RSS MiB | eval s | eval verses/s |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    fmt = lambda v, d=1: "" if v is None else f"{v:.{d}f}"
    for row in rows:
        acc, f1 = row["accuracy"], row["macro_f1"]
        versus = "; ".join(
            f"{p['accuracy']['difference']:+.4f} [{p['accuracy']['low']:+.4f}, "
            f"{p['accuracy']['high']:+.4f}], p {p['accuracy']['p']:.4f}"
            for p in row.get("vs_lora_tt", []))
        lines.append(
            f"| {row['name']} | {acc['mean']:.4f} ± {acc['half_width']:.4f} | "
            f"{f1['mean']:.4f} ± {f1['half_width']:.4f} | {versus} | "
            f"{fmt(row.get('train_wall_s'))} | {fmt(row.get('tokens_per_s'))} | "
            f"{fmt(row.get('peak_rss_mib'), 0)} | {row['eval_s']:.1f} | "
            f"{fmt(row.get('eval_examples_per_s'))} |")
    lines += ["", "Training s and tokens/s are the fastest seed's training run, peak RSS the "
              "largest of the seeds' (other work on the machine slowed some runs; "
              "tokens/s counts the target tokens, FLARE's source pass comes on top); eval s is "
              "`flare-eval classify` on the test file, the whole process, the fastest seed's (FLARE rows with a "
              "source run two passes, the source pass without the adapter and the fused pass).",
              ""]
    lines += verdict(rows)
    lines += ["", "![accuracy](accuracy.svg)", "", "![training loss](curves.svg)", ""]
    with open(f"{out}/report.md", "w") as f:
        f.write("\n".join(lines))
    with open(f"{out}/summary.json", "w") as f:
        json.dump({"seeds": seeds, "best_fusion": best, "rows": rows}, f, indent=1)


def verdict(rows):
    """The comparison with lora-tt in words: per row the seed-level mean difference with its
    interval and the seeds whose bootstrap p is below 0.05 in either direction."""
    lines = ["## Verdict (accuracy, row minus lora-tt)", ""]
    for row in rows:
        seeds = row.get("vs_lora_tt_seeds")
        if not seeds:
            continue
        d = seeds["accuracy"]
        pairs = [p["accuracy"] for p in row["vs_lora_tt"]]
        up = sum(1 for p in pairs if p["p"] < 0.05 and p["difference"] > 0)
        down = sum(1 for p in pairs if p["p"] < 0.05 and p["difference"] < 0)
        if len(pairs) > 1 and d["mean"] - d["half_width"] > 0:
            word = "better than lora-tt (seed interval above 0)"
        elif len(pairs) > 1 and d["mean"] + d["half_width"] < 0:
            word = "worse than lora-tt (seed interval below 0)"
        elif len(pairs) > 1:
            word = "no difference shown (seed interval contains 0)"
        else:
            word = "one seed: no seed interval, only the bootstrap over test verses"
        lines.append(
            f"- {row['name']}: {d['mean']:+.4f} ± {d['half_width']:.4f} over {len(pairs)} "
            f"seed{'s' if len(pairs) > 1 else ''}; bootstrap p < 0.05 in favour in {up}, "
            f"against in {down} of {len(pairs)}: {word}.")
    return lines


def sweep(out, rates):
    """Stage 1's validation accuracies per learning rate; prints the table and the winner (the
    best English validation accuracy, the rate the grid then uses)."""
    rows = []
    for lr in rates:
        english = load(f"{out}/eval/valid-en-lr{lr}.json")
        spanish = load(f"{out}/eval/valid-es-mt-lr{lr}.json")
        cost = load(f"{out}/runs/stage1-lr{lr}.cost")
        rows.append({"lr": lr, "valid_en_accuracy": english["accuracy"],
                     "valid_en_macro_f1": english["macro_f1"],
                     "valid_es_mt_accuracy": spanish["accuracy"],
                     "valid_es_mt_macro_f1": spanish["macro_f1"], "train_wall_s": cost["wall_s"]})
    best = max(rows, key=lambda r: r["valid_en_accuracy"])["lr"]
    with open(f"{out}/sweep.json", "w") as f:
        json.dump({"cpu": cpu_name(), "chosen_lr": best, "rows": rows}, f, indent=1)
    print("| lr | English valid accuracy | macro-F1 | Apertium-Spanish valid accuracy | macro-F1 | training s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['lr']} | {r['valid_en_accuracy']:.4f} | {r['valid_en_macro_f1']:.4f} | "
              f"{r['valid_es_mt_accuracy']:.4f} | {r['valid_es_mt_macro_f1']:.4f} | "
              f"{r['train_wall_s']:.0f} |")
    print(f"chosen (best English validation accuracy): lr {best}")


def export(out, dest):
    os.makedirs(f"{dest}/logs/eval", exist_ok=True)
    for name in ["report.md", "accuracy.svg", "curves.svg", "summary.json", "sweep.json"]:
        if os.path.exists(f"{out}/{name}"):
            shutil.copyfile(f"{out}/{name}", f"{dest}/{name}")
    for path in sorted(glob.glob(f"{out}/runs/*.log.jsonl")):
        name = os.path.basename(path)[:-len(".log.jsonl")]
        shutil.copyfile(path, f"{dest}/logs/{name}.jsonl")
        if os.path.exists(f"{out}/runs/{name}.cost"):
            shutil.copyfile(f"{out}/runs/{name}.cost", f"{dest}/logs/{name}.cost.json")
    for path in sorted(glob.glob(f"{out}/eval/*.json")):
        result = load(path)
        labels = result["labels"]
        compact = {k: v for k, v in result.items() if k != "predictions"}
        compact["seconds"] = float(open(path[:-5] + ".seconds").read())
        # Per example: the predicted class (an index into labels), in file order.
        compact["predicted"] = [labels.index(p["prediction"]) for p in result["predictions"]]
        compact["truth"] = [labels.index(p["label"]) for p in result["predictions"]]
        with open(f"{dest}/logs/eval/{os.path.basename(path)}", "w") as f:
            json.dump(compact, f, separators=(",", ":"))
            f.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--best-fusion", nargs="+", metavar=("OUT", "FUSION"))
    ap.add_argument("--report", metavar="OUT")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--best", default="add_relu")
    ap.add_argument("--fusions", default="add_relu")
    ap.add_argument("--bin", default=".build/release")
    ap.add_argument("--quick", default="0")
    ap.add_argument("--model", default="e5", choices=["e5", "smollm2"])
    ap.add_argument("--lr", default="5e-4")
    ap.add_argument("--note", default="", help="a line under the report's header")
    ap.add_argument("--sweep", nargs="+", metavar=("OUT", "LR"))
    ap.add_argument("--export", nargs=2, metavar=("OUT", "DEST"))
    args = ap.parse_args()
    if args.best_fusion:
        print(best_fusion(args.best_fusion[0], args.best_fusion[1:]))
    elif args.report:
        report(args)
    elif args.sweep:
        sweep(args.sweep[0], args.sweep[1:])
    elif args.export:
        export(*args.export)
    else:
        ap.error("give --best-fusion or --report")


if __name__ == "__main__":
    main()

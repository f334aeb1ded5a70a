#!/bin/sh
# The cross-lingual grid: does FLARE beat translate-train LoRA on the committed Bible task?
# (Fixtures/data/bible: genre of a verse's book, six classes; English training verses, their
# Apertium Spanish, human Spanish RV1909 test verses with their Apertium English, and the human
# English of each test verse as an oracle source; built by scripts/build-bible-data.py.)
#
# Every row runs with the commands a user would type (flare-train, flare-merge, flare-eval) on
# multilingual-e5-small (or SmolLM2-135M with --model smollm2), as FLARE.md section 6.1 defines
# the rows:
#   zero-shot        stage-1 English LoRA, merged (F32), on the Spanish test verses
#   translate-test   the same model on their Apertium English
#   lora-tt          a fresh LoRA on the Apertium Spanish training verses, stage 1 merged
#   input-fusion     that LoRA on "English source, newline, Spanish text" (--input-fusion)
#   flare-<fusion>   FLARE on the Apertium Spanish with the English source, Apertium English
#                    source at test time
#   flare-<best>-oracle / -target-only   the best fusion (on validation) with the human English
#                    source at test time / with no source (fused modules as plain LoRA)
# Each trained row runs once per seed; the report (report.md, accuracy.svg, curves.svg) gives
# mean accuracy and macro-F1 with 95 % intervals, FLARE vs lora-tt paired bootstraps per seed
# (flare-eval significance), and the cost of every row. Fusions are chosen on the validation
# set (valid.es-mt with its English source), never on test.
#
# Usage: scripts/crosslingual.sh [--quick | --tiny | --sweep] [--model e5|smollm2] [--seeds N]
#                               [--lr LR] [--fusions "F..."] [--out DIR]
#   --quick   one seed, 600 training / 300 validation / 600 test verses (100 / 50 / 100 per
#             class), rows zero-shot,
#             translate-test, lora-tt, input-fusion, flare-add_relu (a few minutes; 38 steps
#             per row, too few to learn the task: a check that the pipeline runs)
#   --tiny    the same rows on 12 / 6 / 12 verses of 16 tokens, batch 4 (`make test` runs it
#             with the debug build: it checks that the pieces connect, not the results)
#   --sweep   the learning-rate choice, on validation only: stage 1 (seed 0, the full grid's
#             data) with each rate of $LRS (default "5e-4 1e-3 2e-3 4e-3 8e-3"), its English validation
#             accuracy and the Apertium-Spanish validation accuracy of the same model, written
#             to sweep.json in --out; the grid then runs with --lr set to the winner
#   --lr LR   the learning rate of every trained row (default 5e-4); `--lr from-sweep` takes
#             the rate a finished --sweep of the same model chose (its sweep.json in the
#             cache, else the committed one in scripts/results/crosslingual-MODEL; copied to
#             the report)
#   --model   e5 (multilingual-e5-small, LoRA on query,value; the default) or smollm2
#             (SmolLM2-135M-Instruct, the decoder: its GGUF converted to an F32 folder, LoRA on
#             q_proj,v_proj, a LlamaForSequenceClassification head on the last token; the full
#             grid runs rows 1-5 with add_relu, output in crosslingual-smollm2)
#   --fusions the FLARE fusions to train (default: all six on e5, add_relu on smollm2)
#   --resume  reuse every training run and evaluation already finished in --out (its cost or
#             seconds file written), so an interrupted grid, or one given more --seeds, goes
#             on where it stopped; a run recorded with other options (NAME.args) is an error,
#             not a silent mix (runs from before .args files existed are trusted as they are)
# `make crosslingual` runs the full grid (about 2 hours on 2 cores, 37 minutes a seed). Needs a release build ($FLARE_BIN overrides the
# folder of the tools).
set -eu
cd "$(dirname "$0")/.."
QUICK=0
SEEDS=3
OUT=""
RESUME=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --tiny) QUICK=2 ;;
    --sweep) QUICK=3 ;;
    --seeds) SEEDS=$2; shift ;;
    --lr) LR=$2; shift ;;
    --model) MODEL_NAME=$2; shift ;;
    --fusions) FUSIONS_OPT=$2; shift ;;
    --out) OUT=$2; shift ;;
    --resume) RESUME=1 ;;
    *) echo "usage: scripts/crosslingual.sh [--quick | --tiny | --sweep] [--model e5|smollm2] [--seeds N] [--lr LR] [--fusions \"F...\"] [--out DIR] [--resume]" >&2
       exit 64 ;;
  esac
  shift
done
CACHE=${FLARE_CACHE:-$HOME/.cache/flare}
BIN=${FLARE_BIN:-.build/release}
DATA=Fixtures/data/bible
MODEL_NAME=${MODEL_NAME:-e5}
case "$MODEL_NAME" in
  e5) MODEL=$CACHE/models/multilingual-e5-small; MODULES=query,value; SUFFIX=""
      RESULTS=scripts/results/crosslingual-e5-small ;;
  smollm2) MODEL=$CACHE/models/smollm2-hf; MODULES=q_proj,v_proj; SUFFIX=-smollm2
      RESULTS=scripts/results/crosslingual-smollm2 ;;
  *) echo "--model: e5 or smollm2, not '$MODEL_NAME'" >&2; exit 64 ;;
esac
if [ "$QUICK" = 1 ]; then
  SEEDS=1; NTRAIN=100; NVALID=50; NTEST=100
  FUSIONS="add_relu"
  OUT=${OUT:-$CACHE/crosslingual$SUFFIX-quick}
elif [ "$QUICK" = 2 ]; then
  SEEDS=1; NTRAIN=2; NVALID=1; NTEST=2; BATCH=4; MAXLEN=16
  FUSIONS="add_relu"
  OUT=${OUT:-$CACHE/crosslingual$SUFFIX-tiny}
else
  # 2,400 training verses (150 steps a row), 600 validation, all 1,500 test verses: about
  # 37 minutes a seed on a 2-core Xeon (measured: 150 steps take 99 s for LoRA, 160 s for
  # FLARE, an evaluation of the 1,500 test verses 29 s for LoRA, 61 s for FLARE).
  NTRAIN=400; NVALID=100; NTEST=250
  FUSIONS="add mul add_relu matmul matmul_relu cross-attention"
  [ "$MODEL_NAME" = smollm2 ] && FUSIONS="add_relu"
  if [ "$QUICK" = 3 ]; then OUT=${OUT:-$CACHE/crosslingual$SUFFIX-sweep}; else OUT=${OUT:-$CACHE/crosslingual$SUFFIX}; fi
fi
FUSIONS=${FUSIONS_OPT:-$FUSIONS}
SWEEP=$CACHE/crosslingual$SUFFIX-sweep/sweep.json
[ -f "$SWEEP" ] || SWEEP=$RESULTS/sweep/sweep.json
if [ "${LR:-}" = from-sweep ]; then
  [ -f "$SWEEP" ] || { echo "--lr from-sweep: no sweep.json (run --sweep first)" >&2; exit 1; }
  LR=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["chosen_lr"])' "$SWEEP")
  mkdir -p "$OUT"
  cp "$SWEEP" "$OUT/sweep.json"
fi
# Hyperparameters: FLARE.md 2.5 and 4 (r 8, alpha 16, query/value, AdamW with linear decay),
# scaled to this data: one epoch, batch 16, lr $LR (chosen by --sweep on validation) with 30
# warm-up steps (stage 1 and every stage-2 row alike), verses cut to 64 tokens (128 with
# --input-fusion).
MAXLEN=${MAXLEN:-64}
BATCH=${BATCH:-16}
LR=${LR:-5e-4}
TRAIN_OPTS="--task classification --target-modules $MODULES --rank 8 --alpha 16
  --batch-size $BATCH --epochs 1 --lr $LR --schedule linear --warmup-steps 30 --max-length $MAXLEN
  --json --force --quiet"
for tool in flare-train flare-merge flare-eval; do
  [ -x "$BIN/$tool" ] || { echo "no $BIN/$tool: build first (swift build -c release)" >&2; exit 1; }
done
if [ ! -f "$MODEL/model.safetensors" ] && [ "$MODEL_NAME" = smollm2 ]; then
  # The decoder: the SmolLM2 GGUF that `make models` fetches, as an F32 folder (written
  # atomically by flare-convert).
  "$BIN/flare-convert" -q "$CACHE/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf" "$MODEL"
fi
mkdir -p "$OUT/data" "$OUT/runs" "$OUT/eval"
# The first N verses of each class, in file order (the parallel files list the same verses
# in the same order, so they stay parallel).
per_class() {
  awk -v n="$1" 'match($0, /"label": "[^"]*"/) { l = substr($0, RSTART, RLENGTH); if (c[l]++ < n) print }' "$2"
}
per_class "$NTRAIN" "$DATA/train.en" > "$OUT/data/train.en"
per_class "$NTRAIN" "$DATA/train.es-mt" > "$OUT/data/train.es-mt"
per_class "$NVALID" "$DATA/valid.en" > "$OUT/data/valid.en"
per_class "$NVALID" "$DATA/valid.es-mt" > "$OUT/data/valid.es-mt"
for f in test.es test.en-mt test.es-oracle; do per_class "$NTEST" "$DATA/$f" > "$OUT/data/$f"; done
# The Spanish test verses without a source (FLARE target-only).
sed 's/, "source": .*}$/}/' "$OUT/data/test.es" > "$OUT/data/test.es-nosource"

# With --resume: true when $1/$2 finished (its $3 file exists) with the options $4, so the
# step is skipped; an error when it finished with other options.
finished() {
  [ "$RESUME" = 1 ] && [ -f "$1/$2.$3" ] || return 1
  if [ -f "$1/$2.args" ] && [ "$(cat "$1/$2.args")" != "$4" ]; then
    echo "--resume: $1/$2 was made with other options; remove it or run without --resume" >&2
    exit 1
  fi
  echo "== reusing $1/$2"
}

# Runs `flare-train` ($1: run name, rest: options) with its cost recorded in runs/NAME.cost
# and its options in runs/NAME.args; REUSED=1 when --resume skipped it.
train() {
  name=$1; shift
  REUSED=0
  if finished "$OUT/runs" "$name" cost "$*"; then REUSED=1; return 0; fi
  rm -f "$OUT/runs/$name.cost" "$OUT/runs/$name.args"
  start=$(date +%s.%N)
  if [ -x /usr/bin/time ]; then
    /usr/bin/time -f "%M" -o "$OUT/runs/$name.rss" "$BIN/flare-train" "$@" \
      > "$OUT/runs/$name.log.jsonl"
  else
    "$BIN/flare-train" "$@" > "$OUT/runs/$name.log.jsonl"
  fi
  end=$(date +%s.%N)
  echo "{\"wall_s\": $(awk "BEGIN { print $end - $start }"), \"peak_rss_kib\": $(cat "$OUT/runs/$name.rss" 2>/dev/null || echo null)}" \
    > "$OUT/runs/$name.cost"
  echo "$*" > "$OUT/runs/$name.args"
}
# Runs `flare-eval classify` ($1: result name, rest: options) with its wall time.
classify() {
  name=$1; shift
  finished "$OUT/eval" "$name" seconds "$*" && return 0
  rm -f "$OUT/eval/$name.seconds" "$OUT/eval/$name.args"
  start=$(date +%s.%N)
  "$BIN/flare-eval" classify --json "$@" > "$OUT/eval/$name.json"
  end=$(date +%s.%N)
  awk "BEGIN { print $end - $start }" > "$OUT/eval/$name.seconds"
  echo "$*" > "$OUT/eval/$name.args"
}

if [ "$QUICK" = 3 ]; then
  LRS=${LRS:-5e-4 1e-3 2e-3 4e-3 8e-3}
  for lr in $LRS; do
    # A rate already finished in this --out is reused (the sweep can be widened).
    [ -f "$OUT/eval/valid-es-mt-lr$lr.json" ] && continue
    echo "== stage 1, seed 0, lr $lr"
    # shellcheck disable=SC2086
    train "stage1-lr$lr" lora --model "$MODEL" --data "$OUT/data/train.en" --valid "$OUT/data/valid.en" \
      --output "$OUT/runs/stage1-lr$lr" --seed 0 $(echo "$TRAIN_OPTS" | sed "s/--lr $LR/--lr $lr/")
    classify "valid-en-lr$lr" --model "$MODEL" --adapter "$OUT/runs/stage1-lr$lr" \
      --data "$OUT/data/valid.en" --max-length $MAXLEN
    classify "valid-es-mt-lr$lr" --model "$MODEL" --adapter "$OUT/runs/stage1-lr$lr" \
      --data "$OUT/data/valid.es-mt" --max-length $MAXLEN
  done
  # shellcheck disable=SC2086
  python3 scripts/crosslingual-report.py --sweep "$OUT" $LRS
  exit 0
fi

seed=0
while [ "$seed" -lt "$SEEDS" ]; do
  s=s$seed
  echo "== seed $seed: stage 1 (English LoRA), merged in F32"
  # shellcheck disable=SC2086
  train "stage1-$s" lora --model "$MODEL" --data "$OUT/data/train.en" --valid "$OUT/data/valid.en" \
    --output "$OUT/runs/stage1-$s" --seed "$seed" $TRAIN_OPTS
  M=$OUT/runs/stage1-$s-merged
  # A reused stage 1 keeps its merged model (flare-merge renames it into place complete).
  if [ "$REUSED" = 0 ] || [ ! -f "$M/model.safetensors" ]; then
    "$BIN/flare-merge" --base "$MODEL" --adapter "$OUT/runs/stage1-$s" --output "$M" --force --quiet
  fi
  classify "zero-shot-$s" --model "$M" --data "$OUT/data/test.es" --max-length $MAXLEN
  classify "translate-test-$s" --model "$M" --data "$OUT/data/test.en-mt" --max-length $MAXLEN

  echo "== seed $seed: LoRA translate-train, input-level fusion"
  # shellcheck disable=SC2086
  train "lora-tt-$s" lora --model "$M" --data "$OUT/data/train.es-mt" \
    --valid "$OUT/data/valid.es-mt" --output "$OUT/runs/lora-tt-$s" --seed "$seed" $TRAIN_OPTS
  classify "lora-tt-$s" --model "$M" --adapter "$OUT/runs/lora-tt-$s" \
    --data "$OUT/data/test.es" --max-length $MAXLEN
  # shellcheck disable=SC2086
  train "input-fusion-$s" lora --model "$M" --data "$OUT/data/train.es-mt" \
    --valid "$OUT/data/valid.es-mt" --output "$OUT/runs/input-fusion-$s" --seed "$seed" \
    --input-fusion $TRAIN_OPTS
  classify "input-fusion-$s" --model "$M" --adapter "$OUT/runs/input-fusion-$s" \
    --data "$OUT/data/test.es" --max-length $MAXLEN --input-fusion

  for fusion in $FUSIONS; do
    echo "== seed $seed: FLARE $fusion"
    # shellcheck disable=SC2086
    train "flare-$fusion-$s" flare --model "$M" --data "$OUT/data/train.es-mt" \
      --valid "$OUT/data/valid.es-mt" --output "$OUT/runs/flare-$fusion-$s" --seed "$seed" \
      --fusion "$fusion" $TRAIN_OPTS
    classify "flare-$fusion-$s" --model "$M" --adapter "$OUT/runs/flare-$fusion-$s" \
      --data "$OUT/data/test.es"
    classify "flare-$fusion-valid-$s" --model "$M" --adapter "$OUT/runs/flare-$fusion-$s" \
      --data "$OUT/data/valid.es-mt"
  done
  seed=$((seed + 1))
done

# The best fusion on validation (mean accuracy over seeds), with the oracle source and without.
best=$(python3 scripts/crosslingual-report.py --best-fusion "$OUT" $FUSIONS)
echo "== best fusion on validation: $best (oracle source, target-only)"
seed=0
while [ "$seed" -lt "$SEEDS" ]; do
  s=s$seed
  M=$OUT/runs/stage1-$s-merged
  classify "flare-$best-oracle-$s" --model "$M" --adapter "$OUT/runs/flare-$best-$s" \
    --data "$OUT/data/test.es-oracle"
  classify "flare-$best-target-only-$s" --model "$M" --adapter "$OUT/runs/flare-$best-$s" \
    --data "$OUT/data/test.es-nosource" --max-length $MAXLEN
  seed=$((seed + 1))
done

python3 scripts/crosslingual-report.py --report "$OUT" --seeds "$SEEDS" --best "$best" \
  --fusions "$FUSIONS" --bin "$BIN" --quick "$QUICK" --model "$MODEL_NAME" --lr "$LR"
echo "report: $OUT/report.md"

#!/bin/sh
# The cross-lingual grid: does FLARE beat translate-train LoRA on the committed Bible task?
# (Fixtures/data/bible: genre of a verse's book, six classes; English training verses, their
# Apertium Spanish, human Spanish RV1909 test verses with their Apertium English, and the human
# English of each test verse as an oracle source; built by scripts/build-bible-data.py.)
#
# Every row runs with the commands a user would type (flare-train, flare-merge, flare-eval) on
# multilingual-e5-small, as FLARE.md section 6.1 defines the rows:
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
# Usage: scripts/crosslingual.sh [--quick | --tiny] [--seeds N] [--out DIR]
#   --quick   one seed, 600 training / 300 validation / 600 test verses (100 / 50 / 100 per
#             class), rows zero-shot,
#             translate-test, lora-tt, input-fusion, flare-add_relu (a few minutes; 38 steps
#             per row, too few to learn the task: a check that the pipeline runs)
#   --tiny    the same rows on 12 / 6 / 12 verses of 16 tokens, batch 4 (`make test` runs it
#             with the debug build: it checks that the pieces connect, not the results)
# `make crosslingual` runs the full grid (about 1.5 hours on 2 cores). Needs a release build ($FLARE_BIN overrides the
# folder of the tools).
set -eu
cd "$(dirname "$0")/.."
QUICK=0
SEEDS=3
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --tiny) QUICK=2 ;;
    --seeds) SEEDS=$2; shift ;;
    --out) OUT=$2; shift ;;
    *) echo "usage: scripts/crosslingual.sh [--quick] [--seeds N] [--out DIR]" >&2; exit 64 ;;
  esac
  shift
done
CACHE=${FLARE_CACHE:-$HOME/.cache/flare}
BIN=${FLARE_BIN:-.build/release}
DATA=Fixtures/data/bible
E5=$CACHE/models/multilingual-e5-small
if [ "$QUICK" = 1 ]; then
  SEEDS=1; NTRAIN=100; NVALID=50; NTEST=100
  FUSIONS="add_relu"
  OUT=${OUT:-$CACHE/crosslingual-quick}
elif [ "$QUICK" = 2 ]; then
  SEEDS=1; NTRAIN=2; NVALID=1; NTEST=2; BATCH=4; MAXLEN=16
  FUSIONS="add_relu"
  OUT=${OUT:-$CACHE/crosslingual-tiny}
else
  # 2,400 training verses (150 steps a row), 600 validation, all 1,500 test verses: about
  # 30 minutes a seed on a 2-core Xeon, estimated from the per-step costs of a --quick run.
  NTRAIN=400; NVALID=100; NTEST=250
  FUSIONS="add mul add_relu matmul matmul_relu cross-attention"
  OUT=${OUT:-$CACHE/crosslingual}
fi
# Hyperparameters: FLARE.md 2.5 and 4 (r 8, alpha 16, query/value, AdamW with linear decay),
# scaled to this data: one epoch, batch 16, lr 5e-4 with 30 warm-up steps (stage 1 and every
# stage-2 row alike), verses cut to 64 tokens (128 with --input-fusion).
MAXLEN=${MAXLEN:-64}
BATCH=${BATCH:-16}
TRAIN_OPTS="--task classification --target-modules query,value --rank 8 --alpha 16
  --batch-size $BATCH --epochs 1 --lr 5e-4 --schedule linear --warmup-steps 30 --max-length $MAXLEN
  --json --force --quiet"
for tool in flare-train flare-merge flare-eval; do
  [ -x "$BIN/$tool" ] || { echo "no $BIN/$tool: build first (swift build -c release)" >&2; exit 1; }
done
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

# Runs `flare-train` ($1: run name, rest: options) with its cost recorded in runs/NAME.cost.
train() {
  name=$1; shift
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
}
# Runs `flare-eval classify` ($1: result name, rest: options) with its wall time.
classify() {
  name=$1; shift
  start=$(date +%s.%N)
  "$BIN/flare-eval" classify --json "$@" > "$OUT/eval/$name.json"
  end=$(date +%s.%N)
  awk "BEGIN { print $end - $start }" > "$OUT/eval/$name.seconds"
}

seed=0
while [ "$seed" -lt "$SEEDS" ]; do
  s=s$seed
  echo "== seed $seed: stage 1 (English LoRA), merged in F32"
  # shellcheck disable=SC2086
  train "stage1-$s" lora --model "$E5" --data "$OUT/data/train.en" --valid "$OUT/data/valid.en" \
    --output "$OUT/runs/stage1-$s" --seed "$seed" $TRAIN_OPTS
  "$BIN/flare-merge" --base "$E5" --adapter "$OUT/runs/stage1-$s" \
    --output "$OUT/runs/stage1-$s-merged" --force --quiet
  M=$OUT/runs/stage1-$s-merged
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
  --fusions "$FUSIONS" --bin "$BIN" --quick "$QUICK"
echo "report: $OUT/report.md"

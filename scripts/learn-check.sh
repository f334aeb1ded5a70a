#!/bin/sh
# Does flare-train learn on real data? Two runs on the committed Bible data (Fixtures/data/bible,
# made by scripts/build-bible-data.py), written to $FLARE_CACHE/learn-check/ with their JSON:
#
#  1. classification: a LoRA (query,value, r=8) + head on multilingual-e5-small, trained on the
#     English verses (genre of the book, six balanced classes), evaluated by `flare-eval classify`
#     on the English validation verses and on the human Spanish test verses (zero-shot transfer);
#  2. causal LM: a LoRA (q_proj,v_proj, r=8) on SmolLM2-135M (F32 folder) trained on 600 running
#     verses of the WEB, and `flare-eval perplexity` of 150 held-out verses before and after.
#
# Not part of `make test` (about 10-15 minutes on 2 cores); `make learn-check` runs it. The
# figures of a run are in scripts/TRAINING.md.
set -eu
cd "$(dirname "$0")/.."
CACHE=${FLARE_CACHE:-$HOME/.cache/flare}
OUT=$CACHE/learn-check
BIN=.build/release
DATA=Fixtures/data/bible
E5=$CACHE/models/multilingual-e5-small
SMOL=$CACHE/models/smollm2-hf
mkdir -p "$OUT"

if [ ! -f "$SMOL/model.safetensors" ]; then
  "$BIN/flare-convert" --force "$CACHE/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf" "$SMOL"
fi

echo "== 1. classification: multilingual-e5-small, genre of the verse's book (6 classes)"
start=$(date +%s)
"$BIN/flare-train" lora --model "$E5" --task classification --data "$DATA/train.en" \
  --valid "$DATA/valid.en" --output "$OUT/e5-genre" --target-modules query,value --rank 8 \
  --alpha 16 --batch-size 16 --epochs 1 --lr 5e-4 --schedule linear --warmup-steps 30 \
  --max-length 128 --seed 0 --eval-every 100 --force --quiet
echo "training: $(( $(date +%s) - start )) s"
"$BIN/flare-eval" classify --model "$E5" --adapter "$OUT/e5-genre" --data "$DATA/valid.en" \
  --json > "$OUT/e5-genre-valid.json"
"$BIN/flare-eval" classify --model "$E5" --adapter "$OUT/e5-genre" --data "$DATA/test.es" \
  --json > "$OUT/e5-genre-test-es.json"
python3 - "$OUT" <<'EOF'
import json, sys
out = sys.argv[1]
for name in ("valid", "test-es"):
    r = json.load(open(f"{out}/e5-genre-{name}.json"))
    print(f"{name}: accuracy {r['accuracy']:.4f}, macro-F1 {r['macro_f1']:.4f} "
          f"on {r['examples']} examples (majority baseline 1/6 = 0.1667)")
EOF

if python3 -c 'import peft' 2>/dev/null; then
  echo "-- the same adapter in PEFT + transformers"
  python3 scripts/check-classifier.py "$E5" "$OUT/e5-genre" "$DATA/valid.en" "$OUT/e5-genre-valid.json"
fi

echo "== 2. causal LM: SmolLM2-135M on WEB verses, perplexity of held-out verses"
python3 - "$DATA" "$OUT" <<'EOF'
import json, sys
data, out = sys.argv[1], sys.argv[2]
with open(f"{out}/lm-valid.txt", "w", encoding="utf-8") as f:
    for line in open(f"{data}/lm-valid.jsonl", encoding="utf-8"):
        f.write(json.loads(line)["text"] + "\n")
EOF
"$BIN/flare-eval" perplexity --model "$SMOL" --file "$OUT/lm-valid.txt" --context 256 --json \
  > "$OUT/lm-base.json"
start=$(date +%s)
"$BIN/flare-train" lora --model "$SMOL" --task causal-lm --data "$DATA/lm-train.jsonl" \
  --valid "$DATA/lm-valid.jsonl" --output "$OUT/smollm2-web" --target-modules q_proj,v_proj \
  --rank 8 --alpha 16 --batch-size 8 --epochs 2 --lr 5e-4 --schedule cosine --warmup-steps 10 \
  --max-length 128 --seed 0 --force --quiet
echo "training: $(( $(date +%s) - start )) s"
"$BIN/flare-eval" perplexity --model "$SMOL" --adapter "$OUT/smollm2-web" \
  --file "$OUT/lm-valid.txt" --context 256 --json > "$OUT/lm-trained.json"
python3 - "$OUT" <<'EOF'
import json, sys
out = sys.argv[1]
base = json.load(open(f"{out}/lm-base.json"))
trained = json.load(open(f"{out}/lm-trained.json"))
print(f"held-out perplexity: base {base['perplexity']:.3f}, with the LoRA "
      f"{trained['perplexity']:.3f} ({100 * (1 - trained['perplexity'] / base['perplexity']):.1f}% lower)")
EOF

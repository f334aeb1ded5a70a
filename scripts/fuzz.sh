#!/bin/sh
# Coverage-guided fuzzing of every untrusted input Flare reads (libFuzzer + AddressSanitizer).
#
# Usage: scripts/fuzz.sh [--time SECONDS] [--runs N] [--regress] [TARGET...]
#   (no targets: every target `flare-fuzz list` names)
#   --time     seconds per target (default 60; the campaign of scripts/RELIABILITY.md: 3600)
#   --runs     stop a target after N executions (default: no limit; the campaign: 10000000)
#   --regress  run each target once over its committed corpus and stop (`make fuzz-regress`,
#              part of `make test`): a reproducer that comes back fails the run
#
# Builds .build/fuzz/release/flare-fuzz (-sanitize=fuzzer,address -DFLARE_LIBFUZZER, release
# optimisation with its preconditions kept). Each target fuzzes a working corpus in
# $FLARE_CACHE/fuzz/corpus/TARGET, seeded from the committed corpus (`flare-fuzz corpus
# TARGET`); crashes, leaks, timeouts and over-cap allocations are written to
# $FLARE_CACHE/fuzz/findings/TARGET (copy each into Fixtures/fuzz/TARGET as a reproducer, with
# a regression test). Dictionaries: Fixtures/fuzz/dicts. Limits: 10 s an input, 512 MB a single allocation, 2 GB RSS. Per target
# the executions, time, coverage (edges and features) and findings go to
# $FLARE_CACHE/fuzz/results/TARGET.json and a Markdown table of every target with a result to
# $FLARE_CACHE/fuzz/results/table.md. To use both cores, run two jobs with disjoint targets
# (start the second after the first has built).
set -eu
cd "$(dirname "$0")/.."
TIME=60
RUNS=-1
REGRESS=0
TARGETS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --time) TIME=$2; shift ;;
    --runs) RUNS=$2; shift ;;
    --regress) REGRESS=1 ;;
    -*) echo "usage: scripts/fuzz.sh [--time SECONDS] [--runs N] [--regress] [TARGET...]" >&2; exit 64 ;;
    *) TARGETS="$TARGETS $1" ;;
  esac
  shift
done
CACHE=${FLARE_CACHE:-$HOME/.cache/flare}
SCRATCH=.build/fuzz
BIN=$SCRATCH/release/flare-fuzz
mkdir -p "$SCRATCH"
if ! swift build -c release --product flare-fuzz --scratch-path "$SCRATCH" \
  -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFLARE_LIBFUZZER > "$SCRATCH/build.log" 2>&1; then
  grep -e "error" "$SCRATCH/build.log" | head -n 20 >&2
  echo "fuzz.sh: the libFuzzer build failed (log: $SCRATCH/build.log)" >&2
  exit 1
fi
tail -n 1 "$SCRATCH/build.log"
[ -n "$TARGETS" ] || TARGETS=$("$BIN" list | awk '{ print $1 }')
# ASan: fail on leaks too; the allocation cap makes a hostile size a finding, not a slow run.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0}
LIMITS="-timeout=10 -malloc_limit_mb=512 -rss_limit_mb=2048"

if [ "$REGRESS" = 1 ]; then
  failed=0
  for target in $TARGETS; do
    # shellcheck disable=SC2046
    if "$BIN" "$target" $LIMITS -close_fd_mask=3 $("$BIN" corpus "$target") \
        > "$SCRATCH/regress-$target.log" 2>&1; then
      echo "fuzz-regress: $target: $("$BIN" corpus "$target" | wc -l) inputs, clean"
    else
      echo "fuzz-regress: $target: FAILED (see $SCRATCH/regress-$target.log)" >&2
      tail -n 30 "$SCRATCH/regress-$target.log" >&2
      failed=1
    fi
  done
  exit $failed
fi

RESULTS=$CACHE/fuzz/results
mkdir -p "$RESULTS"
for target in $TARGETS; do
  corpus=$CACHE/fuzz/corpus/$target
  findings=$CACHE/fuzz/findings/$target
  mkdir -p "$corpus" "$findings"
  # Seed the working corpus with the committed one (names by content, so re-seeding adds nothing).
  for file in $("$BIN" corpus "$target"); do
    cp "$file" "$corpus/seed-$(sha1sum "$file" | cut -c1-16)"
  done
  # Format keywords where they help (Fixtures/fuzz/dicts).
  case "$target" in
    safetensors | shard-index | peft-adapter) dict="-dict=Fixtures/fuzz/dicts/safetensors.dict" ;;
    gguf | gguf-model | gguf-lora) dict="-dict=Fixtures/fuzz/dicts/gguf.dict" ;;
    ggml-blocks) dict="" ;;
    *) dict="-dict=Fixtures/fuzz/dicts/json.dict" ;;
  esac
  echo "== $target: $TIME s, $(ls "$corpus" | wc -l) corpus inputs ${dict#-dict=}"
  log=$RESULTS/$target.log
  start=$(date +%s)
  status=0
  # shellcheck disable=SC2086
  "$BIN" "$target" $LIMITS -max_total_time="$TIME" -runs="$RUNS" -print_final_stats=1 \
    -close_fd_mask=3 -artifact_prefix="$findings/" $dict "$corpus" > "$log" 2>&1 \
    || status=$?
  end=$(date +%s)
  # The last status line: "#N DONE cov: E ft: F corp: C/S ..."; the final stats: executions.
  execs=$(awk '/stat::number_of_executed_units/ { print $2 }' "$log" | tail -n 1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | awk '{ print $2 }')
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -n 1 | awk '{ print $2 }')
  rss=$(awk '/stat::peak_rss_mb/ { print $2 }' "$log" | tail -n 1)
  found=$(ls "$findings" | wc -l)
  cat > "$RESULTS/$target.json" <<JSON
{"target": "$target", "seconds": $((end - start)), "executions": ${execs:-0}, "edges": ${cov:-0}, "features": ${ft:-0}, "corpus": $(ls "$corpus" | wc -l), "peak_rss_mb": ${rss:-0}, "findings": $found, "exit": $status}
JSON
  echo "   $(cat "$RESULTS/$target.json")"
done
# The table covers every target with a result, so campaigns run in parallel (one job per
# core, each with its own targets) end with one table.
{
  echo "| target | executions | seconds | edges | features | corpus | peak RSS MB | findings |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  for target in $("$BIN" list | awk '{ print $1 }'); do
    [ -f "$RESULTS/$target.json" ] || continue
    python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print("| {target} | {executions:,} | {seconds} | {edges} | {features} | {corpus} | {peak_rss_mb} | {findings} |".format(**r))' "$RESULTS/$target.json"
  done
} > "$RESULTS/table.md"
cat "$RESULTS/table.md"

#!/bin/sh
# The test suite under the sanitizers (not part of `make test`; results in scripts/RELIABILITY.md).
#
# Usage: scripts/sanitize.sh [address | thread | all]   (default: all)
#   address  the whole suite (and every tool it runs) built with AddressSanitizer
#            (-sanitize=address), in .build/asan; Flare's own C (CFlareKernels) is also built
#            with UndefinedBehaviorSanitizer (-fsanitize=undefined, no recovery: the ASan
#            runtime carries its handlers). swiftc refuses -sanitize=undefined on Linux: for
#            the Swift code the debug build's own checks (overflow, bounds, force-unwraps,
#            exclusivity) are the equivalent and are on in this run.
#   thread   the suites that run parallel code (the compute-ahead merge, parallel attention
#            heads, parallel (de)quantization, the quantized kernels' row split, the training
#            passes; $TSAN_FILTER overrides the selection) with ThreadSanitizer, in .build/tsan
# $ASAN_FILTER restricts the address run to the matching tests (a quick re-run of new code).
# Each run's log goes to .build/<name>.log; the exit status is the tests'. OpenBLAS and zlib are
# not instrumented (system libraries): ASan still checks every access Flare's code makes to
# their buffers, TSan sees no accesses inside them.
set -eu
cd "$(dirname "$0")/.."
WHICH=${1:-all}
TSAN_FILTER=${TSAN_FILTER:-"DeterminismTests|MergeEndToEndTests|MergeRealModelTests|parallel|GoldenTests|EncoderRunTests|LlamaRunTests|CommandTests|FlareInferenceTests|EvalEndToEndTests|EncoderTrainingTests|LlamaTrainingTests|KillTests|QuantizedMatrixTests|ggufQuantized"}
status=0
# Sanitizer reports (their own exit codes, 99 for ASan and 97 for TSan, keep a report from
# passing for a tool's ordinary exit 1).
REPORTS='ERROR: (Address|Leak|Thread)Sanitizer|WARNING: ThreadSanitizer|runtime error:'
run() {
  name=$1; shift
  echo "== $name: $*"
  start=$(date +%s)
  # A report from a tool the tests run counts even when the test around it passed.
  if OPENBLAS_NUM_THREADS=1 "$@" > ".build/$name.log" 2>&1 \
      && ! grep -qE "$REPORTS" ".build/$name.log"; then
    echo "   passed in $(( $(date +%s) - start )) s ($(grep -o 'Test run with [0-9]* tests' ".build/$name.log" | tail -n 1 | cut -d' ' -f4) tests)"
  else
    echo "   FAILED in $(( $(date +%s) - start )) s: see .build/$name.log"
    grep -E "$REPORTS|✘" ".build/$name.log" | head -n 20
    status=1
  fi
}
mkdir -p .build
if [ "$WHICH" = address ] || [ "$WHICH" = all ]; then
  FLARE_SANITIZED=address \
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:halt_on_error=1:exitcode=99} \
    run asan swift test --scratch-path .build/asan --sanitize address \
      -Xcc -fsanitize=undefined -Xcc -fno-sanitize-recover=undefined \
      ${ASAN_FILTER:+--filter "$ASAN_FILTER"}
fi
if [ "$WHICH" = thread ] || [ "$WHICH" = all ]; then
  TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1:exitcode=97} \
    run tsan swift test --scratch-path .build/tsan --sanitize thread --filter "$TSAN_FILTER"
fi
exit $status

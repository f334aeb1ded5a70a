#!/usr/bin/env bash
# Makes Fixtures/peft/smollm2-demo-lora.gguf: the PEFT adapter Fixtures/peft/smollm2-demo-lora
# converted by llama.cpp's own convert_lora_to_gguf.py (from the pinned llama-cpp-python sdist,
# the same one Fixtures/gguf/make_kquant_golden.py caches), with the SmolLM2 F32 HF folder
# written by flare-convert as the base config. It is the oracle for reading llama.cpp LoRA GGUFs.
# Needs CPU torch, transformers, numpy; run after scripts/fetch-models.sh and a release build.
set -euo pipefail
cd "$(dirname "$0")/../.."
CACHE=${FLARE_CACHE:-$HOME/.cache/flare}
SDIST=$CACHE/oracle/sdist/llama_cpp_python-0.3.36.tar.gz
[ -f "$SDIST" ] || python3 -m pip download --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -d "$CACHE/oracle/sdist"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
tar xzf "$SDIST" -C "$WORK" --wildcards 'llama_cpp_python-0.3.36/vendor/llama.cpp/convert_*_to_gguf.py' \
  'llama_cpp_python-0.3.36/vendor/llama.cpp/conversion/*' 'llama_cpp_python-0.3.36/vendor/llama.cpp/gguf-py/*'
HF=$WORK/smollm2-hf
.build/release/flare-convert "$CACHE/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf" "$HF" -q
LLAMA=$WORK/llama_cpp_python-0.3.36/vendor/llama.cpp
(cd "$LLAMA" && PYTHONPATH=gguf-py:. python3 convert_lora_to_gguf.py --base "$HF" --outtype bf16 \
  --outfile "$OLDPWD/Fixtures/peft/smollm2-demo-lora.gguf" "$OLDPWD/Fixtures/peft/smollm2-demo-lora")

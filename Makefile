# Flare: build, test, lint and demo targets. `make demo` and `make test` set up a fresh Debian
# machine themselves (system packages, the real model in a cache outside git).

SWIFT ?= swift
FLARE_CACHE ?= $(HOME)/.cache/flare
export FLARE_CACHE
MINILM := $(FLARE_CACHE)/models/all-MiniLM-L6-v2
SMOLLM2 := $(FLARE_CACHE)/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
E5 := $(FLARE_CACHE)/models/multilingual-e5-small
DEMO_PROMPT := Once upon a time, there was a little
SWIFT_FORMAT_CONFIG := .ci/swift-format.json

.PHONY: all deps build build-debug models demo test unit lint format man-check bench data learn-check crosslingual crosslingual-quick crosslingual-sweep crosslingual-smollm2 fuzz fuzz-regress sanitize clean

all: build

## Install the system packages Flare links against (Debian), only when missing.
deps:
	@missing=""; \
	pkg-config --exists openblas 2>/dev/null || missing="$$missing libopenblas-dev"; \
	pkg-config --exists zlib 2>/dev/null || missing="$$missing zlib1g-dev"; \
	command -v pkg-config >/dev/null || missing="$$missing pkg-config"; \
	command -v groff >/dev/null || missing="$$missing groff-base"; \
	python3 -c 'import numpy' 2>/dev/null || missing="$$missing python3-numpy python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing; \
	fi

build: deps
	$(SWIFT) build -c release

build-debug: deps
	$(SWIFT) build

## Fetch the real models, the XLM-R encoder and the tokenizer test vectors into $(FLARE_CACHE)
## (outside git).
models:
	@scripts/fetch-models.sh
	@scripts/fetch-encoders.sh
	@scripts/fetch-tokenizer-tests.sh

## The main job on the default real models: inspect all-MiniLM-L6-v2 (list, check, statistics);
## list SmolLM2's GGUF, convert it to an HF folder and prove the two hold the same weights; then
## merge a LoRA adapter (made with PEFT, Fixtures/peft) into both, exactly, and verify the results.
demo: build models
	.build/release/flare-inspect $(MINILM)
	.build/release/flare-inspect --check --data $(MINILM)/model.safetensors
	.build/release/flare-inspect --stats $(MINILM)/model.safetensors | head -n 12
	.build/release/flare-inspect --no-tensors $(SMOLLM2) | head -n 20
	mkdir -p $(FLARE_CACHE)/demo
	.build/release/flare-convert --force $(SMOLLM2) $(FLARE_CACHE)/demo/smollm2-hf
	.build/release/flare-inspect --quiet --diff $(SMOLLM2) $(FLARE_CACHE)/demo/smollm2-hf
	.build/release/flare-merge --base $(FLARE_CACHE)/demo/smollm2-hf --adapter Fixtures/peft/smollm2-demo-lora --dry-run | head -n 6
	.build/release/flare-merge --base $(FLARE_CACHE)/demo/smollm2-hf --adapter Fixtures/peft/smollm2-demo-lora \
	  --output $(FLARE_CACHE)/demo/smollm2-merged-hf --verify --force | tail -n 3
	.build/release/flare-merge --base $(SMOLLM2) --adapter Fixtures/peft/smollm2-demo-lora \
	  --output $(FLARE_CACHE)/demo/smollm2-merged.Q4_1.gguf --verify --force | tail -n 3
	@echo "--- greedy continuation: base model"
	.build/release/flare-eval generate --model $(FLARE_CACHE)/demo/smollm2-hf --prompt "$(DEMO_PROMPT)" --max-tokens 24
	@echo "--- base + adapter applied unmerged"
	.build/release/flare-eval generate --model $(FLARE_CACHE)/demo/smollm2-hf --adapter Fixtures/peft/smollm2-demo-lora --prompt "$(DEMO_PROMPT)" --max-tokens 24
	@echo "--- merged model"
	.build/release/flare-eval generate --model $(FLARE_CACHE)/demo/smollm2-merged-hf --prompt "$(DEMO_PROMPT)" --max-tokens 24
	@echo "--- merged vs base + adapter, every position of Fixtures/llama/prompts.txt"
	.build/release/flare-eval compare --model $(FLARE_CACHE)/demo/smollm2-merged-hf --model $(FLARE_CACHE)/demo/smollm2-hf \
	  --adapter Fixtures/peft/smollm2-demo-lora --file Fixtures/llama/prompts.txt
	@echo "--- sentence embeddings (all-MiniLM-L6-v2 and multilingual-e5-small)"
	.build/release/flare-eval embed --model $(MINILM) --text "The movie was wonderful." --text "La película fue maravillosa." --normalize
	.build/release/flare-eval embed --model $(E5) --text "query: The movie was wonderful." --text "query: La película fue maravillosa." --normalize

lint:
	$(SWIFT) format lint --strict --configuration $(SWIFT_FORMAT_CONFIG) -r Sources Tests Package.swift

format:
	$(SWIFT) format format -i --configuration $(SWIFT_FORMAT_CONFIG) -r Sources Tests Package.swift

man-check: deps
	@scripts/check-man.sh

unit: deps
	OPENBLAS_NUM_THREADS=1 $(SWIFT) test

test: deps models lint man-check unit fuzz-regress

## Every fuzz target once over its committed corpus, built with libFuzzer and AddressSanitizer
## (part of `make test`: a reproducer that comes back fails it; about 2 minutes to build).
fuzz-regress: deps
	scripts/fuzz.sh --regress

## The test suite under AddressSanitizer, and the parallel code's suites under ThreadSanitizer
## (not part of `make test`; an hour or more on 2 cores).
sanitize: deps models
	scripts/sanitize.sh all

## The fuzzing campaign (not part of `make test`): each target for FUZZ_TIME seconds or FUZZ_RUNS
## executions, whichever comes first (default 60 s, no execution limit; the campaign of
## scripts/RELIABILITY.md: FUZZ_TIME=3600 FUZZ_RUNS=10000000), results and findings in
## $(FLARE_CACHE)/fuzz.
FUZZ_TIME ?= 60
FUZZ_RUNS ?= -1
fuzz: deps
	scripts/fuzz.sh --time $(FUZZ_TIME) --runs $(FUZZ_RUNS)

## Benchmarks (not part of the tests): flare-inspect against the Python safetensors package.
## Rebuild the committed Bible data (Fixtures/data/bible) from the Debian SWORD Bibles and
## Apertium (installs them when missing); runs need only the committed files.
data:
	python3 scripts/build-bible-data.py

## Does flare-train learn on real data? e5-small genre classification and a SmolLM2 LoRA on Bible
## text (about 15 minutes; figures in scripts/TRAINING.md). Not part of `make test`.
learn-check: build models
	scripts/learn-check.sh

## The cross-lingual grid on multilingual-e5-small (FLARE vs translate-train LoRA, every
## baseline, every fusion, 3 seeds) with the learning rate the sweep chose on validation (the
## committed scripts/results/crosslingual-e5-small/sweep, or a newer `make crosslingual-sweep`):
## about 2 hours on 2 cores. The committed report: scripts/results/crosslingual-e5-small.
crosslingual: build models
	scripts/crosslingual.sh --lr from-sweep

## The learning-rate sweep (stage 1 on English, validation accuracy per rate).
crosslingual-sweep: build models
	scripts/crosslingual.sh --sweep

## The decoder rows (1-5, add_relu) on SmolLM2-135M: its own learning-rate sweep, then 3 seeds
## at the chosen rate (several hours on 2 cores).
crosslingual-smollm2: build models
	LRS="5e-4 1e-3 2e-3 4e-3" scripts/crosslingual.sh --sweep --model smollm2
	scripts/crosslingual.sh --model smollm2 --lr from-sweep

## The same, one seed and fewer rows and verses: a few minutes.
crosslingual-quick: build models
	scripts/crosslingual.sh --quick

bench: build models
	python3 scripts/bench-inspect.py
	python3 scripts/bench-gguf.py
	python3 scripts/bench-merge.py
	python3 scripts/bench-eval.py
	python3 scripts/bench-train.py

clean:
	rm -rf .build

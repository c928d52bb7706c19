# Two commands on a fresh machine: `make demo` and `make test`.
# Both set up everything they use: Debian tools (ffmpeg, exiftool, espeak-ng, and the chromium
# and chromedriver the browser tests drive) when missing, a virtual environment in .venv, and
# the Python packages.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
SYSTEM_TOOLS := ffmpeg ffprobe exiftool espeak-ng chromium chromedriver

.PHONY: demo test lint typecheck system-tools setup clean fuzz gpu-bundle gpu-check

system-tools:
	@missing=""; for tool in $(SYSTEM_TOOLS); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing system tools:$$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
			ffmpeg libimage-exiftool-perl espeak-ng chromium chromium-driver >/dev/null; \
	fi

# The tests of the PyTorch speech engine run on a CPU: the torch pin takes the CPU build where
# the machine's pip finds it (a local wheel folder), not a several-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q 'torch==2.13.0'
	$(BIN)/python -m pip install -q -e '.[dev,torch]'
	$(BIN)/python -m pip install -q --no-deps 'scenedetect>=0.7,<0.8'
	touch $(STAMP)

setup: system-tools $(STAMP)

demo: setup
	$(BIN)/qarina --data qarina-data demo

lint: setup
	$(BIN)/ruff check workers models evidence pipelines tests
	$(BIN)/mypy workers models evidence pipelines

# -m "" clears the fast-only default of a bare `pytest` (pyproject.toml): CI runs everything.
test: lint
	$(BIN)/python -m pytest -q -ra -m ""

# A longer fuzz campaign than `make test`'s bounded one, over the probe's parsers: inputs that
# break them are kept in tests/hardening/fuzz_regressions/, which `make test` replays.
FUZZ_MINUTES ?= 10
fuzz: setup
	$(BIN)/python -m tests.hardening.fuzz_campaign --minutes $(FUZZ_MINUTES)

# The GPU check (pipelines/gpu_check.py). `gpu-bundle`, here: the speech as arrays and Whisper
# base in parts of 40 MiB under .gpu-bundle/, for calls that carry 64 MiB each. `gpu-check`, on
# the lent GPU machine, with its own Python (no venv there), after each call's parts were kept
# by `python3 -m pipelines.gpu_check stash`: without a GPU it stops at once (exit 3).
# The wheels the image lacks go too (Python 3.12 builds of what this venv runs), under
# .gpu-bundle/wheels-*: av and ctranslate2 each fill most of a call. pillow-heif is for the
# keyframes stage's imports.
GPU_WHEELS := faster-whisper ctranslate2 av jiwer rapidfuzz pillow-heif
gpu-bundle: setup
	$(BIN)/python -m pipelines.gpu_check bundle --models qarina-data/models --to .gpu-bundle
	for package in $(GPU_WHEELS); do \
		$(BIN)/python -m pip download -q --only-binary=:all: --no-deps --python-version 3.12 \
			--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
			-d .gpu-bundle/wheels-$$package "$$package==$$($(BIN)/python -m pip show $$package | sed -n 's/^Version: //p')" \
			|| exit 1; \
	done

gpu-check:
	$(PYTHON) -m pipelines.gpu_check check

clean:
	rm -rf $(VENV) qarina-data .mypy_cache .ruff_cache .pytest_cache .gpu-bundle gpu-check-out

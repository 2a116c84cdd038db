# The two commands of the README: `make demo` and `make test`. Both create .venv and install
# what they need; nothing else has to be installed by hand.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: venv demo test test-fast bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: on a CPU machine this is the CPU wheel (no CUDA downloads)
	$(BIN)/pip install -q "torch==2.13.0"
	DS_BUILD_OPS=0 $(BIN)/pip install -q --no-build-isolation "deepspeed>=0.15,<0.20"
	$(BIN)/pip install -q -e ".[dev]"
	rm -f $(VENV)/.installed-* && touch $@

demo: venv
	$(BIN)/eve-platform demo

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: venv
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# CPU benchmarks, each against its baseline in the same run (figures: docs/benchmarks.md).
# BENCH_SHORT=1: every benchmark to the end with fewer samples and steps (about 3-4 minutes on
# 2 busy cores); CI runs it after the tests so that a broken benchmark fails CI. Its figures
# are not the documented ones.
BENCH_SHORT ?=
ifeq ($(BENCH_SHORT),1)
BENCH_model := --batch 2 --repeats 1 --loss-positions 1024 --attn-width 512
BENCH_data := --samples 48 --batches 4 --rounds 1 --image-size 240,480
BENCH_trainer := --steps 3 --reps 1 --ckpt-hidden 128 --ckpt-layers 2
BENCH_operator := --pipelines 5
BENCH_resilience := --only nodeloss --every 5
BENCH_checkpoint := --hidden 256 --layers 2 --reps 1
endif
BENCHES := model data trainer checkpoint operator resilience

bench: venv
	$(foreach b,$(BENCHES),OMP_NUM_THREADS=1 PYTHONPATH=tests $(BIN)/python benchmarks/bench_$(b).py $(BENCH_$(b)) &&) true

clean:
	rm -rf $(VENV) .eve-platform .pytest_cache

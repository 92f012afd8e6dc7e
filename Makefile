# Two commands: `make quickstart` (set up + train/evaluate/export the default
# experiment) and `make test` (set up + the whole test suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/text_classification.yaml
WORDNET := /usr/share/wordnet/data.noun

.PHONY: quickstart test test-fast lint setup venv data web clean

quickstart: setup
	$(PY) -m pipeline run $(CONFIG)

test: setup lint
	$(PY) -m pytest tests -v -ra --durations=15

# ruff (ruff.toml): pycodestyle, pyflakes, import order, bugbear, pyupgrade.
lint: venv
	$(VENV)/bin/ruff check .

# The edit loop: everything but the tests marked slow.
test-fast: setup
	$(PY) -m pytest tests -m "not slow" -q

setup: venv data web

venv: $(VENV)/.installed

# --no-compile: modules are byte-compiled when first imported, not all at
# install (49 s instead of 87 s here).
$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile -r requirements.txt 2>&1 \
	  | grep -v "is ignored: it is neither a file nor a directory" || true
	$(PY) -c "import tensorflow, tensorflow_text, tensorflow_datasets, keras_hub, ai_edge_litert, sentencepiece" \
	  || { echo "error: the Python packages did not install; see the pip output above"; exit 1; }
	touch $@

# The OS data packages (package:file it provides), installed together: apt-get
# as root, sudo otherwise, else print the command. wordnet-base: the default
# classification data and pre-training corpus; trans-de-en: translation;
# fortunes: the language model; dataset-fashion-mnist: image classification.
DATA_PACKAGES := wordnet-base:$(WORDNET) trans-de-en:/usr/share/trans/de-en \
  fortunes:/usr/share/games/fortunes/computers \
  dataset-fashion-mnist:/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
# chromium: the browser the web app's tests drive (tests/edge/test_web.py), installed
# with the data packages; nothing is downloaded at run time.
APT_PACKAGES := $(DATA_PACKAGES) chromium:/usr/bin/chromium

data:
	@missing=""; for pair in $(APT_PACKAGES); do \
	  [ -f "$${pair#*:}" ] || missing="$$missing $${pair%%:*}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing the Debian package(s)$$missing ..."; \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing) >/dev/null; \
	  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
	    (sudo apt-get update -qq && sudo apt-get install -y -qq --no-install-recommends $$missing) >/dev/null; \
	  fi; \
	  for pair in $(APT_PACKAGES); do \
	    if [ ! -f "$${pair#*:}" ]; then \
	      echo "error: $${pair#*:} is missing and could not be installed here. Run:"; \
	      echo "    sudo apt-get update && sudo apt-get install -y --no-install-recommends$$missing"; \
	      exit 1; \
	    fi; \
	  done; \
	fi

# The web app's npm packages (edge/web/package-lock.json, pinned), again only when the
# lockfile is newer than the last install.
WEB_STAMP := edge/web/node_modules/.installed
web: $(WEB_STAMP)

$(WEB_STAMP): edge/web/package-lock.json
	@command -v npm >/dev/null || { echo "error: npm is needed for edge/web: apt-get install -y npm"; exit 1; }
	cd edge/web && npm ci --no-audit --no-fund --loglevel=error
	touch $@

clean:
	rm -rf artifacts

# One venv, one install step, shared by every target.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install tutorials test test-fast explorer bench browser lint clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

## Open the tutorials in JupyterLab (installs first).
tutorials: $(STAMP)
	$(BIN)/jupyter lab notebooks/

## The standalone mask explorer page (Voila), on http://localhost:8866
explorer: $(STAMP)
	$(BIN)/voila notebooks/06_mask_explorer.ipynb --port=8866 --no-browser

## Chromium for the real-browser test (Debian's package; Playwright drives it).
browser:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "the browser test needs /usr/bin/chromium: install Debian's 'chromium' package"; exit 1; \
	  fi; }

## Every test: unit/property tests, Triton kernels (interpreter on CPU), notebooks (nbval),
## the widget in a real browser. pytest exits non-zero on failures and when no test ran.
test: $(STAMP) browser
	$(BIN)/ruff check sparse_attn_edu tests scripts
	$(BIN)/pytest -n 2 --dist loadfile -p no:cacheprovider \
	  tests notebooks --nbval --nbval-sanitize-with notebooks/nbval_sanitize.cfg

## Only the Python tests, for a quick loop while editing.
test-fast: $(STAMP)
	$(BIN)/pytest -n 2 --dist loadfile tests

## CPU benchmark of every stage and its peers (writes JSON + PNG under notebooks/results/).
bench: $(STAMP)
	$(BIN)/python -m sparse_attn_edu.bench --out notebooks/results

lint: $(STAMP)
	$(BIN)/ruff check sparse_attn_edu tests scripts

clean:
	rm -rf $(VENV) artifacts .pytest_cache .hypothesis

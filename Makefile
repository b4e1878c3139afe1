# minivlm — every target creates .venv when missing and installs into it.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: lab test lint unit notebooks student slides browser sandbox bench clean-venv

$(VENV)/bin/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11 ...'"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## make lab: install, then open JupyterLab on the notebooks
lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

## make test: install, lint, unit tests, then every notebook through nbval
test: $(STAMP) browser sandbox
	$(VENV)/bin/ruff check .
	$(PY) -m pytest tests -q
	$(PY) -m minivlm zoo build
	$(PY) -m pytest --nbval-lax notebooks -q -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check .

unit: $(STAMP)
	$(PY) -m pytest tests -q

## the BLIP-2 and LLaVA notebooks use the cached zoo components; build them first (~50 s once)
notebooks: $(STAMP)
	$(PY) -m minivlm zoo build
	$(PY) -m pytest --nbval-lax notebooks -q

## make student: regenerate student exercise notebooks (refuses to overwrite learner work)
student: $(STAMP)
	$(PY) -m minivlm student exercises/

## make slides: build every deck to offline reveal.js HTML under slides/build/
slides: $(STAMP)
	$(PY) -m minivlm slides slides/ --out slides/build

## headless Chromium for the slide tests: installed when missing and the machine allows
browser:
	@if ! { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; } \
	    || ! fc-list 2>/dev/null | grep -qi "noto sans cjk"; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk >/dev/null) \
	      || echo "warning: could not install chromium; browser tests will skip"; \
	  else echo "note: chromium (or a CJK font) not found and cannot be installed here; browser tests will skip (apt-get install chromium fonts-noto-cjk)"; fi; fi

## bubblewrap for `minivlm grade` (each submission in a sandbox): installed when missing and the
## machine allows; without it grading still works and says the submissions were not isolated
sandbox:
	@if ! command -v bwrap >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null) \
	      || echo "warning: could not install bubblewrap; minivlm grade will run submissions without a sandbox"; \
	  else echo "note: bubblewrap (bwrap) not found and cannot be installed here; minivlm grade will run submissions without a sandbox (apt-get install bubblewrap)"; fi; fi

bench: $(STAMP)
	$(PY) benchmarks/attention.py

clean-venv:
	rm -rf $(VENV)

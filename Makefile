# minivlm — every target creates .venv when missing and installs into it.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# exact versions of every dependency (see the file's header; `make lock` regenerates it)
PIP_PIN := -c constraints.txt
# notebooks run two at a time (each is single-threaded); loadscope keeps a notebook's cells in order
# on one worker, in one kernel
NB_PAR := -n 2 --dist loadscope
# unit tests two at a time too, a test file per worker (its fixtures stay in one process);
# without the nbval plugin, which imports nbformat (and a 2.6 s grammar, see tests/conftest.py)
UNIT_PAR := -n 2 --dist loadfile -p no:nbval
# one torch thread per worker: two workers on two cores; a second OpenMP thread per worker
# only spin-waits for a core (the tests' models are tiny)
UNIT_ENV := OMP_NUM_THREADS=1

.PHONY: install lab test lint unit notebooks student slides browser sandbox bench lock clean-venv

$(VENV)/bin/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11 ...'"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet pip==26.3

$(STAMP): pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PY) -m pip install --quiet $(PIP_PIN) -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## make lab: install, then open JupyterLab on the notebooks
lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

## make test: install, lint, build the zoo, unit tests, then every notebook through nbval (two at
## a time); exercise 05's training check (tests/test_ex05_checks.py) loads the zoo's components
test: $(STAMP) browser sandbox
	$(VENV)/bin/ruff check .
	$(PY) -m minivlm zoo build --jobs 2
	$(UNIT_ENV) $(PY) -m pytest tests -q $(UNIT_PAR)
	$(PY) -m pytest --nbval-lax notebooks -q -p no:cacheprovider $(NB_PAR)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

unit: $(STAMP)
	$(PY) -m pytest tests -q -p no:nbval

## the BLIP-2 and LLaVA notebooks use the cached zoo components; build them first (~50 s once)
notebooks: $(STAMP)
	$(PY) -m minivlm zoo build --jobs 2
	$(PY) -m pytest --nbval-lax notebooks -q $(NB_PAR)

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

## make lock: rewrite constraints.txt from what .venv has now (then run make test and commit it)
lock: $(STAMP)
	{ sed -n '/^#/p' constraints.txt; $(PY) -m pip freeze --exclude-editable | LC_ALL=C sort -f; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean-venv:
	rm -rf $(VENV)

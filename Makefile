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
# make test runs the zoo build, the unit tests and the notebooks in one pool of two workers, a file
# (or a whole notebook, in one kernel, cells in order) per worker, longest files first
# (tests/conftest.py orders them; xdist's own reordering by test count is off): no core idles at
# the end of one phase while the other core finishes that phase's last long file. The zoo's
# components (tests/test_zoo_cache.py, one unit each) go first; tests/conftest.py holds back the
# files that load them (most notebooks, exercise 04/05 checks) until every build has finished
# (tests/pytest_early.py, loaded before the plugins in the controller and both workers, spares each
# the 2.6 CPU-s grammar that nbval's nbformat -> jsonschema would build)
ALL_PAR := -n 2 --dist loadfile --no-loadscope-reorder -p tests.pytest_early

.PHONY: install lab test lint unit notebooks student slides sysdeps browser sandbox bench lock clean-venv

$(VENV)/bin/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11 ...'"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet pip==26.3

# pip installs on one core. On the platform constraints.txt was frozen on (Linux x86-64), two pip
# processes first install the locked versions in two halves at the same time (--no-deps: pip
# resolves nothing): torch, triton and the CUDA libraries (4.4 of the 6.3 GB, mostly unzipping)
# plus transformers (the largest Python source to byte-compile), and everything else (~150
# packages), each about half of pip's CPU time. The ordinary install then finds every dependency
# in place, installs only what the lock lacks (a new dependency before `make lock`) and minivlm
# itself (editable); pip check confirms the set. A failed half stops make. Elsewhere (or with
# PIP_SPLIT=0) only the ordinary install runs. pip's byte-compiling stays on: where
# PYTHONDONTWRITEBYTECODE is set (as on the course machine) --no-compile would make every later
# process compile what it imports again (import torch: 5-6 instead of 2.3 CPU-s)
LOCK_HALF := ^(torch|triton|nvidia-.*|cuda-.*|transformers)==
ifeq ($(shell uname -sm),Linux x86_64)
PIP_SPLIT ?= 1
else
PIP_SPLIT ?= 0
endif

$(STAMP): pyproject.toml constraints.txt | $(VENV)/bin/python
ifeq ($(PIP_SPLIT),1)
	@grep -E '$(LOCK_HALF)' constraints.txt > $(VENV)/lock-half-1.txt
	@grep -v -E '^#|$(LOCK_HALF)' constraints.txt > $(VENV)/lock-half-2.txt
	@echo "installing the locked versions of constraints.txt in two halves at the same time"
	@$(PY) -m pip install --quiet --no-deps -r $(VENV)/lock-half-1.txt & one=$$!; \
	$(PY) -m pip install --quiet --no-deps -r $(VENV)/lock-half-2.txt & two=$$!; \
	rc1=0; rc2=0; wait $$one || rc1=$$?; wait $$two || rc2=$$?; \
	if [ $$rc1 != 0 ] || [ $$rc2 != 0 ]; then \
	  echo "error: pip install -r $(VENV)/lock-half-1.txt exited $$rc1, lock-half-2.txt $$rc2 (see above)"; exit 1; fi
endif
	@# once in about ten fresh installs here the editable build of minivlm came out named "unknown"
	@# (not reproduced in isolation); a second try gets past it, a second failure stops make
	$(PY) -m pip install --quiet $(PIP_PIN) -e '.[test]' || { echo "pip install failed; trying once more"; \
	  $(PY) -m pip install --quiet $(PIP_PIN) -e '.[test]'; }
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP)

## make lab: install, then open JupyterLab on the notebooks
lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

## make test: install, lint, then build the zoo and run the unit tests and every notebook through
## nbval, in one pool (two at a time); a failed zoo build fails tests/test_zoo_cache.py
test:
	@# the Python install and the system packages download at the same time
	@$(MAKE) --no-print-directory -j2 install sysdeps
	$(VENV)/bin/ruff check .
	$(UNIT_ENV) $(PY) -m pytest tests notebooks --nbval-lax -q -p no:cacheprovider $(ALL_PAR)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

## make unit: the unit tests alone; the zoo is built by `make test` or `make notebooks` (a check
## that needs a component it does not find builds that one on first use)
unit: $(STAMP)
	$(PY) -m pytest tests -q -p no:nbval --ignore=tests/test_zoo_cache.py

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

## system packages the tests use, installed with one apt-get update when missing and the machine
## allows (root + apt-get): headless Chromium and a CJK font for the slide tests, bubblewrap for
## `minivlm grade` (each submission in a sandbox). Without them the browser tests skip and grading
## says the submissions were not isolated.
sysdeps:
	@pkgs=""; \
	if ! { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }; then pkgs="$$pkgs chromium"; fi; \
	if ! fc-list 2>/dev/null | grep -qi "noto sans cjk"; then pkgs="$$pkgs fonts-noto-cjk"; fi; \
	if ! command -v bwrap >/dev/null 2>&1; then pkgs="$$pkgs bubblewrap"; fi; \
	if [ -n "$$pkgs" ]; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing:$$pkgs"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$pkgs >/dev/null) \
	      || echo "warning: could not install$$pkgs; browser tests will skip and minivlm grade will run submissions without a sandbox"; \
	  else echo "note: not installed and cannot be installed here:$$pkgs (apt-get install$$pkgs); browser tests skip without chromium, minivlm grade runs submissions without a sandbox without bubblewrap"; fi; fi

browser sandbox: sysdeps

bench: $(STAMP)
	$(PY) benchmarks/attention.py

## make lock: rewrite constraints.txt from what .venv has now (then run make test and commit it)
lock: $(STAMP)
	{ sed -n '/^#/p' constraints.txt; $(PY) -m pip freeze --exclude-editable | LC_ALL=C sort -f; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean-venv:
	rm -rf $(VENV)

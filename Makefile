# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PYTHONUNBUFFERED := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: venv browser test demo pipeline splits bench clean help

help:           ## list the targets
	@grep -E '^[a-z]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -e ".[train,serve,cameras,test]"
	touch $(STAMP)

venv: $(STAMP)  ## create .venv and install everything (pinned by requirements.lock)

CHROMIUM ?= /usr/bin/chromium

$(CHROMIUM):    # Debian's chromium drives the review-page browser test (Playwright uses it as executable_path)
	@if command -v apt-get >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium) \
	  || echo "warning: could not install chromium: the browser test will skip (fail under CI)"; \
	else echo "warning: no apt-get: install chromium for the browser test (it skips without it)"; fi

browser: $(CHROMIUM)  ## install Debian's chromium for the browser test

test: venv browser  ## run the test suite
	BLUR_CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -q

demo: venv      ## build demo/photos from bundled photos plus blurred copies, then scan it with the shipped model
	$(BIN)/python -m ensemble.demo demo/photos
	$(BIN)/blur-detect scan demo/photos --recursive --save-maps demo/maps

pipeline: venv  ## run the five stages on ../shared/datasets/blur-photos-640 with time and memory figures
	@mkdir -p reports
	/usr/bin/time -v $(BIN)/python load_traindata.py 2> reports/time_load_traindata.txt
	/usr/bin/time -v $(BIN)/python load_testdata.py 2> reports/time_load_testdata.txt
	/usr/bin/time -v $(BIN)/python CNN.py 2> reports/time_cnn.txt
	/usr/bin/time -v $(BIN)/python train.py 2> reports/time_train.txt
	/usr/bin/time -v $(BIN)/python test.py --json reports/test_report.json 2> reports/time_test.txt
	@grep -H -E "Elapsed|Maximum resident" reports/time_*.txt

splits: venv    ## the whole recipe on scene splits 1-5 (about 35 min each), into runs/: how much is the split
	$(BIN)/python benchmarks/splits.py

bench: venv     ## run the benchmarks in benchmarks/
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:          ## remove the venv, caches and generated demo/report files (never model/ or data you made)
	rm -rf $(VENV) demo reports .pytest_cache

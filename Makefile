# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PYTHONUNBUFFERED := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: venv browser fonts ocr test demo docs pipeline splits bench clean help

help:           ## list the targets
	@grep -E '^[a-z]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -e ".[train,serve,cameras,test,ray,track]"
	touch $(STAMP)

venv: $(STAMP)  ## create .venv and install everything (pinned by requirements.lock)

CHROMIUM ?= /usr/bin/chromium

# The review page's browser test drives Debian's chromium through Playwright (as executable_path): Playwright's own
# browser download cannot be used here. Installing it needs root and apt (about 100 packages, a few minutes).
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's chromium for the review-page browser test (apt-get, as root; log: $(VENV)/apt-chromium.log)"; \
	  mkdir -p $(VENV); export DEBIAN_FRONTEND=noninteractive; \
	  { apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; } \
	    > $(VENV)/apt-chromium.log 2>&1 \
	  || echo "warning: could not install chromium (see $(VENV)/apt-chromium.log): the browser test will skip (fail under CI)"; \
	else echo "warning: chromium not found at $(CHROMIUM): install it (sudo apt-get install chromium, or set CHROMIUM=...) or the browser test skips (fails under CI)"; fi

browser: $(CHROMIUM)  ## install Debian's chromium for the browser test (needs root and apt)

# Document pages (ensemble/documents.py) are rendered with real fonts from Debian's font packages: serif, sans and
# mono families, split by family into training and held-out fonts (about 40 MB). The tests render pages, so `test`
# and `pipeline` need them. Installing them needs root and apt; without them the document tests skip (fail under CI).
FONT_PACKAGES := fonts-dejavu-core fonts-liberation2 fonts-freefont-ttf fonts-urw-base35 fonts-crosextra-carlito \
                 fonts-crosextra-caladea fonts-linuxlibertine fonts-noto-mono

fonts:          ## install the Debian font packages the document pages are rendered with (needs root and apt)
	@missing=$$(for p in $(FONT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing fonts for the document pages:" $$missing "(apt-get, as root; log: $(VENV)/apt-fonts.log)"; \
	  mkdir -p $(VENV); export DEBIAN_FRONTEND=noninteractive; \
	  { apt-get install -y -q --no-install-recommends $$missing \
	    || { apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; }; } \
	    > $(VENV)/apt-fonts.log 2>&1 \
	  || echo "warning: could not install the fonts (see $(VENV)/apt-fonts.log): the document tests will skip (fail under CI)"; \
	else echo "warning: font packages missing:" $$missing "- install them (sudo apt-get install ...) or the document tests skip (fail under CI)"; fi

# benchmarks/bench_ocr.py measures where blur starts to hurt OCR with Debian's tesseract (English data comes with it).
# Only that benchmark needs it; installing it needs root and apt (a few packages, about 22 MB).
ocr:            ## install tesseract-ocr for benchmarks/bench_ocr.py (needs root and apt)
	@if command -v tesseract >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's tesseract-ocr for the OCR benchmark (apt-get, as root; log: $(VENV)/apt-ocr.log)"; \
	  mkdir -p $(VENV); export DEBIAN_FRONTEND=noninteractive; \
	  { apt-get install -y -q tesseract-ocr || { apt-get update -q && apt-get install -y -q tesseract-ocr; }; } \
	    > $(VENV)/apt-ocr.log 2>&1 \
	  || echo "warning: could not install tesseract-ocr (see $(VENV)/apt-ocr.log): benchmarks/bench_ocr.py will not run"; \
	else echo "warning: tesseract not found: install it (sudo apt-get install tesseract-ocr) to run benchmarks/bench_ocr.py"; fi

test: venv browser fonts  ## run the test suite
	BLUR_CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -q

demo: venv fonts  ## build demo/photos from bundled photos plus blurred copies and pages, then scan it with the shipped model
	$(BIN)/python -m ensemble.demo demo/photos
	$(BIN)/blur-detect scan demo/photos --recursive --save-maps demo/maps

docs: venv browser  ## remake the README's pictures (docs/review.png, docs/blurmap_example.png) from the demo photos
	BLUR_CHROMIUM=$(CHROMIUM) $(BIN)/python docs/make_pictures.py --chromium $(CHROMIUM)

pipeline: venv fonts  ## run the five stages on ../shared/datasets/blur-photos-640 with time and memory figures
	@mkdir -p reports
	/usr/bin/time -v $(BIN)/python load_traindata.py 2> reports/time_load_traindata.txt
	/usr/bin/time -v $(BIN)/python load_testdata.py 2> reports/time_load_testdata.txt
	/usr/bin/time -v $(BIN)/python CNN.py 2> reports/time_cnn.txt
	/usr/bin/time -v $(BIN)/python train.py 2> reports/time_train.txt
	/usr/bin/time -v $(BIN)/python test.py --json reports/test_report.json 2> reports/time_test.txt
	@grep -H -E "Elapsed|Maximum resident" reports/time_*.txt

splits: venv    ## the whole recipe on scene splits 1-5 (about 35 min each), into runs/: how much is the split
	$(BIN)/python benchmarks/splits.py

bench: venv fonts ocr  ## run the benchmarks in benchmarks/
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:          ## remove the venv, caches and generated demo/report files (never model/ or data you made)
	rm -rf $(VENV) demo reports build dist *.egg-info .pytest_cache .hypothesis

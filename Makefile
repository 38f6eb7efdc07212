# One command to serve, one to test, on a fresh machine. Both create the virtual environment on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)
# `make serve PORT=8123 HOST=0.0.0.0`: only values given on the make command line count (a shell's own
# HOST or PORT variable must not move the server); FLUX_PORT / FLUX_HOST in the environment work as well.
SERVE_ARGS := $(if $(filter command line,$(origin HOST)),--host $(HOST)) \
              $(if $(filter command line,$(origin PORT)),--port $(PORT))

.PHONY: serve serve-ray test bench browser clean-venv

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
ifeq ($(HAS_GPU),yes)
	$(PIP) install -q torch
else
	$(PIP) install -q torch==2.13.0   # the CPU build (an unpinned torch pulls a multi-GB CUDA build)
endif
	$(PIP) install -q -e '.[test,ray]'   # the optional extras too, so `make test` tests them
	touch $@

serve: $(VENV)/.installed          ## start the service on http://127.0.0.1:8000 (PORT=, HOST= to change; demo model unless configured)
	$(VENV)/bin/flux-service serve $(strip $(SERVE_ARGS))

serve-ray: $(VENV)/.installed      ## the same service through Ray Serve, REPLICAS engine replicas (docs/deploy.md)
	$(VENV)/bin/flux-service serve --ray --replicas $(or $(REPLICAS),2)

test: $(VENV)/.installed browser   ## lint (ruff, import layers), then run the whole test suite
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

bench: $(VENV)/.installed          ## run the benchmarks (see docs/benchmarks.md)
	$(PY) bench/engine_overhead.py
	$(PY) bench/http_overhead.py
	$(PY) bench/scale_out.py

browser:                           ## Debian's Chromium (+ a CJK font for screenshots) for the browser test
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-microhei >/dev/null; \
	  else echo "chromium missing: run 'sudo apt-get install chromium' (the browser test needs it)"; exit 1; fi; }

clean-venv:
	rm -rf $(VENV)

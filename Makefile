# Two commands on a fresh clone:  make demo   and   make test
# Both create .venv, install torch (CPU wheel) and mechscope with its extras, then run.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
CONSTRAINTS := $(VENV)/constraints.txt

.PHONY: demo test install install-test bench clean help

help:
	@echo "make demo   - install into $(VENV) and run the main job on the embedded default"
	@echo "make test   - install into $(VENV) (with test extras) and run the test suite"
	@echo "make bench  - run the benchmarks (each prints JSON)"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel

# torch first: if a torch is already importable we keep it; otherwise install $(TORCH)
# (a local CPU wheel on our machines). The constraints file pins that version so no
# later requirement can pull a multi-GB CUDA build.
$(CONSTRAINTS): | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH)"
	$(PY) -c "import torch; print('torch==' + torch.__version__)" > $(CONSTRAINTS)

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[all]"
	touch $@

# The explorer's browser tests drive Debian's chromium through Playwright (Playwright's own
# browser download is not reachable offline). Installed with apt when we are root.
$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[all,test,interop]"
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "WARNING: chromium is not installed and we are not root: the explorer browser tests will fail"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(VENV)/bin/mechscope demo

test: install-test
	$(PY) -m pytest -q tests

# Peers for benchmarks/circuits.py: auto-circuit 1.0.1 without its hard dependencies (tracr/JAX,
# kaleido, word2word are not needed for ACDC / EAP); mechscope.circuits.peers shims the one
# TransformerLens 3 module rename it trips on.
$(VENV)/.installed-peers: $(VENV)/.installed-test
	$(PIP) install -q -c $(CONSTRAINTS) --no-deps "auto-circuit==1.0.1"
	$(PIP) install -q -c $(CONSTRAINTS) plotly ordered-set blobfile attrs vscode-tqdm
	touch $@

bench: install-test $(VENV)/.installed-peers
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache

# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo demo-inception test protos check-protos bench clean browser docs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall when the dependency list changes; the package itself is installed editable.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[server,dev]'
	# TF Serving's client stubs, for the TF Serving API tests: its `tensorflow` requirement would replace
	# tensorflow-cpu, which already provides the `tensorflow` package the stubs import.
	$(BIN)/pip install --quiet --no-deps tensorflow-serving-api==2.21.0
	# Keras 2 (tf_keras) loads the .h5 files Keras 3 cannot (RNN configs with time_major ...); same clash.
	$(BIN)/pip install --quiet --no-deps tf-keras==2.21.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

demo-inception: $(STAMP)
	$(BIN)/python examples/demo_inception.py

test: $(STAMP) browser
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The web page's test drives Debian's chromium through playwright (executable_path=/usr/bin/chromium; never
# `playwright install`). Installed here where missing; if it cannot be, that one test skips and says why.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  { $(SUDO) apt-get install -y -q chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -q >/dev/null 2>&1 && \
	    $(SUDO) apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "make browser: chromium could not be installed; the web page test will skip"

# docs/cli.md's command reference, regenerated from kvctl (a test fails when it is stale).
docs: $(STAMP)
	$(BIN)/python -m kvserve.client.docs --write docs/cli.md

protos: $(STAMP)
	$(BIN)/python -m kvserve.proto.generate

check-protos: $(STAMP)
	$(BIN)/python -m kvserve.proto.generate --check

# A 60 s soak of one kvd on loopback (bench/soak.py): infers, uploads, reloads and deletes together.
.PHONY: soak
soak: $(STAMP)
	$(BIN)/python bench/soak.py --seconds 60 --clients 4 --json bench/soak-results.json

# Served vs in-process on the same IR, InceptionV3 batch 1 (about 13 minutes on 2 cores); see docs/benchmarks.md.
bench: $(STAMP)
	$(BIN)/python bench/serving.py $(BENCH_ARGS)
	$(BIN)/python bench/matrix.py $(MATRIX_ARGS)

# One writer and two read-only replicas on one repository (loopback): convergence, and a kill -9 under load.
.PHONY: cluster-demo
cluster-demo: $(STAMP)
	$(BIN)/python examples/cluster_demo.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .demo

# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo demo-inception test protos check-protos bench clean browser system-deps docs

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

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Debian packages some tests drive for real, installed where missing: chromium for the web page (playwright with
# executable_path=/usr/bin/chromium; never `playwright install`) and libb64-0d for Triton's perf_analyzer (its
# libcudart.so.12 comes from the nvidia-cuda-runtime-cu12 wheel in the dev extra). Where they cannot be
# installed, the tests that need them skip and say why.
SYSTEM_PACKAGES := chromium libb64-0d
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	[ -z "$$missing" ] || { command -v apt-get >/dev/null 2>&1 && \
	  { $(SUDO) apt-get install -y -q $$missing >/dev/null 2>&1 || { $(SUDO) apt-get update -q >/dev/null 2>&1 && \
	    $(SUDO) apt-get install -y -q $$missing >/dev/null 2>&1; }; }; } || \
	  echo "make system-deps: could not install $$missing; the tests that need them will skip"

browser: system-deps

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

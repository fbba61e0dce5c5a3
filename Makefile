# Every target sets up what it needs on a fresh machine (venv, Go-built control plane, CRDs,
# and the Flux controllers the GitOps tests run).
# Caches live outside the repo: ~/.cache/vm-storage-reconciler (binaries, CRDs), Go's and pip's.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# pytest-xdist workers for `make test`: the tests mostly wait on controllers, so more workers
# than the 2 cores still shorten the run (docs/benchmarks.md has the figures).
TEST_WORKERS ?= 3
export GOTOOLCHAIN := local
export CGO_ENABLED := 0

.PHONY: demo test unit lint env tools manifests image bench bench-plan bench-apply \
	bench-apply-fleet bench-apply-parallel clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

env: $(STAMP) tools  ## build (or reuse) kube-apiserver, etcd, the KubeVirt/CDI CRDs, Flux controllers
	$(BIN)/python -m testenv build

# kustomize (deploy/), promtool (the alert rules) and the Prometheus Operator's CRDs, built
# from the Go module proxy into the cache like the control plane.
tools: $(STAMP)  ## build (or reuse) kustomize, promtool, the ServiceMonitor/PrometheusRule CRDs
	$(BIN)/python -c 'from testenv import binaries as b; \
	print("kustomize:", b.ensure_kustomize()); print("promtool:", b.ensure_promtool()); \
	print("monitoring CRDs:", b.ensure_monitoring_crds())'

manifests: $(STAMP)  ## deploy/: each overlay's RoleBindings from its list; cronjob.yaml, loop-deployment.yaml
	$(BIN)/python deploy/generate.py --top-level --kustomize "$$($(BIN)/python -c \
	'import sys; from testenv.binaries import ensure_kustomize as k; \
	print(k(log=lambda m: print(m, file=sys.stderr)))')"

image:  ## the container image with buildah on a Debian base (cached): deploy/image/build.sh
	deploy/image/build.sh

demo: $(STAMP)  ## the main job on the local environment: upstream KubeVirt and CDI controllers, our node side
	$(BIN)/python -m testenv demo

test: env lint  ## the whole suite: unit, simulator and cluster tests against a real API server
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadgroup

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

lint: $(STAMP)  ## ruff, ruff format --check, mypy --strict, import-linter contracts
	$(BIN)/ruff check reconciler testenv tests benchmarks deploy
	$(BIN)/ruff format --check --force-exclude reconciler testenv tests benchmarks deploy
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: bench-plan bench-apply  ## both benchmarks below

bench-plan: env  ## plan wall time, RSS and request count vs a raw LIST baseline
	$(BIN)/python benchmarks/plan_bench.py

bench-apply: env  ## apply: 50 VMs moved serially, overhead and reaction latency vs raw requests
	$(BIN)/python benchmarks/apply_bench.py

bench-apply-fleet: env  ## apply: 20 VMs moved from namespaces of 50, then of 1,000 (two runs)
	$(BIN)/python benchmarks/apply_bench.py --vms 20 --fleet 50
	$(BIN)/python benchmarks/apply_bench.py --vms 20 --fleet 1000

bench-apply-parallel: env  ## apply --parallel 5 vs --parallel 1, slow copies, 1,000-VM namespaces
	$(BIN)/python benchmarks/apply_bench.py --vms 10 --fleet 1000 --parallel 5 --copy-seconds-per-gib 2

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

// Wrapper module that pins the Prometheus Operator whose CRDs (ServiceMonitor, PrometheusRule)
// the deploy/ tests install into the local API server, so deploy/components/monitoring is
// dry-run against the real schemas. Nothing is built: testenv/binaries.py copies
// example/prometheus-operator-crd/*.yaml out of the module (located with `go mod download`).
// Update with `go get github.com/prometheus-operator/prometheus-operator@vX.Y.Z`.
module vmstorage.invalid/prometheus-operator

go 1.26.0

require github.com/prometheus-operator/prometheus-operator v0.85.0 // indirect

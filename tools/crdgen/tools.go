//go:build tools

// Package tools pins the API packages controller-gen reads. It is never built:
// the blank imports only keep `go mod tidy` from dropping the requirements.
package tools

import (
	_ "kubevirt.io/api/core/v1"
	_ "kubevirt.io/api/snapshot/v1beta1"
	_ "kubevirt.io/containerized-data-importer-api/pkg/apis/core/v1beta1"
)

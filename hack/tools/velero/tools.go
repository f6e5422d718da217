//go:build tools

// Package tools pins velero's main package so `go mod tidy` keeps its dependencies.
package tools

import _ "github.com/vmware-tanzu/velero/cmd/velero"

//go:build tools

// Package tools pins kopia's main package so `go mod tidy` keeps its dependencies.
package tools

import _ "github.com/kopia/kopia"

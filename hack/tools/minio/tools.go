//go:build tools

// Package tools pins MinIO's main package so `go mod tidy` keeps its dependencies.
package tools

import _ "github.com/minio/minio"

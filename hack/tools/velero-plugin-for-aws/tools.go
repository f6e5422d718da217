//go:build tools

// Package tools pins the AWS plugin's main package so `go mod tidy` keeps its dependencies.
package tools

import _ "github.com/vmware-tanzu/velero-plugin-for-aws/velero-plugin-for-aws"

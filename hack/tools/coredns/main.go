// Command coredns is upstream CoreDNS, built from the pinned module with the few plugins the real
// node's cluster DNS uses (the full plugin set pulls in every cloud SDK): the Corefile of
// devenv/realnode serves cluster.local with the kubernetes plugin on the node's address, answers
// health and readiness checks, and logs queries and errors.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	// The plugins' order in a request, as upstream's plugin.cfg has them.
	if err := dnsserver.SetDirectives([]string{"bind", "ready", "health", "errors", "log", "cache", "kubernetes"}); err != nil {
		panic(err)
	}
}

func main() {
	coremain.Run()
}

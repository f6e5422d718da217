"""The control plane's shared vocabulary: pure, frozen dataclasses (no gRPC, no Kubernetes)."""

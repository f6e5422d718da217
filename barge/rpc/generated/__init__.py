"""protoc output for proto/barge/v1/control.proto; regenerate with hack/gen-proto.sh."""

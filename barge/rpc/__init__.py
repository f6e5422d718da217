"""The gRPC adapter of the control plane: the only package that imports grpc and the generated code."""

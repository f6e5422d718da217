"""The node agent (a DaemonSet): holds one gRPC stream to the coordinator and moves a volume's
bytes between the node and the backup repository."""

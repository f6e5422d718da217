"""The coordinator (a leader-elected Deployment): watches DataUploads/DataDownloads, exposes
snapshots on nodes, assigns work to agents over gRPC and owns the CR phase machine."""

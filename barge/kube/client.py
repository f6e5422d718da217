"""Building API clients from a kubeconfig file or the in-cluster ServiceAccount."""

from __future__ import annotations

from pathlib import Path

from kubernetes import client, config

ApiClient = client.ApiClient  # re-exported so that modules outside barge.kube never import kubernetes


def api_client(kubeconfig: Path | None = None) -> client.ApiClient:
    """A client for ``kubeconfig``, or for the in-cluster ServiceAccount when none is given."""
    if kubeconfig is not None:
        return config.new_client_from_config(config_file=str(kubeconfig))
    configuration = client.Configuration()
    config.load_incluster_config(client_configuration=configuration)
    return client.ApiClient(configuration)

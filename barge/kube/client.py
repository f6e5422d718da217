"""Building API clients from a kubeconfig file or the in-cluster ServiceAccount."""

from __future__ import annotations

from pathlib import Path

import yaml
from kubernetes import client, config

from barge.errors import InvalidInput

ApiClient = client.ApiClient  # re-exported so that modules outside barge.kube never import kubernetes


def api_client(kubeconfig: Path | None = None, connections: int | None = None) -> client.ApiClient:
    """A client for ``kubeconfig``, or for the in-cluster ServiceAccount when none is given.

    ``connections``: how many connections to keep open to the API server. The library's default
    (5 per CPU) is too few for a process whose watches each hold one: requests beyond the pool open
    a new TLS connection each and drop it afterwards."""
    configuration = client.Configuration()
    try:
        if kubeconfig is not None:
            config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        else:
            config.load_incluster_config(client_configuration=configuration)
    except (config.ConfigException, OSError, ValueError, yaml.YAMLError) as err:
        where = f"kubeconfig {kubeconfig}" if kubeconfig is not None else "the in-cluster ServiceAccount"
        reason = " ".join(str(err).split())  # a YAML error spans lines
        raise InvalidInput(f"cannot configure the Kubernetes client from {where}: {reason}") from None
    if connections is not None:
        configuration.connection_pool_maxsize = connections
    return client.ApiClient(configuration)

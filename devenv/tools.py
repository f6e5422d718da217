"""Where the pinned upstream binaries (etcd, kube-apiserver, minio, ...) live.

``hack/install-tools.sh`` builds them from Go modules into ``$BARGE_CACHE_DIR/bin`` (default
``~/.cache/barge/bin``), outside the repository so a fresh clone stays small and the cache is
reused across clones and CI runs.
"""

from __future__ import annotations

import os
from pathlib import Path

from barge.errors import PermanentError


class ToolMissing(PermanentError):
    """A program the development environment needs is not installed (says how to install it)."""


def cache_dir() -> Path:
    configured = os.environ.get("BARGE_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "barge"


# What hack/install-tools.sh unpacks from Debian packages, by the name under bin/ (a package can
# provide several), with the tool that installs it.
DEBIAN_TOOLS = {
    "containerd": "containerd",
    "containerd-shim-runc-v2": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "cni": "cni-plugins",
    "busybox": "busybox",
    "xtables-nft-multi": "iptables",
    "mmdebstrap": "mmdebstrap",
}


def tool_path(name: str, installer: str | None = None) -> Path:
    """The installed binary ``name`` (or directory: ``cni``, the CNI plugins), or a ToolMissing
    that says how to install it.

    ``installer``: the command that installs a tool not built from Go modules (default:
    ``bash hack/install-tools.sh NAME``, or the package's tool for those of ``DEBIAN_TOOLS``).
    """
    path = cache_dir() / "bin" / name
    if name in DEBIAN_TOOLS and installer is None:
        installer = f"bash hack/install-tools.sh {DEBIAN_TOOLS[name]}"
    if not ((path.is_file() or path.is_dir()) and os.access(path, os.X_OK)):
        command = installer or f"bash hack/install-tools.sh {name}"
        origin = "" if installer else " (it builds the pinned version from Go modules)"
        raise ToolMissing(
            f"{name} is not installed at {path}; run `{command}` from the Barge checkout{origin}"
        )
    return path

"""Running the pinned helm binary against charts/barge, for the chart tests and local checks.

Helm's own state (repositories, cache, plugins) goes to a throw-away directory, so a run never
reads or changes the user's ~/.config/helm.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from barge.errors import PermanentError
from devenv.tools import tool_path

CHART_DIR = Path(__file__).resolve().parents[1] / "charts" / "barge"
_TIMEOUT = 300.0


class HelmFailed(PermanentError):
    """helm exited non-zero; the message carries its command line and error output."""


@dataclass(frozen=True)
class HelmResult:
    """One helm run: exit code and both outputs."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass(frozen=True)
class Helm:
    """The pinned helm binary, optionally bound to a cluster through a kubeconfig."""

    binary: Path
    kubeconfig: Path | None = None
    chart: Path = CHART_DIR

    @classmethod
    def installed(cls, kubeconfig: Path | None = None) -> Helm:
        """The helm that ``hack/install-tools.sh helm`` built (ToolMissing says how if absent)."""
        return cls(tool_path("helm"), kubeconfig)

    def run(self, *args: str, values: Mapping[str, Any] | None = None, check: bool = True) -> HelmResult:
        """Runs ``helm ARGS [-f values.yaml]``; raises HelmFailed on failure when ``check``."""
        with tempfile.TemporaryDirectory(prefix="barge-helm-") as home:
            command = [str(self.binary), *args, *self._values_args(Path(home), values)]
            if self.kubeconfig is not None:
                command += ["--kubeconfig", str(self.kubeconfig)]
            done = subprocess.run(
                command,
                check=False,
                capture_output=True,
                text=True,
                timeout=_TIMEOUT,
                env=_isolated_env(home),
            )
        result = HelmResult(tuple(args), done.returncode, done.stdout, done.stderr)
        if check and not result.ok:
            output = "\n".join(part.strip() for part in (done.stdout[-2000:], done.stderr) if part.strip())
            raise HelmFailed(f"helm {' '.join(args)} failed ({done.returncode}): {output}")
        return result

    def template(
        self,
        values: Mapping[str, Any] | None = None,
        release: str = "barge",
        namespace: str = "barge",
        extra: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        """The objects ``helm template`` renders (tests and hooks included), in order."""
        result = self.run(
            "template", release, str(self.chart), "--namespace", namespace, *extra, values=values
        )
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    def _values_args(self, home: Path, values: Mapping[str, Any] | None) -> list[str]:
        if values is None:
            return []
        path = home / "values.yaml"
        path.write_text(yaml.safe_dump(dict(values)))
        return ["--values", str(path)]


def _isolated_env(home: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("HELM_")}
    env.update(
        HELM_CACHE_HOME=f"{home}/cache",
        HELM_CONFIG_HOME=f"{home}/config",
        HELM_DATA_HOME=f"{home}/data",
        # Never the user's cluster by accident: a cluster is reached only through --kubeconfig.
        KUBECONFIG=f"{home}/no-kubeconfig",
    )
    return env

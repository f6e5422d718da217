"""A missing or broken kubeconfig is a one-line usage error, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.main import EXIT_USAGE
from agent.main import main as agent_main
from barge.errors import InvalidInput
from barge.kube.client import api_client

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("content", [None, "", "not: [a kubeconfig"])
def test_a_bad_kubeconfig_is_invalid_input_naming_the_file(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "kubeconfig"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InvalidInput, match=f"kubeconfig {path}"):
        api_client(path)


@pytest.mark.usefixtures("restored_logging")  # main() configures logging for the process
def test_the_agent_exits_with_one_line_when_its_kubeconfig_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    argv = ["--node-name", "n", "--coordinator", "x:1", "--token-file", str(token), "--ca-file", str(token),
            "--kubeconfig", str(tmp_path / "missing")]  # fmt: skip
    assert agent_main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("barge-agent: cannot configure the Kubernetes client")
    assert "Traceback" not in err

"""barge.logs: every line of the coordinator and the agent, from structlog or from the standard
library's ``logging`` (the kube and rpc adapters, grpc, urllib3), is one JSON object on stderr."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import structlog

from barge.logs import configure_logging

pytestmark = pytest.mark.usefixtures("restored_logging")


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_a_standard_library_info_line_comes_out_as_one_json_object_like_structlog_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", "json")  # as coordinator/main.py and agent/main.py do
    logging.getLogger("barge.kube.leader").info("became the leader of %s", "barge/barge-coordinator")
    structlog.get_logger("barge.coordinator").info("controller started", workers=16)
    lines = json_lines(capsys.readouterr().err)
    assert [(line["logger"], line["level"], line["event"]) for line in lines] == [
        ("barge.kube.leader", "info", "became the leader of barge/barge-coordinator"),
        ("barge.coordinator", "info", "controller started"),
    ]
    assert lines[1]["workers"] == 16
    assert all(line["timestamp"].endswith("Z") for line in lines)


def test_a_standard_library_traceback_stays_inside_its_one_json_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", "json")
    try:
        raise KeyError("spec")
    except KeyError:
        logging.getLogger("barge.probes").exception("%s died", "admission")
    (line,) = json_lines(capsys.readouterr().err)
    assert (line["level"], line["event"]) == ("error", "admission died")
    assert "KeyError: 'spec'" in line["exception"]


def test_the_level_applies_to_standard_library_loggers(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("warning", "json")
    logging.getLogger("barge.rpc.server").info("agent connected")
    logging.getLogger("barge.rpc.server").warning("agent timed out")
    structlog.get_logger("barge.agent").info("assignment started")
    assert [line["event"] for line in json_lines(capsys.readouterr().err)] == ["agent timed out"]


def test_third_party_loggers_stay_at_warning_unless_debug(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    logging.getLogger("urllib3.connectionpool").info("Starting new HTTPS connection (1): 10.96.0.1:443")
    logging.getLogger("grpc._server").info("serving")
    logging.getLogger("urllib3.connectionpool").warning("Retrying after connection broken")
    assert [line["event"] for line in json_lines(capsys.readouterr().err)] == [
        "Retrying after connection broken"
    ]
    configure_logging("debug", "json")
    request = '"GET /api/v1/nodes HTTP/1.1" 200'
    logging.getLogger("urllib3.connectionpool").debug(request)
    assert [line["event"] for line in json_lines(capsys.readouterr().err)] == [request]


def test_the_kubernetes_clients_response_bodies_are_never_logged_even_at_debug(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """kubernetes.client.rest logs every response body at DEBUG: Secrets' data, and TokenReviews,
    which echo the agent's token."""
    configure_logging("debug", "json")
    body = '{"data": {"password": "c2VjcmV0"}}'
    logging.getLogger("kubernetes.client.rest").debug("response body: %s", body)
    assert capsys.readouterr().err == ""


def test_configuring_again_replaces_the_handler_instead_of_doubling_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", "json")
    configure_logging("info", "json")
    logging.getLogger("barge.kube.events").warning("cannot record an Event")
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_the_console_format_renders_standard_library_lines_too(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "console")
    logging.getLogger("barge.kube.informer").info("relisting %s", "datauploads")
    (line,) = capsys.readouterr().err.splitlines()
    assert "relisting datauploads" in line
    assert "barge.kube.informer" in line
    assert "info" in line


def test_an_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        configure_logging("loud", "json")

"""A real Prometheus server (built from pinned Go modules) on loopback, and promtool.

Used by the observability end-to-end test: the server scrapes a ``LocalBarge``'s coordinator and
agents with the labels the chart's ServiceMonitors give them in a cluster (``job`` = the Service
name, ``namespace``, ``service``, ``pod``, ``endpoint``), loads the chart's alert rules, and
answers PromQL through its HTTP API, so the chart's dashboard and alerts run unchanged.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from barge.errors import InvalidInput, PermanentError
from devenv.processes import ServerProcess, free_port, http_ok
from devenv.tools import tool_path
from devenv.waiting import wait_for

_START_TIMEOUT = 60.0
Obj = dict[str, Any]


class PromQLError(InvalidInput):
    """Prometheus refused a query; the message carries the query and Prometheus's error."""


@dataclass(frozen=True)
class ScrapeTarget:
    """One /metrics endpoint on loopback and the target labels a ServiceMonitor would attach."""

    job: str
    port: int
    labels: Mapping[str, str] = field(default_factory=dict)


class LocalPrometheus:
    """Prometheus on a free loopback port, scraping ``targets`` every ``interval_s`` seconds."""

    def __init__(
        self,
        workdir: Path,
        targets: Sequence[ScrapeTarget],
        rule_groups: Sequence[Mapping[str, Any]] = (),
        interval_s: float = 1.0,
    ) -> None:
        self.workdir = workdir
        self.targets = tuple(targets)
        self.rule_groups = list(rule_groups)
        self.interval_s = interval_s
        self.port = 0
        self.process: ServerProcess | None = None

    def __enter__(self) -> LocalPrometheus:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalPrometheus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        rules = self.workdir / "rules.yaml"
        rules.write_text(yaml.safe_dump({"groups": self.rule_groups}))
        config = self.workdir / "prometheus.yaml"
        config.write_text(yaml.safe_dump(self._config(rules)))
        self.port = free_port()
        self.process = ServerProcess(
            "prometheus",
            [
                str(tool_path("prometheus")),
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            self.workdir / "prometheus.log",
        )
        self.process.start()
        self.process.wait_ready(lambda: http_ok("127.0.0.1", self.port, "/-/ready"), _START_TIMEOUT, "ready")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def _config(self, rules: Path) -> Obj:
        interval = f"{int(self.interval_s * 1000)}ms"
        jobs: dict[str, list[Obj]] = {}
        for target in self.targets:
            jobs.setdefault(target.job, []).append(
                {"targets": [f"127.0.0.1:{target.port}"], "labels": dict(target.labels)}
            )
        return {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {"job_name": job, "metrics_path": "/metrics", "static_configs": configs}
                for job, configs in jobs.items()
            ],
        }

    # -- the HTTP API --------------------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        """``data`` of ``GET /api/v1/<path>``; PromQLError when Prometheus answers with an error."""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                body = json.load(response)
        except urllib.error.HTTPError as err:
            body = json.loads(err.read() or b"{}")
        if body.get("status") != "success":
            raise PromQLError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[Obj]:
        """An instant query's samples (vector or scalar result), now."""
        data = self.api("query", query=expr)
        result = data["result"]
        return [{"metric": {}, "value": result}] if data["resultType"] == "scalar" else list(result)

    def selectors(self, expr: str) -> list[str]:
        """Every series selector in ``expr`` as PromQL (from Prometheus's own parser)."""
        return [_selector_text(node) for node in _walk(self.api("parse_query", query=expr))]

    def label_values(self, label: str, match: str) -> list[str]:
        return list(self.api(f"label/{label}/values", **{"match[]": match}))

    def rules(self) -> list[Obj]:
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def wait_targets_up(self, count: int, timeout: float) -> None:
        """Until ``count`` targets were scraped successfully (discovery takes a few seconds)."""

        def scraped() -> bool:
            targets = self.api("targets")["activeTargets"]
            return sum(1 for t in targets if t["health"] == "up") >= count

        wait_for(scraped, timeout, what=f"Prometheus to scrape {count} targets", interval=0.2)

    def wait_scraped_after(self, moment: float, timeout: float) -> None:
        """Until every target was scraped after ``moment`` (Unix seconds): queries then see it."""

        def fresh() -> bool:
            oldest = self.query("min(timestamp(up))")
            return bool(oldest) and float(oldest[0]["value"][1]) > moment

        wait_for(fresh, timeout, what="a scrape of every target", interval=0.2)

    def up(self) -> dict[str, float]:
        """``up`` per scrape target, keyed by its ``pod`` label (or instance)."""
        return {
            s["metric"].get("pod", s["metric"]["instance"]): float(s["value"][1]) for s in self.query("up")
        }


def _walk(node: Any) -> Iterator[Obj]:
    if isinstance(node, dict):
        if node.get("type") in ("vectorSelector", "matrixSelector"):
            yield node
            return
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _selector_text(node: Obj) -> str:
    matchers = ", ".join(f"{m['name']}{m['type']}{json.dumps(m['value'])}" for m in node["matchers"])
    return f"{{{matchers}}}"


def check_rules(groups: Sequence[Mapping[str, Any]], workdir: Path) -> str:
    """``promtool check rules`` on ``groups``; its report, or PermanentError with it."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": list(groups)}))
    done = subprocess.run(
        [str(tool_path("promtool")), "check", "rules", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise PermanentError(f"promtool check rules failed ({done.returncode}):\n{report}")
    return report

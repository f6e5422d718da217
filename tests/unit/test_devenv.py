"""Unit tests of the dev-environment plumbing that need no real server."""

from __future__ import annotations

import hashlib
import io
import json
import ssl
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from cryptography import x509

from barge.clock import ManualClock
from barge.errors import PermanentError, TemporaryError
from devenv.azureserver import LocalAzureServer
from devenv.pki import CertificateAuthority, make_control_plane_pki
from devenv.processes import ServerProcess, free_port, namespace_port
from devenv.realnode.image import ImageRef, oci_archive
from devenv.realnode.namespace import HostFootprint
from devenv.tools import ToolMissing, tool_path


def test_missing_tool_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BARGE_CACHE_DIR", str(tmp_path))
    with pytest.raises(ToolMissing, match=r"run `bash hack/install-tools.sh etcd`"):
        tool_path("etcd")
    assert issubclass(ToolMissing, PermanentError)


def test_tool_path_finds_an_executable_in_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BARGE_CACHE_DIR", str(tmp_path))
    binary = tmp_path / "bin" / "etcd"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\n")
    with pytest.raises(ToolMissing):
        tool_path("etcd")  # present but not executable
    binary.chmod(0o755)
    assert tool_path("etcd") == binary


def test_pki_chains_to_its_ca_and_carries_identities(tmp_path: Path) -> None:
    pki = make_control_plane_pki(tmp_path)
    ca = x509.load_pem_x509_certificate(pki.ca.cert_path.read_bytes())
    serving = x509.load_pem_x509_certificate(pki.serving.cert_path.read_bytes())
    admin = x509.load_pem_x509_certificate(pki.admin.cert_path.read_bytes())
    for leaf in (serving, admin):
        leaf.verify_directly_issued_by(ca)
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    assert admin.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    assert oct(pki.admin.key_path.stat().st_mode & 0o777) == "0o600"
    context = ssl.create_default_context(cafile=str(pki.ca.cert_path))
    context.load_cert_chain(str(pki.admin.cert_path), str(pki.admin.key_path))


def test_wait_ready_fails_fast_with_the_log_when_the_process_dies(tmp_path: Path) -> None:
    proc = ServerProcess(
        "doomed",
        [sys.executable, "-c", "print('bad flag --frobnicate'); raise SystemExit(3)"],
        tmp_path / "log",
    )
    proc.start()
    started = time.monotonic()
    with pytest.raises(TemporaryError, match=r"exited with code 3.*\n.*bad flag --frobnicate"):
        proc.wait_ready(lambda: False, timeout=30, what="ready")
    assert time.monotonic() - started < 10


def test_wait_ready_times_out_with_what_it_waited_for(tmp_path: Path) -> None:
    proc = ServerProcess("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "log")
    proc.start()
    try:
        with pytest.raises(TemporaryError, match="sleeper not listening after 0s"):
            proc.wait_ready(lambda: False, timeout=0.3, what="listening")
    finally:
        proc.stop(grace=1)
    assert proc.exit_code() is not None


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(60)"
    )
    proc = ServerProcess("stubborn", [sys.executable, "-c", code], tmp_path / "log")
    proc.start()
    proc.wait_ready(lambda: "up" in (tmp_path / "log").read_text(), timeout=10, what="up")
    started = time.monotonic()
    proc.stop(grace=0.5)
    assert proc.exit_code() == -9
    assert time.monotonic() - started < 5


def test_a_server_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    starter = (
        "import sys, time; from pathlib import Path; from devenv.processes import ServerProcess; "
        "p = ServerProcess('orphan', ['sleep', '120'], Path(sys.argv[1])); p.start(); "
        "print(p.pid, flush=True); time.sleep(120)"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", starter, str(tmp_path / "log")], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    # setpriv sets the parent-death signal, then execs the server: kill the parent only after
    # that, as a parent killed before it leaves the child unguarded (seen on a loaded machine).
    deadline = time.monotonic() + 10
    while _command(child) != "sleep" and time.monotonic() < deadline:
        time.sleep(0.01)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the server outlived the killed process that started it"


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return ""


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper this container may not have."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_namespace_ports_stay_below_the_ephemeral_range_and_are_never_handed_out_twice() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [namespace_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= port < min(low, 30000) for port in ports)  # nor among NodePorts


def test_manual_clock_only_moves_when_told() -> None:
    clock = ManualClock()
    before = clock.now()
    clock.sleep(90)
    assert clock.monotonic() == 90
    assert (clock.now() - before).total_seconds() == 90
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)


def test_a_missing_azurite_names_its_own_installer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BARGE_CACHE_DIR", str(tmp_path))
    with (
        pytest.raises(ToolMissing, match=r"run `bash hack/install-azurite.sh` from the Barge checkout$"),
        LocalAzureServer(),
    ):
        pass


def test_a_missing_debian_tool_names_the_package_tool_that_installs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BARGE_CACHE_DIR", str(tmp_path))
    with pytest.raises(ToolMissing, match=r"run `bash hack/install-tools.sh containerd`") as missing:
        tool_path("ctr")
    assert "Go modules" not in str(missing.value)
    plugins = tmp_path / "bin" / "cni"
    plugins.mkdir(parents=True)
    assert tool_path("cni") == plugins  # the CNI plugin directory


def test_the_ca_loaded_from_its_files_issues_certificates_that_chain_to_it(tmp_path: Path) -> None:
    pki = make_control_plane_pki(tmp_path, serving_ips=("10.99.1.2",))
    serving = x509.load_pem_x509_certificate(pki.serving.cert_path.read_bytes())
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "10.99.1.2" in [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]

    kubelet = CertificateAuthority.load(pki.ca).issue(
        tmp_path, "kubelet", "system:node:n1", organization="system:nodes"
    )
    ca = x509.load_pem_x509_certificate(pki.ca.cert_path.read_bytes())
    x509.load_pem_x509_certificate(kubelet.cert_path.read_bytes()).verify_directly_issued_by(ca)


def _tar_members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: (tar.extractfile(m) or io.BytesIO()).read() for m in tar.getmembers() if m.isfile()}


def test_an_oci_archive_names_its_image_and_every_blob_matches_its_digest(tmp_path: Path) -> None:
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    archive = oci_archive(tmp_path / "image.tar", ImageRef("hello", "1"), [layer.getvalue()], cmd=["cat"])

    files = _tar_members(archive.read_bytes())
    for name, content in files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(content).hexdigest() == name.removeprefix("blobs/sha256/")
    (descriptor,) = json.loads(files["index.json"])["manifests"]
    assert descriptor["annotations"]["io.containerd.image.name"] == "localhost/hello:1"
    manifest = json.loads(files[f"blobs/sha256/{descriptor['digest'].removeprefix('sha256:')}"])
    config = json.loads(files[f"blobs/sha256/{manifest['config']['digest'].removeprefix('sha256:')}"])
    assert config["config"]["Cmd"] == ["cat"]
    (layer_blob,) = manifest["layers"]
    assert config["rootfs"]["diff_ids"] == [layer_blob["digest"]]  # uncompressed: digest == diff id
    assert _tar_members(files[f"blobs/sha256/{layer_blob['digest'].removeprefix('sha256:')}"]) == {
        "hello.txt": b"hello"
    }
    rebuilt = oci_archive(tmp_path / "again.tar", ImageRef("hello", "1"), [layer.getvalue()], cmd=["cat"])
    assert rebuilt.read_bytes() == archive.read_bytes()  # reproducible


def test_a_host_footprint_reports_only_what_was_added() -> None:
    before = HostFootprint(frozenset({"/"}), frozenset({"lo"}), frozenset(), frozenset())
    after = HostFootprint(
        frozenset({"/", "/var/lib/kubelet"}),
        frozenset({"lo", "barge-node1"}),
        frozenset({"/sys/fs/cgroup/cpu/barge-realnode-1"}),
        frozenset(),
    )
    assert after.added_since(before) == {
        "mounts": ["/var/lib/kubelet"],
        "links": ["barge-node1"],
        "cgroups": ["/sys/fs/cgroup/cpu/barge-realnode-1"],
    }
    assert before.added_since(after) == {}

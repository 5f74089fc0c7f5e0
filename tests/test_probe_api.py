"""`oms probe --api` (the image's HEALTHCHECK) finds the port the running `oms api` was given."""

from __future__ import annotations

import subprocess
from pathlib import Path

from oms.cli import _api_health_url
from tests.support.processes import OMS


def fake_proc(root: Path, processes: dict[int, list[str]]) -> Path:
    for pid, argv in processes.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    return root


def test_the_api_port_comes_from_its_command_line(tmp_path: Path) -> None:
    proc = fake_proc(
        tmp_path,
        {
            1: ["catatonit", "--", "oms", "api"],  # an init: not the API itself
            7: ["/opt/oms/bin/python3", "/opt/oms/bin/oms", "api", "--port", "9000"],
            9: ["/opt/oms/bin/python3", "-c", "from multiprocessing.spawn import spawn_main"],
        },
    )
    assert _api_health_url(proc) == "http://127.0.0.1:9000/health"


def test_the_default_port_and_an_explicit_host(tmp_path: Path) -> None:
    default = fake_proc(tmp_path / "a", {3: ["/usr/bin/python3", "-m", "oms.cli", "api"]})
    assert _api_health_url(default) == "http://127.0.0.1:8000/health"
    ipv6 = fake_proc(tmp_path / "b", {3: ["/x/oms", "api", "--host", "::1", "--port", "81"]})
    assert _api_health_url(ipv6) == "http://[::1]:81/health"
    other = fake_proc(tmp_path / "c", {3: ["/x/oms", "worker"], 4: ["python3", "api"]})
    assert _api_health_url(other) is None


def test_probe_api_and_a_url_are_exclusive() -> None:
    both = subprocess.run(
        [OMS, "probe", "--api", "http://127.0.0.1:1/"], capture_output=True, text=True, timeout=30
    )
    assert both.returncode == 2
    assert "not both" in both.stderr

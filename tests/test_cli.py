"""The `genart` and `genart-sidecar` command lines, run as real subprocesses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SidecarProcess

pytestmark = pytest.mark.process


def genart(sc: SidecarProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "genart_core.cli",
            "--connection-file",
            str(sc.connection_file),
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_status_submit_wait_jobs_events(sidecar: SidecarProcess) -> None:
    out = genart(sidecar, "status")
    assert out.returncode == 0, out.stderr
    assert "engine fake 1: txt2img, img2img, sequence" in out.stdout
    out = genart(sidecar, "submit", "fake", "-p", "steps=3", "-p", "seed=4", "--wait")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    job = lines[0]
    assert any("step 3/3" in line for line in lines)
    assert lines[-1].startswith(f"[{job}] completed")
    assert job in genart(sidecar, "jobs").stdout
    assert "result" in genart(sidecar, "events", job).stdout


def test_failures_have_exit_codes_and_clear_words(sidecar: SidecarProcess, tmp_path: Path) -> None:
    out = genart(sidecar, "submit", "fake", "-p", "mode=fail", "--wait")
    assert out.returncode == 1 and "failed as asked" in out.stderr
    out = genart(sidecar, "submit", "fake", "-p", "steps=0")
    assert out.returncode == 2 and "params.steps" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "genart_core.cli",
            "--connection-file",
            str(tmp_path / "none.json"),
            "status",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 3 and "genart-sidecar" in out.stderr


def test_console_scripts_are_installed() -> None:
    bindir = Path(sys.executable).parent
    for name in ("genart", "genart-sidecar"):
        out = subprocess.run(
            [str(bindir / name), "--help"], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0 and "usage" in out.stdout

"""`models` lists what is on the machine (HF cache layout, --models folders, single
files) with family, kind, size and content hash; downloads refuse to run offline."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SidecarProcess
from sdtiny import build_tiny_controlnet, build_tiny_lora, build_tiny_sd

from genart_core.protocol.errors import InvalidParams

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lib")
    build = root / "build"
    sd = build_tiny_sd(build)
    models = root / "models"
    models.mkdir()
    shutil.copytree(sd, models / "tiny-sd")
    build_tiny_controlnet(sd, models / "tiny-controlnet")
    lora = build_tiny_lora(sd, build / "lora")
    shutil.copy(lora, models / "style-lora.safetensors")
    (models / "notes.txt").write_text("not a model")
    # The Hugging Face cache's own layout: models--owner--name/snapshots/<rev>/...
    snap = root / "hub" / "models--someone--tiny-sd" / "snapshots" / "0123abcd"
    shutil.copytree(sd, snap)
    return {"models": models, "hub": root / "hub"}


def test_models_lists_folders_files_and_the_cache(tmp_path: Path, library: dict[str, Path]) -> None:
    sc = SidecarProcess(
        tmp_path / "state",
        ["--models", str(library["models"])],
        env={"HF_HUB_CACHE": str(library["hub"]), "GENART_MODELS": ""},
    ).start()
    try:
        with sc.connect() as c:
            reply = c.call("models", {}).result
            by_id = {e["id"]: e for e in reply["models"]}
            lora = by_id[str(library["models"] / "style-lora.safetensors")]
            assert (lora["kind"], lora["source"]) == ("lora", "file")
            data = (library["models"] / "style-lora.safetensors").read_bytes()
            assert lora["sha256"] == hashlib.sha256(data).hexdigest()
            assert lora["size"] == len(data)
            sd = by_id[str(library["models"] / "tiny-sd")]
            assert (sd["family"], sd["kind"], sd["source"]) == ("sd1", "base", "folder")
            cn = by_id[str(library["models"] / "tiny-controlnet")]
            assert cn["kind"] == "controlnet"
            cached = by_id["someone/tiny-sd"]
            assert cached["source"] == "hf_cache" and cached["sha256"] == sd["sha256"]
            assert not any(e["id"].endswith("notes.txt") for e in reply["models"])
            # A changed file changes its hash; the cache of hashes notices.
            with open(library["models"] / "style-lora.safetensors", "ab") as f:
                f.write(b" ")
            again = {e["id"]: e for e in c.call("models", {}).result["models"]}
            assert again[lora["id"]]["sha256"] != lora["sha256"]
            assert again[sd["id"]]["sha256"] == sd["sha256"]
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "genart_core.cli",
                "--connection-file",
                str(sc.connection_file),
                "models",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert "someone/tiny-sd" in out.stdout and "lora" in out.stdout
    finally:
        sc.stop()


def test_a_download_while_offline_is_refused_clearly(sidecar: SidecarProcess) -> None:
    with sidecar.connect() as c:
        job = c.submit("download", {"repo_id": "owner/model"}, task="download")
        with pytest.raises(InvalidParams) as exc:
            c.wait(job, timeout=60)
        assert exc.value.field == "params.online"
        assert "Allow Online Access" in exc.value.message and "owner/model" in exc.value.message
        job = c.submit("download", {"repo_id": "no-slash", "online": True}, task="download")
        with pytest.raises(InvalidParams) as exc:
            c.wait(job, timeout=60)
        assert exc.value.field == "params.repo_id"

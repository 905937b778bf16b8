"""DownloadEngine: fetches a model from the Hugging Face Hub into the local cache, as a job.

A download is a job like any other: progress (file i of N), cancel between files, a clear
failure. It runs only when the request says online access is allowed (the add-on passes
Blender's `bpy.app.online_access`); otherwise it refuses and says what is missing. A token
for gated repos comes from the usual places (HF_TOKEN, `huggingface-cli login`).
"""

from __future__ import annotations

from typing import Any

from ..protocol.errors import EngineFailed, InvalidParams
from .base import Engine, Input, Output, RunContext
from .schema import Param


class DownloadEngine(Engine):
    name = "download"
    version = "1"
    tasks = ("download",)
    help = "Download a model repository into the local Hugging Face cache."
    capabilities = {"needs_network": True}
    params = (
        Param("repo_id", "string", "", "Hugging Face repo id, e.g. owner/name", max=200),
        Param("revision", "string", "main", "branch, tag or commit", max=200),
        Param(
            "allow_patterns",
            "string_list",
            [],
            "only files matching these globs (e.g. *.safetensors, *.json); empty: the whole repo",
        ),
        Param(
            "online",
            "bool",
            False,
            "the user allows network access (Blender: "
            "Preferences > System > Network > Allow Online Access)",
        ),
    )

    def run(
        self, task: str, params: dict[str, Any], inputs: dict[str, Input], ctx: RunContext
    ) -> list[Output]:
        repo = params["repo_id"]
        if repo.count("/") != 1:
            raise InvalidParams(f"{repo!r} is not a repo id (owner/name)", field="params.repo_id")
        if not params["online"]:
            raise InvalidParams(
                f"downloading {repo} needs online access, which is off: allow it (in Blender: "
                "Preferences > System > Network > Allow Online Access), or put the model in a "
                "local folder and point the model setting at it",
                field="params.online",
                allowed=[True],
            )
        import fnmatch

        from huggingface_hub import HfApi, hf_hub_download
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

        try:
            files = HfApi().list_repo_files(repo, revision=params["revision"])
            if params["allow_patterns"]:
                files = [
                    f for f in files if any(fnmatch.fnmatch(f, p) for p in params["allow_patterns"])
                ]
            ctx.progress(0, max(len(files), 1))
            for i, name in enumerate(files):
                hf_hub_download(repo, name, revision=params["revision"])
                ctx.progress(i + 1, len(files))  # cancel takes effect between files
        except GatedRepoError:
            raise EngineFailed(
                f"{repo} is gated: accept its licence on the Hub and log in "
                "(`huggingface-cli login` or HF_TOKEN)",
                field="params.repo_id",
            ) from None
        except RepositoryNotFoundError:
            raise InvalidParams(
                f"no repo {repo} on the Hub (or it is private)", field="params.repo_id"
            ) from None
        except OSError as exc:
            raise EngineFailed(
                f"cannot download {repo}: {str(exc)[:300]}", field="params.online"
            ) from None
        return []

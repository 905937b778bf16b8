#!/usr/bin/env bash
# The test command: builds or updates the venvs (idempotent), lints, type-checks (mypy), then
# runs every test, every marker (process, slow, blender, gpu) included. Extra arguments go
# to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source dev/env.sh
echo "== ruff"
.venv/bin/ruff check genart_core sidecar tests bench dev examples blender_addon
echo "== mypy genart_core sidecar"
.venv/bin/mypy
echo "== mypy blender_addon (fake-bpy-module, in .venv-typing)"
# The add-on imports the protocol from _vendor/, which only the --dev build writes.
.venv/bin/python dev/build_addon.py --dev >/dev/null
.venv-typing/bin/mypy -p blender_addon --cache-dir .venv-typing/mypy_cache
echo "== pytest"
exec .venv/bin/python -m pytest "$@"

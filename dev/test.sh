#!/usr/bin/env bash
# The test command: builds or updates .venv (idempotent), lints, then runs every test,
# every marker (process, slow, blender, gpu) included. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source dev/env.sh
echo "== ruff"
.venv/bin/ruff check genart_core sidecar tests bench dev examples blender_addon
echo "== pytest"
exec .venv/bin/python -m pytest "$@"

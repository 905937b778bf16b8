#!/usr/bin/env bash
# The demo command: builds .venv if needed, starts a sidecar, runs jobs end to end and
# writes the images under out/demo/. (It grows into the full headless Blender demo.)
set -euo pipefail
cd "$(dirname "$0")/.."
source dev/env.sh
exec .venv/bin/python dev/demo.py "$@"

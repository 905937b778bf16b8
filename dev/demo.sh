#!/usr/bin/env bash
# The demo command: builds .venv if needed, starts a sidecar, runs Blender headless with the
# genart add-on texturing a scene (tiny untrained SD stand-ins until issue 8, the procedural
# texsynth engine), renders it, streams a short sequence; everything under out/demo/.
# See dev/demo.py. Takes under a minute on a 2-core CPU once .venv exists.
set -euo pipefail
cd "$(dirname "$0")/.."
source dev/env.sh
exec .venv/bin/python dev/demo.py "$@"

#!/usr/bin/env bash
# The demo command: builds .venv if needed, starts a sidecar, runs Blender headless with the
# genart add-on on an animated scene (tiny untrained SD stand-ins until issue 8, the
# procedural texsynth engine): textures from the camera, a tileable ground, a 360° World, a
# Cycles render, then Stylize animation (24 frames at 256 px) into frames, a Video Sequencer
# strip and an MP4; everything under out/demo/. `--quick` (CI) does the same steps small
# into out/demo-quick/. See dev/demo.py. About a minute on a 2-core CPU once .venv exists
# (--quick: about 15 s).
set -euo pipefail
cd "$(dirname "$0")/.."
source dev/env.sh
exec .venv/bin/python dev/demo.py "$@"

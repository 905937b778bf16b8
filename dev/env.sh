# Sourced by dev/test.sh and dev/demo.sh: creates .venv and installs the project into it, and
# .venv-bpy45 with only the bpy 4.5 LTS wheel for the smoke test (tests/test_blender45.py),
# and .venv-typing for the add-on's mypy run (fake-bpy-module).
# torch==2.13.0 is the CPU wheel this machine image keeps on disk; a GPU box brings its own.
PY=${GENART_PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv with $PY"
    "$PY" -m venv .venv
fi
stamp=.venv/.genart-installed
if [ ! -f $stamp ] || [ pyproject.toml -nt $stamp ] \
    || [ examples/genart-texsynth/pyproject.toml -nt $stamp ]; then
    echo "== installing dependencies into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q torch==2.13.0
    .venv/bin/python -m pip install -q -e ".[dev,engines]"
    .venv/bin/python -m pip install -q -e examples/genart-texsynth
    .venv/bin/python -m pip install -q bpy==5.0.1  # the Blender wheel for `blender` tests (numpy 1.26)
    touch $stamp
fi

# One venv holds one bpy, so the minimum supported Blender (4.5 LTS) gets its own, with bpy
# and its own dependencies only (numpy<2): the add-on must run there without the project.
BPY45=4.5.15
stamp45=.venv-bpy45/.genart-bpy-$BPY45
if [ ! -f $stamp45 ]; then
    echo "== installing bpy==$BPY45 into .venv-bpy45"
    rm -rf .venv-bpy45  # absent, half-built or another bpy: start clean
    "$PY" -m venv .venv-bpy45
    .venv-bpy45/bin/python -m pip install -q --upgrade pip
    .venv-bpy45/bin/python -m pip install -q bpy==$BPY45
    touch $stamp45
fi

# The add-on's type check (dev/test.sh) runs in its own venv: fake-bpy-module's stub `bpy`
# would shadow the real bpy wheel in .venv. mypy is the version pyproject's dev extra put
# into .venv; the stubs are Blender 5.0's, numpy the 1.26 that bpy 5.0 uses.
MYPY=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('mypy'))")
FAKE_BPY=fake-bpy-module-5-0==20260730
stampt=.venv-typing/.genart-typing-$MYPY-${FAKE_BPY#*==}
if [ ! -f $stampt ]; then
    echo "== installing mypy and $FAKE_BPY into .venv-typing"
    rm -rf .venv-typing  # absent, half-built or other versions: start clean
    "$PY" -m venv .venv-typing
    .venv-typing/bin/python -m pip install -q --upgrade pip
    .venv-typing/bin/python -m pip install -q mypy==$MYPY $FAKE_BPY numpy==1.26.4
    touch $stampt
fi

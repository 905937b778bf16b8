# Sourced by dev/test.sh and dev/demo.sh: creates .venv and installs the project into it.
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

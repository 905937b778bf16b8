"""Import boundaries: genart_core never imports bpy; the add-on never imports torch,
diffusers, transformers, the sidecar or genart_core beyond its protocol; the protocol
imports the standard library only; the sidecar's server process never loads torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLENDER_MODULES = {"bpy", "bmesh", "mathutils", "gpu", "bgl", "blf", "aud", "idprop", "bpy_extras"}
MODEL_MODULES = {"torch", "diffusers", "transformers", "accelerate", "safetensors", "open_clip"}


def imports_of(source: str, module: str) -> set[str]:
    """Absolute names of every module `source` imports (relative ones resolved against
    `module`, the dotted name of the file's module), string imports included."""
    tree = ast.parse(source)
    package = module.rsplit(".", 1)[0] if "." in module else ""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                prefix = ".".join(base)
                name = f"{prefix}.{node.module}" if node.module else prefix
                found.add(name)
                if not node.module:
                    found.update(f"{prefix}.{a.name}" for a in node.names)
            else:
                found.add(node.module or "")
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id == "__import__")
            )
        ):
            found.add(node.args[0].value)
    return found


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts[-1] = "__init__"  # keeps relative resolution inside the package
    return ".".join(parts)


def tree_imports(folder: str) -> dict[str, set[str]]:
    out = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        out[str(path.relative_to(ROOT))] = imports_of(
            path.read_text(encoding="utf-8"), module_name(path)
        )
    return out


def top(name: str) -> str:
    return name.split(".")[0]


def violations(folder: str, rule) -> list[str]:  # type: ignore[no-untyped-def]
    return [
        f"{f}: {name}" for f, names in tree_imports(folder).items() for name in names if rule(name)
    ]


def core_rule(name: str) -> bool:
    return top(name) in BLENDER_MODULES or top(name) in {"sidecar", "blender_addon"}


def protocol_rule(name: str) -> bool:
    if name.startswith("genart_core.protocol"):
        return False
    return top(name) not in sys.stdlib_module_names


def addon_rule(name: str) -> bool:
    if top(name) in MODEL_MODULES or top(name) == "sidecar":
        return True
    return name.startswith("genart_core") and not name.startswith("genart_core.protocol")


def server_rule(name: str) -> bool:
    return top(name) in MODEL_MODULES


def test_checker_catches_violations() -> None:
    src = (
        "import bpy\nfrom torch import nn\nfrom ..engines import sd\nfrom . import framing\n"
        "importlib.import_module('diffusers')\n"
    )
    names = imports_of(src, "genart_core.protocol.x")
    assert {
        "bpy",
        "torch",
        "genart_core.engines",
        "genart_core.protocol.framing",
        "diffusers",
    } <= names
    assert core_rule("bpy.types") and not core_rule("numpy")
    assert protocol_rule("numpy") and protocol_rule("genart_core.engines")
    assert not protocol_rule("json") and not protocol_rule("genart_core.protocol.errors")
    assert addon_rule("genart_core.engines.sd") and addon_rule("torch") and addon_rule("sidecar")
    assert not addon_rule("genart_core.protocol.client") and not addon_rule("bpy")
    # The add-on reaches the protocol through its vendored copy (dev/build_addon.py).
    assert not addon_rule("blender_addon._vendor.genart_protocol.client")
    assert addon_rule("genart_core.engines") and addon_rule("genart_core")


def test_genart_core_never_imports_blender_or_the_sidecar() -> None:
    assert violations("genart_core", core_rule) == []


def test_protocol_is_stdlib_only() -> None:
    assert tree_imports("genart_core/protocol"), "no protocol files found"
    assert violations("genart_core/protocol", protocol_rule) == []


def test_blender_addon_imports_only_the_protocol() -> None:
    assert violations("blender_addon", addon_rule) == []


def test_sidecar_server_modules_import_no_model_library() -> None:
    server_files = {f: n for f, n in tree_imports("sidecar").items() if not f.endswith("worker.py")}
    assert server_files
    bad = [
        f"{f}: {name}" for f, names in server_files.items() for name in names if server_rule(name)
    ]
    assert bad == []


def test_importing_the_server_and_client_side_loads_no_torch() -> None:
    code = (
        "import sys, sidecar.server, sidecar.__main__, genart_core.protocol, "
        "genart_core.cli, genart_core.engines, genart_core.engines.fake\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{sorted(MODEL_MODULES)!r})\n"
        "print(heavy)\nsys.exit(1 if heavy else 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.process
def test_running_server_process_has_no_torch_loaded(sidecar) -> None:  # type: ignore[no-untyped-def]
    with sidecar.connect() as c:
        c.wait(c.submit("fake", {"steps": 1}), timeout=30)
    maps = Path(f"/proc/{sidecar.proc.pid}/maps").read_text()
    assert "libtorch" not in maps and "torch/lib" not in maps

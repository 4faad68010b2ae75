"""The package's import graph, read from the source (ast): layers, no circles, the Alrao
core on torch only, light modules that stay light, Ray's private API in one module."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "alrao_tune"
# DESIGN.md: each layer imports only the ones listed before it (and itself)
LAYERS = ("alrao", "schema", "errors", "logs", "data", "zoo", "train", "space", "tracking",
          "report", "tune", "bench", "dashboard", "cli")
RAY_COMPAT = "alrao_tune.tune._ray_compat"


@cache
def modules() -> dict[str, Path]:
    """Module name -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module of a ``from ... import`` (relative ones resolved)."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base if _is_package(importer) else base[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


@cache
def imports(name: str) -> tuple[tuple[str, str, int], ...]:
    """``(module imported, name imported or "", line)`` for every import statement of the
    module, at any depth (function-local imports included); an imported name that is a
    module of the package counts as that module."""
    tree = ast.parse(modules()[name].read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, "", node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(name, node)
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                out.append((sub, "", node.lineno) if sub in modules()
                           else (source, alias.name, node.lineno))
    return tuple(out)


def internal_edges() -> dict[str, set[str]]:
    return {name: {m for m, _, _ in imports(name) if m in modules() and m != name}
            for name in modules()}


def layer(name: str) -> str | None:
    parts = name.split(".")
    if len(parts) == 1:
        return None  # alrao_tune/__init__.py: the lazy facade (names, no imports)
    return "cli" if parts[1] == "__main__" else parts[1]


def test_no_import_circles():
    edges = internal_edges()
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])


def test_each_layer_imports_only_the_layers_before_it():
    bad = []
    for name, targets in internal_edges().items():
        mine = layer(name)
        if mine is None:
            continue
        for target in targets:
            theirs = layer(target)
            if theirs is not None and LAYERS.index(theirs) > LAYERS.index(mine):
                bad.append(f"{name} imports {target} ({theirs} comes after {mine})")
    assert not bad, "\n".join(bad)


def _third_party(name: str) -> set[str]:
    tops = {m.split(".")[0] for m, _, _ in imports(name)}
    return {t for t in tops if t not in sys.stdlib_module_names
            and t not in ("__future__", "alrao_tune")}


def test_the_alrao_core_imports_torch_only():
    for name in modules():
        if layer(name) != "alrao":
            continue
        # no Ray, MLflow, Optuna, numpy, pandas ...: torch and the standard library only
        assert _third_party(name) <= {"torch"}, name
        internal = {m for m in internal_edges()[name]}
        assert all(layer(m) == "alrao" for m in internal), (name, internal)


@pytest.mark.parametrize("name", ["alrao_tune.schema", "alrao_tune.errors", "alrao_tune.logs"])
def test_shared_names_import_nothing_heavy(name):
    # the standard library only, and nothing of the package
    assert _third_party(name) == set() and internal_edges()[name] == set()


@pytest.mark.parametrize("name,absent", [
    ("alrao_tune.schema", ("torch", "ray", "mlflow", "pandas", "numpy", "pydantic")),
    ("alrao_tune.space", ("torch", "ray", "mlflow", "pandas")),
    ("alrao_tune.tracking", ("torch", "ray", "mlflow", "pandas")),
    ("alrao_tune.report.store", ("torch", "ray")),  # what the dashboard reads with
    ("alrao_tune.cli", ("torch", "ray", "mlflow", "pandas")),  # `--help` stays fast
])
def test_light_modules_stay_light_when_imported(name, absent):
    code = (f"import json, sys; import {name}; "
            f"print(json.dumps([m for m in {list(absent)!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=PACKAGE.parent)
    assert json.loads(out.stdout) == []


def _uses_ray(name: str) -> bool:
    return any(m == "ray" or m.startswith("ray.") for m, _, _ in imports(name))


def test_ray_private_api_only_in_ray_compat():
    bad = []
    for name, path in modules().items():
        if name == RAY_COMPAT or not _uses_ray(name):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and _private(node.attr) and not (
                    isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                bad.append(f"{name}:{node.lineno} .{node.attr}")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("getattr", "hasattr", "setattr")
                    and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)
                    and _private(str(node.args[1].value))):
                bad.append(f"{name}:{node.lineno} {node.func.id}(..., {node.args[1].value!r})")
    assert not bad, "\n".join(bad)


def _private(attr: str) -> bool:
    return attr.startswith("_") and not attr.startswith("__")


def test_no_private_imports_across_packages():
    bad = []
    for name in modules():
        package = name if _is_package(name) else name.rsplit(".", 1)[0]
        for source, imported, line in imports(name):
            if (source in modules() and _private(imported)
                    and not source.startswith(package + ".") and source != package):
                bad.append(f"{name}:{line} imports {source}.{imported}")
    assert not bad, "\n".join(bad)


def test_ray_version_check_names_the_supported_version():
    import ray

    from alrao_tune.errors import AlraoTuneError
    from alrao_tune.tune._ray_compat import SUPPORTED_RAY, RayVersionError, check_ray_version

    check_ray_version(ray.__version__)  # the installed one is the supported one
    with pytest.raises(RayVersionError, match=rf"needs Ray {SUPPORTED_RAY}\.x .* Ray 2\.99\.0"):
        check_ray_version("2.99.0")
    assert issubclass(RayVersionError, AlraoTuneError)  # the CLI: one line, exit 2

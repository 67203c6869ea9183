"""The engine package is layered by job and its imports only go down (read from the source with ast,
imports inside functions included): what a layer may import is listed below, and nothing imports
Slicer, Qt, VTK or CTK."""

import ast
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[1] / "SelfSupCTDenoise"
PACKAGE = "SelfSupCTDenoiseLib"

#: Layer -> the layers it may import. The root modules (`errors`, `__version__` in `__init__`) serve
#: every layer; `cli` and `__main__` sit on top.
ALLOWED = {
    "root": {"root"},
    "engine": {"root", "engine"},
    "files": {"root", "engine", "files"},
    "quality": {"root", "engine", "quality"},
    "data": {"root", "engine", "files", "quality", "data"},
    "bench": {"root", "engine", "files", "quality", "data", "bench"},
    "cohort": {"root", "engine", "files", "quality", "bench", "cohort"},
    "commands": {"root", "engine", "files", "quality", "data", "bench", "cohort", "commands"},
    "top": {"root", "commands", "top"},
}
TOP_MODULES = {"cli", "__main__"}
FORBIDDEN = ("slicer", "qt", "vtk", "ctk", "SelfSupCTDenoiseSlicer")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(MODULE_DIR).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    if parts[1] in ALLOWED:
        return parts[1]
    return "top" if parts[1] in TOP_MODULES else "root"


def imports(path: Path):
    """(line, absolute module) of every import in the file."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            yield node.lineno, target
            for alias in node.names:  # `from pkg import module`
                candidate = MODULE_DIR.joinpath(*target.split("."), alias.name)
                if candidate.with_suffix(".py").exists() or (candidate / "__init__.py").exists():
                    yield node.lineno, f"{target}.{alias.name}"


def engine_files():
    return sorted(p for p in (MODULE_DIR / PACKAGE).rglob("*.py") if "__pycache__" not in p.parts)


def edges(files):
    """(importing module, line, imported module, from layer, to layer) within the package."""
    for path in files:
        source = module_name(path)
        for line, target in imports(path):
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                yield source, line, target, layer_of(source), layer_of(target)


def test_every_module_sits_in_a_known_layer():
    for path in engine_files():
        parts = path.relative_to(MODULE_DIR / PACKAGE).parts
        assert len(parts) == 1 or parts[0] in ALLOWED, f"{path}: a folder the layering does not know"


def test_imports_only_go_down():
    wrong = [f"{s}:{line} ({a}) imports {t} ({b})" for s, line, t, a, b in edges(engine_files()) if b not in ALLOWED[a]]
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_no_cycles_between_layers():
    graph = {}
    for _, _, _, a, b in edges(engine_files()):
        if a != b:
            graph.setdefault(a, set()).add(b)

    def reaches(start, goal, seen):
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph.get(start, ()))

    cyclic = sorted(layer for layer in graph if reaches(layer, layer, {layer}))
    assert not cyclic, f"layers in an import cycle: {cyclic} ({graph})"


@pytest.mark.parametrize("package", [PACKAGE])
def test_the_engine_never_imports_slicer_qt_or_vtk(package):
    wrong = [f"{path.name}:{line} imports {target}" for path in engine_files() for line, target in imports(path)
             if target.split(".")[0] in FORBIDDEN]
    assert not wrong, wrong

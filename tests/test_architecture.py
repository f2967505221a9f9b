"""The package's architecture, checked: no module reaches into a shadow's private state from outside its package.

A shadow class (``AnnDataShadow`` and its ``raw``, ``MuDataShadow``, the collection shadow) keeps its state
private to the package that defines it; other packages go through :func:`shadows.core.state.state_of` and the
state's small API.  The check is static (the AST of every module): an attribute ``x._name`` where ``x`` is not
``self``/``cls`` and ``_name`` is a private attribute or method that a shadow class of another package defines.
The names anndata itself gives its subclasses (``_inplace_subset_obs``, ``_init_as_actual``, ...) are anndata's
protocol, called by scanpy and mudata alike, and are allowed.  The layers themselves are checked by
``lint-imports`` (``[tool.importlinter]`` in ``pyproject.toml``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import anndata

PKG = Path(__file__).resolve().parents[1] / "shadows"
# the classes whose state is private to their package: (package, module, class)
SHADOW_CLASSES = [
    ("core", "core/anndata.py", "AnnDataShadow"),
    ("core", "core/raw.py", "RawShadow"),
    ("core", "core/raw.py", "RawSnapshot"),
    ("mudata", "mudata/shadow.py", "MuDataShadow"),
    ("mudata", "mudata/parts.py", "GlobalShadow"),
    ("collection", "collection/shadow.py", "CollectionShadow"),
]
# anndata's own protocol for subclasses (what scanpy, mudata and anndata itself call on any AnnData)
ANNDATA_PROTOCOL = {n for n in dir(anndata.AnnData) if n.startswith("_") and not n.startswith("__")}


def private_names(module: Path, cls: str) -> set[str]:
    """The private attributes and methods a class defines (``self._x = ...`` and ``def _x``)."""
    tree = ast.parse(module.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for sub in ast.walk(node):
                if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef) and sub.name.startswith("_"):
                    names.add(sub.name)
                elif isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == "self":
                    if isinstance(sub.ctx, ast.Store) and sub.attr.startswith("_"):
                        names.add(sub.attr)
    return {n for n in names if not n.startswith("__")} - ANNDATA_PROTOCOL


def package_of(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else ""


def foreign_accesses() -> list[str]:
    """``module:line name`` for every access to another package's shadow privates."""
    owners: dict[str, set[str]] = {}
    for pkg, mod, cls in SHADOW_CLASSES:
        for n in private_names(PKG / mod, cls):
            owners.setdefault(n, set()).add(pkg)
    # a private attribute a package sets on a shadow (``shadow._detached = True`` in core.compat) is that package's
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and node.attr in owners:
                owners[node.attr].add(package_of(path))
    found = []
    for path in sorted(PKG.rglob("*.py")):
        rel, pkg = path.relative_to(PKG), package_of(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute) or node.attr not in owners:
                continue
            base = node.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                continue
            if isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "super":
                continue
            if pkg not in owners[node.attr]:
                found.append(f"{rel}:{node.lineno} {ast.unparse(node)}")
    return found


def test_no_private_state_of_a_shadow_is_touched_outside_its_package():
    found = foreign_accesses()
    assert not found, f"{len(found)} accesses to a shadow's private state from another package:\n" + "\n".join(found)


def undocumented() -> list[str]:
    """``module:line name`` of every public class, function, method and property without a docstring.

    Public: the name has no leading underscore, is not a dunder, and no enclosing class is private; functions nested
    in functions are not walked (they are not reachable).
    """
    missing = []

    def visit(node: ast.AST, prefix: str, in_private: bool, path: Path) -> None:
        for n in ast.iter_child_nodes(node):
            if not isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            dunder = n.name.startswith("__") and n.name.endswith("__")
            private = n.name.startswith("_") and not dunder
            if not (private or dunder or in_private) and not ast.get_docstring(n):
                missing.append(f"{path.relative_to(PKG.parent)}:{n.lineno} {prefix}{n.name}")
            if isinstance(n, ast.ClassDef):
                visit(n, f"{prefix}{n.name}.", in_private or private, path)

    for path in sorted(PKG.rglob("*.py")):
        visit(ast.parse(path.read_text()), "", False, path)
    return missing


def test_every_public_definition_has_a_docstring():
    missing = undocumented()
    assert not missing, f"{len(missing)} public definitions have no docstring:\n" + "\n".join(missing)


def test_no_import_cycles_but_the_facade_delegation():
    """No group of modules imports each other (imports inside functions count), except through the façade's
    delegation that ``pyproject.toml`` declares (``ignore_imports`` of the layers contract)."""
    import tomllib

    import grimp
    import networkx as nx

    config = tomllib.loads((PKG.parent / "pyproject.toml").read_text())["tool"]["importlinter"]
    declared = {
        tuple(part.strip() for part in entry.split("->"))
        for contract in config["contracts"]
        for entry in contract.get("ignore_imports", [])
    }
    graph = grimp.build_graph("shadows", exclude_type_checking_imports=True)
    edges = nx.DiGraph()
    for importer in graph.modules:
        for imported in graph.find_modules_directly_imported_by(importer):
            if (importer, imported) not in declared:
                edges.add_edge(importer, imported)
    cycles = [sorted(c) for c in nx.strongly_connected_components(edges) if len(c) > 1]
    assert not cycles, f"modules that import each other: {cycles}"

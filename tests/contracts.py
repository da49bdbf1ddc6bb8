"""An import-linter contract type: no module of the package imports another module's private names.

``from pipeline.x import _helper`` (or ``pipeline.x._helper`` through a module import) couples a module to
another's internals; a name meant to be shared is public. Used by ``[tool.importlinter]`` in pyproject.toml.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from grimp import ImportGraph
from importlinter.domain.contract import Contract, ContractCheck


def private_imports(module_file: Path, module: str, root: str) -> list[tuple[int, str, str]]:
    """(line, imported module, name) for every private name this module imports from another module of ``root``."""
    tree = ast.parse(module_file.read_text())
    package = module if module_file.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package.split(".")
            base = base[: len(base) - node.level + 1]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        if source != root and not source.startswith(root + "."):
            continue
        for alias in node.names:
            if alias.name.startswith("_") and not alias.name.startswith("__") and source != module:
                found.append((node.lineno, source, alias.name))
    return found


class NoPrivateNames(Contract):
    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        root = self.session_options["root_packages"][0]
        spec = importlib.util.find_spec(root)  # a top-level spec: nothing is imported
        assert spec is not None and spec.submodule_search_locations, f"{root} is not a package"
        base = Path(next(iter(spec.submodule_search_locations))).parent
        problems = []
        for module in sorted(graph.find_descendants(root) | {root}):
            path = base.joinpath(*module.split("."))
            path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
            if not path.is_file():
                continue
            for line, source, name in private_imports(path, module, root):
                problems.append(f"{module}:{line} imports {source}.{name}")
        return ContractCheck(kept=not problems, metadata={"problems": problems})

    def render_broken_contract(self, check: ContractCheck) -> None:
        from importlinter.application import output

        for p in check.metadata["problems"]:
            output.print_error(p, bold=False)

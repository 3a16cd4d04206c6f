"""The code's shape, checked: the layers import only what their rule allows, ``gpt2/`` has no import
cycle (imports inside functions count), and every file and function reads in one sitting."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gpt2", "training", "ui")
FINE_TUNING = ("ui.logic.finetune", "ui.layout.finetune")  # the fine-tune tab's modules may use training/
REGISTRY = {"app", "ui.layout.page"}  # import every tab, the fine-tune tab too
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 60


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, Path]:
    files = [ROOT / "app.py", *(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))]
    return {module_name(p): p for p in files}


def imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports, at the top or inside functions, as absolute names."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # ``from . import attention``
    return found


def graph() -> dict[str, set[str]]:
    """Imports between this project's modules (third-party ones left out)."""
    mods = sources()
    return {name: {m for m in imports(name, path) if m in mods} for name, path in mods.items()}


def reachable(g: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in g[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_gpt2_has_no_import_cycle():
    g = {m: {d for d in deps if d.startswith("gpt2")} for m, deps in graph().items() if m.startswith("gpt2")}
    cycles = sorted(m for m in g if m in reachable(g, m) and m != "gpt2")
    assert not cycles, f"modules of gpt2/ that import themselves through others: {cycles}"


def test_the_core_never_imports_the_app_or_training():
    for name, path in sources().items():
        if name.startswith("gpt2"):
            bad = {m for m in imports(name, path) if m.split(".")[0] in ("gradio", "plotly", "training", "ui")}
            assert not bad, f"{name} imports {bad}"


def test_serving_never_imports_training():
    """Only the fine-tune tab (and the registry that lists it) reaches training/, even indirectly."""
    g = graph()
    for name in g:
        if name.startswith(("ui", "app")) and not name.startswith(FINE_TUNING) and name not in REGISTRY:
            reached = {m for m in reachable(g, name) if m.startswith("training")}
            assert not reached, f"{name} reaches {sorted(reached)}"


def test_only_layout_imports_gradio():
    """Tab logic, the session, the store and the inputs are plain Python, testable without Gradio."""
    for name, path in sources().items():
        if name.startswith("ui") and not name.startswith("ui.layout"):
            bad = {m for m in imports(name, path) if m.split(".")[0] == "gradio"}
            assert not bad, f"{name} imports gradio: only ui.layout may"


@pytest.mark.parametrize("name", sorted(sources()))
def test_files_and_functions_read_in_one_sitting(name):
    path = sources()[name]
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") + 1 <= MAX_FILE_LINES, f"{path.name} has over {MAX_FILE_LINES} lines"
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(ast.parse(text))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno >= MAX_FUNCTION_LINES]
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_every_tab_is_a_logic_module_and_a_layout_builder():
    """One pattern: tab NAME is ``ui/logic/NAME.py`` (no Gradio, checked above) plus ``ui/layout/NAME.py``'s
    ``build``, registered by one line in ``TABS``."""
    import importlib

    from ui.layout.page import TABS

    assert [tab.id for tab in TABS] == ["generate", "attention", "probabilities", "finetune", "chat", "beam",
                                          "diversity", "lab"]
    for tab in TABS:
        assert tab.build is importlib.import_module(f"ui.layout.{tab.id}").build
        assert (ROOT / "ui" / "logic" / f"{tab.id}.py").is_file()

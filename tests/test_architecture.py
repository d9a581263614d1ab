"""The house's shape: layers look only down, and nothing imports in a circle.

``wire`` (what clients and the relay say) imports nothing else of giftrelay;
``money`` (the scripts and their API) only ``wire``; ``ledger`` only ``wire``,
``money`` and the metrics; ``relay`` anything below the command line; ``webhooks``
and ``api`` (the HTTP API for the platform's backend), beside the relay: ``webhooks``
only ``wire``, ``money``, ``ledger``, the config and the metrics; ``api`` those and
``auth``, and nothing but the command line imports it. Every import counts,
including those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "giftrelay"

ALLOWED = {
    "giftrelay.wire": {"giftrelay.wire"},
    "giftrelay.money": {"giftrelay.wire", "giftrelay.money"},
    "giftrelay.ledger": {
        "giftrelay.wire",
        "giftrelay.money",
        "giftrelay.ledger",
        "giftrelay.metrics",
    },
    "giftrelay.webhooks": {
        "giftrelay.wire",
        "giftrelay.money",
        "giftrelay.ledger",
        "giftrelay.config",
        "giftrelay.metrics",
        "giftrelay.webhooks",
    },
    "giftrelay.api": {
        "giftrelay.wire",
        "giftrelay.money",
        "giftrelay.ledger",
        "giftrelay.auth",
        "giftrelay.config",
        "giftrelay.metrics",
        "giftrelay.api",
    },
}
"""Per layer, the only parts of giftrelay its modules may import."""
ABOVE_THE_RELAY = {"giftrelay.cli", "giftrelay.runtime", "giftrelay.__main__"}
"""Modules, or packages with every module in them, that the relay must not import."""


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The giftrelay modules ``path`` imports, as full module names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("giftrelay"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = (SRC / candidate.replace(".", "/")).with_suffix(".py").exists() or (
                    SRC / candidate.replace(".", "/") / "__init__.py"
                ).exists()
                found.add(candidate if is_module else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("giftrelay")}
    return found


MODULES = {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_the_layers_below_it(layer: str) -> None:
    wrong = {
        (module, target)
        for module, targets in MODULES.items()
        if within(module, layer)
        for target in targets
        if target != "giftrelay" and not any(within(target, ok) for ok in ALLOWED[layer])
    }
    assert not wrong, f"{layer} imports outside its layer: {sorted(wrong)}"


def test_the_relay_does_not_import_the_command_line() -> None:
    wrong = {
        (module, target)
        for module, targets in MODULES.items()
        if within(module, "giftrelay.relay")
        for target in targets
        if any(within(target, top) for top in ABOVE_THE_RELAY)
    }
    assert not wrong


def test_only_the_command_line_imports_the_api() -> None:
    wrong = {
        (module, target)
        for module, targets in MODULES.items()
        if not within(module, "giftrelay.api")
        and not any(within(module, top) for top in ABOVE_THE_RELAY)
        for target in targets
        if within(target, "giftrelay.api")
    }
    assert not wrong


def test_nothing_imports_in_a_circle() -> None:
    graph = {m: {t for t in targets if t in MODULES and t != m} for m, targets in MODULES.items()}
    # A package's __init__ may import its own modules (that is not a cycle through it).
    for module in graph:
        graph[module] = {t for t in graph[module] if not module.startswith(t + ".")}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = [*path[path.index(module) :], module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_the_checks_see_a_cycle_and_a_layer_break() -> None:
    """The checks above can fail: fed a made-up house, they do."""
    assert "giftrelay.wire.protocol" in MODULES
    assert "giftrelay.wire.errors" in MODULES["giftrelay.wire.protocol"]
    assert not any(within(t, "giftrelay.relay") for t in MODULES["giftrelay.money.api"])

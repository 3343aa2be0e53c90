"""The import layers hold: no cycles between modules or between packages, and the
import-linter contract in pyproject.toml (no exemptions) passes; each check is shown to fail on
an import that breaks it."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def _graph() -> grimp.ImportGraph:
    return grimp.build_graph("clawpen", cache_dir=None)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(edges.get(nxt, ())))))
                elif nxt in on:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def _module_edges(graph: grimp.ImportGraph) -> dict[str, set[str]]:
    return {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}


def _package_edges(graph: grimp.ImportGraph) -> dict[str, set[str]]:
    """Imports between the top-level parts of clawpen (``clawpen.daemon``, ``clawpen.cli``...)."""

    def part(module: str) -> str:
        return ".".join(module.split(".")[:2])

    edges: dict[str, set[str]] = {part(m): set() for m in graph.modules}
    for module, imported in _module_edges(graph).items():
        edges[part(module)] |= {part(i) for i in imported if part(i) != part(module)}
    return edges


def test_no_import_cycles_between_modules_or_packages() -> None:
    graph = _graph()
    assert "clawpen.daemon.server" in graph.modules  # the graph is the real one
    assert _cycles(_module_edges(graph)) == []
    assert _cycles(_package_edges(graph)) == []


def test_a_cycle_is_found_when_one_is_added() -> None:
    graph = _graph()  # control: one import back from the leaf to the daemon makes circles
    graph.add_import(importer="clawpen.errors", imported="clawpen.daemon.server")
    assert any("clawpen.errors" in c and "clawpen.daemon.server" in c for c in _cycles(_module_edges(graph)))
    assert any({"clawpen.errors", "clawpen.daemon"} <= set(c) for c in _cycles(_package_edges(graph)))


def _lint(config: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = [str(LINT), "--no-cache"] + (["--config", str(config)] if config else [])
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def test_layer_contract_has_no_exemptions_and_passes() -> None:
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = tool["contracts"]
    assert contract["type"] == "layers" and contract.get("exhaustive") is True
    assert "ignore_imports" not in contract and "unmatched_ignore_imports_alerting" not in contract
    done = _lint()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout


def test_layer_contract_fails_on_an_upward_import(tmp_path: Path) -> None:
    """Control: with spec above the daemon, the daemon's imports of spec are upward and fail."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = list(tool["contracts"][0]["layers"])
    daemon, spec = layers.index("daemon"), layers.index("spec")
    layers[daemon], layers[spec] = layers[spec], layers[daemon]
    quoted = ", ".join(f'"{layer}"' for layer in layers)
    config = tmp_path / "layers.toml"
    config.write_text(
        '[tool.importlinter]\nroot_package = "clawpen"\n\n[[tool.importlinter.contracts]]\n'
        'name = "swapped"\ntype = "layers"\ncontainers = ["clawpen"]\nexhaustive = true\n'
        f"layers = [{quoted}]\n"
    )
    done = _lint(config)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "BROKEN" in done.stdout and "clawpen.daemon" in done.stdout


@pytest.mark.parametrize("name", ["clawpen.host", "clawpen.netns", "clawpen.procfs"])
def test_low_modules_import_nothing_above_spec(name: str) -> None:
    graph = _graph()
    above = ("clawpen.daemon", "clawpen.net.", "clawpen.sandbox", "clawpen.metrics", "clawpen.logs")
    reached = graph.find_upstream_modules(name)
    assert not [m for m in reached if m.startswith(above)]

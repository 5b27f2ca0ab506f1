"""Module boundaries of rasd_hub (timm's layout): no import circles, no private names imported
across modules, one weights-source resolver. Static checks on the source (the AST), so an import
inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules(package: str) -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) for every import statement in the module."""
    is_pkg = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
            found.append((target, [n for n in names if f"{target}.{n}" not in known], node.lineno))
            found += [(m, [], node.lineno) for m in submodules]
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
    return found


def _graph(package: str) -> dict[str, set[str]]:
    mods = _modules(package)
    known = set(mods)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for target, _, _ in _imports(m, p, known):
            # `import pkg.sub` runs pkg/__init__ too, but a package's __init__ importing its own
            # submodules (re-exports) is the layout, not a circle
            if target in known and target != m and not (m.startswith(target + ".") and target == package):
                edges[m].add(target)
    return edges


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary circle, each once (starting at its smallest module)."""
    cycles: set[tuple[str, ...]] = set()

    def visit(node: str, path: list[str], on_path: set[str]):
        for nxt in edges.get(node, ()):
            if nxt == path[0]:
                cycles.add(tuple(path))
            elif nxt not in on_path and nxt > path[0]:
                visit(nxt, path + [nxt], on_path | {nxt})

    for start in sorted(edges):
        visit(start, [start], {start})
    return [list(c) for c in sorted(cycles)]


def test_the_cycle_finder_finds_circles():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    assert find_cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b"]]


def test_no_module_of_rasd_hub_imports_one_that_imports_it_back():
    cycles = find_cycles(_graph("rasd_hub"))
    assert cycles == [], "import circles in rasd_hub:\n" + "\n".join(
        " -> ".join(c + [c[0]]) for c in cycles)


@pytest.mark.parametrize("package", ["rasd_hub", "pretraining", "nnunet_plugin"])
def test_no_private_names_are_imported_across_modules(package):
    mods = _modules(package)
    known = set(_modules("rasd_hub")) | set(_modules("pretraining")) | set(_modules("nnunet_plugin"))
    bad = []
    for m, p in mods.items():
        for target, names, line in _imports(m, p, known):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and target in known and target != m:
                bad.append(f"{p.relative_to(ROOT)}:{line}: from {target} import {', '.join(private)}")
    assert bad == [], "private names imported across modules:\n" + "\n".join(bad)


def test_rasd_hub_imports_neither_pretraining_nor_nnunet_plugin():
    mods = _modules("rasd_hub")
    for m, p in mods.items():
        for target, _, line in _imports(m, p, set(mods)):
            assert not target.startswith(("pretraining", "nnunet_plugin")), f"{m}:{line} imports {target}"


def _lines_matching(pattern: re.Pattern, allowed_module: str) -> list[str]:
    """``file:line: text`` of every line of the three packages matching ``pattern``, outside
    ``allowed_module``."""
    found = []
    for package in ("rasd_hub", "pretraining", "nnunet_plugin"):
        for m, p in _modules(package).items():
            if m != allowed_module:
                found += [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
                          for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    return found


def test_one_weights_source_resolver():
    """'is this an hf-hub repo, a folder or a registry name' is decided in rasd_hub._sources
    only: no other module tests a name for the hf-hub prefix or a path shape."""
    offenders = _lines_matching(re.compile(r"""startswith\(\s*["']hf-hub:|_looks_like_path"""),
                                "rasd_hub._sources")
    assert offenders == [], "weights names parsed outside rasd_hub._sources:\n" + "\n".join(offenders)


def test_the_resolver_types_each_kind_of_name(tmp_path, monkeypatch):
    import rasd_hub
    from rasd_hub import HubRef, LocalRef, RegistryRef, parse_weights_ref
    from rasd_hub.errors import RasdValueError, UnknownModelError

    assert parse_weights_ref("hf-hub:org/repo@abc") == HubRef("org/repo", "abc")
    assert parse_weights_ref("hf-hub:org/repo") == HubRef("org/repo", None)
    assert parse_weights_ref("rasd2d_small") == RegistryRef("rasd2d_small")
    assert parse_weights_ref("rasd2d_small.synth10k_cpu") == RegistryRef("rasd2d_small", "synth10k_cpu")
    assert parse_weights_ref("synth10k_cpu", architecture="rasd2d_small") == \
        RegistryRef("rasd2d_small", "synth10k_cpu")
    assert isinstance(parse_weights_ref("./w"), LocalRef)
    assert isinstance(parse_weights_ref(tmp_path), LocalRef)
    assert isinstance(parse_weights_ref("w.safetensors"), LocalRef)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "myweights").mkdir()
    assert parse_weights_ref("myweights") == LocalRef(Path("myweights"))
    (tmp_path / "rasd2d_small").mkdir()  # an architecture name wins over a folder of that name
    assert parse_weights_ref("rasd2d_small") == RegistryRef("rasd2d_small")
    with pytest.raises(RasdValueError, match="hf-hub:ORG/REPO"):
        parse_weights_ref("hf-hub:just-a-name")
    with pytest.raises(UnknownModelError, match="rasd2d_small"):
        parse_weights_ref("rasd2d_smal")
    assert rasd_hub.parse_weights_ref is parse_weights_ref


DEVICE_CHOICE = re.compile(r"""["']cuda["'] if torch\.cuda\.is_available\(\)""")


def test_one_device_resolver():
    """Turning 'auto' / 'cuda' into a device happens in rasd_hub._device only."""
    offenders = _lines_matching(DEVICE_CHOICE, "rasd_hub._device")
    assert offenders == [], "devices resolved outside rasd_hub._device:\n" + "\n".join(offenders)


def test_the_device_pattern_matches_what_it_looks_for():
    assert DEVICE_CHOICE.search('requested = "cuda" if torch.cuda.is_available() else "cpu"')


def test_the_device_resolver():
    import torch

    from rasd_hub import resolve_device
    from rasd_hub.errors import RasdValueError

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(RasdValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    with pytest.raises(RasdValueError, match="unsupported device 'meta'"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(RasdValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_the_registry_says_when_the_zoo_was_not_imported():
    """rasd_hub._registry imports no model (no circle); looking a name up before rasd_hub.models
    is imported says so instead of calling a real architecture unknown."""
    import subprocess
    import sys

    code = ("import rasd_hub._registry as r\n"
            "try:\n    r.get_arch('rasd2d_small')\nexcept RuntimeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "import rasd_hub.models" in out.stdout, out.stderr

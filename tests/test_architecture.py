"""The import graph of both distributions against docs/ARCHITECTURE.md (Layers): no import cycle, the plugin
never imports the pipeline, no module imports from a layer above its own, and simulator names are compared
only inside their own packages. Every import counts, also those inside functions (read with `ast`)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PIPELINE, PLUGIN = "world_modality", "lerobot_policy_world_modality"
ROOTS = {
    PIPELINE: REPO / "src" / PIPELINE,
    PLUGIN: REPO / "packages" / PLUGIN / "src" / PLUGIN,
}
# docs/ARCHITECTURE.md's Layers table, bottom to top. A module is in the layer of the entry naming it or a
# package above it ("" is the distribution's own __init__); a module may import its own layer and those below.
LAYERS: dict[str, list[tuple[str, ...]]] = {
    PLUGIN: [
        ("errors", "memory_modes", "file_digests", "rendering", "video_decoding", "families"),
        ("encoders",),
        ("world", "dataset_files"),
        ("latent_cache", "world_tokens"),
        ("common",),
        ("world_transformer", "smolvla_world", "qwen_vla_world"),
        ("",),
    ],
    PIPELINE: [
        ("", "atomic_io", "locks", "devices", "choices", "interrupts", "workers"),
        ("data", "stats", "model_folders"),
        ("latents", "tokens", "sim"),
        ("training", "coc", "shards"),
        ("rollout",),
        ("report", "matrix", "schedule"),
        ("commands", "cli"),
    ],
}


def _modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of both distributions."""
    modules = {}
    for package, root in ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            parts = [package, *path.relative_to(root).with_suffix("").parts]
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = _modules()


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _known(name: str) -> str | None:
    """The module ``name`` loads from our distributions: itself, or the closest package above it that exists."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> Iterator[tuple[str, int]]:
    """(imported module of our distributions, line) for every import statement of ``module``, wherever it stands."""
    path = MODULES[module]
    package = module if _is_package(module) else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from package import name` loads the submodule ``name`` when there is one.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            found = _known(target)
            if found is not None and found != module:
                yield found, node.lineno


GRAPH = {module: sorted(set(_imports(module))) for module in MODULES}


def _layer(module: str) -> int:
    distribution, _, rest = module.partition(".")
    for index, entries in enumerate(LAYERS[distribution]):
        if any(rest == entry or (entry and rest.startswith(entry + ".")) for entry in entries):
            return index
    raise AssertionError(
        f"{module} is in no layer of docs/ARCHITECTURE.md's table (and of LAYERS in this test): add it"
    )


def _cycles() -> list[list[str]]:
    """The import cycles: strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target, _ in GRAPH[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for module in MODULES:
        if module not in index:
            visit(module)
    return components


def _where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(REPO)}:{line}"


def test_the_graph_sees_module_and_function_level_imports():
    """The walk is what the checks rely on: known edges of both kinds must be in it."""
    assert "world_modality.sim" in {t for t, _ in GRAPH["world_modality.rollout.envs"]}  # module level
    assert "world_modality.sim.metaworld.generate" in {
        t for t, _ in GRAPH["world_modality.sim.metaworld.episodes"]
    }  # in a function
    assert "world_modality.sim.base" in {t for t, _ in GRAPH["world_modality.sim.libero.simulator"]}  # from a package
    assert len(MODULES) > 100 and all(_layer(module) >= 0 for module in MODULES)


def test_no_import_cycle():
    cycles = _cycles()
    details = [
        " <-> ".join(c)
        + ": "
        + "; ".join(f"{_where(m, line)} imports {t}" for m in c for t, line in GRAPH[m] if t in c)
        for c in cycles
    ]
    assert not cycles, "import cycles:\n" + "\n".join(details)


def test_the_plugin_never_imports_the_pipeline():
    found = []
    for module, path in MODULES.items():
        if module.startswith(PLUGIN):
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else ([node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                )
                found += [f"{_where(module, node.lineno)} imports {n}" for n in names if n.split(".")[0] == PIPELINE]
    assert not found, "the plugin imports the pipeline:\n" + "\n".join(found)


def test_no_upward_import():
    upward = [
        f"{_where(module, line)}: {module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in GRAPH.items()
        for target, line in targets
        if target.split(".")[0] == module.split(".")[0] and _layer(target) > _layer(module)
    ]
    assert not upward, "imports from a higher layer (docs/ARCHITECTURE.md, Layers):\n" + "\n".join(upward)


def _comparisons_with(words: set[str], modules: Iterator[str]) -> list[str]:
    """Where one of ``modules`` compares a value with one of ``words`` (``==``, ``in (...)``, ...)."""
    found = []
    for module in modules:
        for node in ast.walk(ast.parse(MODULES[module].read_text())):
            if isinstance(node, ast.Compare):
                values = [node.left, *node.comparators]
                values += [e for v in values if isinstance(v, (ast.Tuple, ast.List, ast.Set)) for e in v.elts]
                hits = [v.value for v in values if isinstance(v, ast.Constant) and v.value in words]
                found += [f"{_where(module, node.lineno)} compares with {h!r}" for h in hits]
    return found


@pytest.mark.parametrize("name", ["metaworld", "libero"])
def test_simulator_names_are_compared_only_inside_their_package(name):
    """``if env == "libero"``-style branches belong in the simulator's package (docs/ARCHITECTURE.md, How to add
    a simulator): outside it, code asks the registry."""
    from world_modality.sim import get_simulator

    words = {name, *get_simulator(name).suites}
    found = _comparisons_with(
        words,
        (
            module
            for module in MODULES
            if module.startswith(PIPELINE)
            and module != f"{PIPELINE}.sim.{name}"
            and not module.startswith(f"{PIPELINE}.sim.{name}.")
        ),
    )
    assert not found, f"{name} is branched on outside world_modality.sim.{name}:\n" + "\n".join(found)


def test_encoder_names_are_compared_only_inside_the_encoders_package():
    """``if spec.name == "state"``-style branches: outside `lerobot_policy_world_modality.encoders`, code asks the
    encoder what it reads (`EncoderSpec.reads_states`, `encoder_kind`; docs/ARCHITECTURE.md, How to add an encoder)."""
    from lerobot_policy_world_modality.encoders.spec import ENCODER_NAMES

    found = _comparisons_with(
        set(ENCODER_NAMES), (module for module in MODULES if not module.startswith(f"{PLUGIN}.encoders"))
    )
    assert not found, "encoder names are branched on outside the encoders package:\n" + "\n".join(found)


def test_the_comparison_scan_sees_a_comparison_with_a_name_in_a_tuple(tmp_path, monkeypatch):
    source = tmp_path / "m.py"
    source.write_text("def f(spec):\n    return spec.name in ('dinov2', 'x') or spec.name != 'state'\n")
    monkeypatch.setitem(MODULES, "m", source)
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    assert len(_comparisons_with({"state", "dinov2"}, iter(["m"]))) == 2

"""The pack's layout rules, read from the source with ``ast`` (nothing is imported or run):

* no import cycle among ``samkit/`` modules, counting imports inside functions too (a lazy
  import that closes a cycle is still two modules each needing the other); imports under
  ``if TYPE_CHECKING:`` are left out (annotations only, nothing runs them);
* no ``samkit/`` file over 400 lines unless its module docstring says why (the words
  "400 lines" with the reason), so every file stays a room one can read whole;
* ``samkit/`` imports no ComfyUI module anywhere, not even lazily (``test_pack_loading``
  checks what importing the library loads; this also sees imports inside functions);
* ``nodes/`` stay thin: only the bridge (``comfy_bridge``, ``comfy_memory``) touches ComfyUI, no
  node module imports an array, tensor, image or model library (that work belongs in
  ``samkit/``), and none is longer than 200 lines (the bridge: 400);
* imports inside the pack are relative (ComfyUI loads the pack under a path-derived name);
* dependencies point one way: the pack imports no development code, tools/ and bench/ import the
  pack (bench/ also tools/), and nothing outside tests/ imports the test tree or puts it on sys.path.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400
MAX_NODE_LINES = 200
#: the bridge to ComfyUI: the only node-side modules that import ComfyUI (and torch, for its patcher)
BRIDGE_MODULES = {"nodes.comfy_bridge", "nodes.comfy_memory", "nodes.comfy_preview"}
#: top-level names of ComfyUI's own modules (ComfyUI 0.3.x puts its root on sys.path)
COMFYUI_MODULES = {"comfy", "comfy_api", "comfy_execution", "comfy_extras", "comfy_config", "folder_paths", "server",
                   "nodes", "execution", "latent_preview", "node_helpers"}
#: libraries whose use means a node is doing the library's work itself
HEAVY_MODULES = {"torch", "torchvision", "numpy", "PIL", "cv2", "ultralytics", "segment_anything", "scipy"}


def _modules(package: str) -> dict[str, Path]:
    """Dotted module name (``samkit.fal.client``) → file, for every ``.py`` under ``package``."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def _imports(name: str, path: Path) -> list[tuple[int, str, int]]:
    """Every import in the file, anywhere in it: ``(level, absolute or relative target, line)``.

    Relative targets are resolved to dotted names inside the pack; ``from . import x`` yields
    ``pkg.x`` (a module or a name in ``pkg``, resolved by the caller)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(0, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                found.append((0, node.module or "", node.lineno))
                continue
            base = package.split(".")
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            found.append((node.level, target, node.lineno))
            found += [(node.level, f"{target}.{alias.name}", node.lineno) for alias in node.names]
    return found


def _samkit_graph() -> dict[str, set[str]]:
    modules = _modules("samkit")
    graph = {}
    for name, path in modules.items():
        edges = set()
        for level, target, _line in _imports(name, path):
            if level == 0:
                continue
            # ``from .x import y``: y may be a submodule (an edge to x.y) or a name in x (an edge to x)
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as ``[a, b, ..., a]``, or ``[]``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return []

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return []


def test_cycle_finder_finds_a_cycle():
    # the checker itself: a known cycle is reported, an acyclic graph is not
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_samkit_has_no_import_cycle():
    graph = _samkit_graph()
    assert "samkit.fal.client" in graph and "samkit.fal.errors" in graph["samkit.fal.client"]  # the graph is real
    cycle = _cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_samkit_files_are_short_or_say_why():
    too_long = []
    for name, path in _modules("samkit").items():
        lines = path.read_text(encoding="utf-8").count("\n")
        if lines > MAX_LINES:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
            if "400 lines" not in doc:
                too_long.append(f"{path.relative_to(ROOT)} ({lines} lines)")
    assert not too_long, ("over 400 lines without a reason in the module docstring: " + ", ".join(too_long)
                          + ". Split it along its concerns, or say at its top why it is one room.")


def test_samkit_never_imports_comfyui():
    found = []
    for name, path in _modules("samkit").items():
        for level, target, line in _imports(name, path):
            if level == 0 and target.split(".")[0] in COMFYUI_MODULES:
                found.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not found, found


def test_nodes_stay_thin():
    problems = []
    node_modules = _modules("nodes")
    assert "nodes.comfy_bridge" in node_modules and "nodes.seg_map" in node_modules
    for name, path in node_modules.items():
        lines = path.read_text(encoding="utf-8").count("\n")
        if name in BRIDGE_MODULES:  # the bridge is no node class: it is held to samkit's room size
            if lines > MAX_LINES:
                problems.append(f"{path.relative_to(ROOT)} has {lines} lines")
        elif lines > MAX_NODE_LINES:
            problems.append(f"{path.relative_to(ROOT)} has {lines} lines (node classes stay thin over samkit/)")
        for level, target, line in _imports(name, path):
            if level:
                continue
            top = target.split(".")[0]
            if top in COMFYUI_MODULES and name not in BRIDGE_MODULES:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports ComfyUI's {target}; only comfy_bridge may")
            if top in HEAVY_MODULES and name not in BRIDGE_MODULES:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {target}; that work belongs in samkit/")
    assert not problems, problems


def test_imports_inside_the_pack_are_relative():
    found = []
    for package in ("samkit", "nodes"):
        for name, path in _modules(package).items():
            for level, target, line in _imports(name, path):
                if level == 0 and target.split(".")[0] in ("samkit", "comfyui_sam_kit"):
                    found.append(f"{path.relative_to(ROOT)}:{line} imports {target}; use a relative import")
    assert not found, found


#: what lives only in tests/: its packages and the folder itself (as a sys.path entry)
TEST_TREE = {"tests", "testsupport", "testmodels", "conftest"}


#: development code outside tests/ that may use the test tree, and why
TEST_TREE_USERS = {
    # the GPU check runs the very cells of the CI device x precision matrix (and the trained
    # fixtures) on CUDA; a copy of them in bench/ could drift from what CI checks
    "bench/gpu_check.py": "runs tests/testsupport/precision_matrix.py's cells on a GPU",
    # ground-truth quality is measured on the trained fixtures' held-out scenes, whose exact masks
    # (testsupport/ground_truth.py) are what tests/test_everything_quality.py holds each mode to
    "bench/quality.py": "measures the trained SAM fixture on testsupport/ground_truth.py's scenes",
}


def _folder_modules(folder: str) -> dict[str, Path]:
    """``_modules`` of a package; for tools/ (scripts and plain modules on sys.path) file stem -> file."""
    if folder == "tools":
        return {path.stem: path for path in sorted((ROOT / folder).glob("*.py"))}
    return _modules(folder)


def _reaches_into(name: str, path: Path, forbidden: set[str]) -> list[str]:
    """Imports of ``forbidden`` top-level names, and string constants naming a test folder (a
    ``sys.path`` entry such as ``ROOT / "tests"`` is an import of the test tree in disguise)."""
    source = path.read_text(encoding="utf-8")
    found = [f"{path.name}:{line} imports {target}" for level, target, line in _imports(name, path)
             if level == 0 and target.split(".")[0] in forbidden]
    found += [f"{path.name}:{node.lineno} names the folder {node.value!r}" for node in ast.walk(ast.parse(source))
              if isinstance(node, ast.Constant) and node.value in TEST_TREE & forbidden]
    return found


def test_dependencies_point_one_way():
    # The pack (samkit/, nodes/, the root __init__) needs nothing of the development code; tools/
    # (the workflow converter, the synthetic checkpoint builders, the scripts) needs the pack at
    # most; bench/ the pack and tools/. Only tests/ imports the test tree.
    tools = set(_folder_modules("tools"))
    assert {"workflow_convert", "synthetic_checkpoints", "make_workflows"} <= tools  # the scan is real
    pack_rule = TEST_TREE | tools | {"bench", "tools"}
    rules = {"samkit": pack_rule, "nodes": pack_rule, "tools": TEST_TREE | {"bench"}, "bench": TEST_TREE}
    found = []
    for folder, forbidden in rules.items():
        for name, path in _folder_modules(folder).items():
            if f"{folder}/{path.name}" in TEST_TREE_USERS:
                continue
            found += [f"{folder}/{f}" for f in _reaches_into(name, path, forbidden)]
    found += _reaches_into("comfyui_sam_kit", ROOT / "__init__.py", pack_rule)
    assert not found, found


def test_dependency_check_sees_both_ways_into_the_tests(tmp_path):
    # the checker itself: an import of a test package and a sys.path entry into tests/ are reported
    probe = tmp_path / "probe.py"
    probe.write_text('import sys\nsys.path.insert(0, str(ROOT / "tests"))\nfrom testsupport import trained\n')
    found = _reaches_into("probe", probe, TEST_TREE)
    assert any("imports testsupport" in f for f in found) and any("'tests'" in f for f in found), found

"""The package's shape, checked from its source: layers that only import downwards, no import
cycles (function-level imports included: a cycle hidden in a function body is still a cycle),
and the torch-free modules free of torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("codec", "pipeline", "jobs")
# A package may import those after it, never those before it (bench -> jobs -> pipeline -> codec).
LAYERS = ("jobs", "pipeline", "codec")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.Module) -> list[str]:
    """Every module imported anywhere in the file, except under ``if TYPE_CHECKING:``."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append(node.module)
            found.extend(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets = set()
        for imported in _runtime_imports(ast.parse(path.read_text(), str(path))):
            while imported and imported not in files:  # ``from codec import api`` -> codec.api, else codec
                imported = imported.rpartition(".")[0]
            if imported and imported != name and not name.startswith(imported + "."):
                targets.add(imported)  # a package's own __init__ is not an edge back
        graph[name] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return out


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_layers_import_only_downwards():
    wrong = []
    for name, targets in _graph().items():
        below = LAYERS[LAYERS.index(name.split(".")[0]) :]
        wrong += [f"{name} -> {t}" for t in targets if t.split(".")[0] not in below]
    assert wrong == []


# Inside ``codec``: each coder's folder (``codec.mgcf``, ``codec.cca``) stands on the shared core at
# the root and never on its sibling; of the root, only the lossless policy (learned or classical)
# reaches into a coder's folder. A third codec is one more folder beside them.
CODER_FOLDERS = ("codec.mgcf", "codec.cca")
POLICY = ("codec.api", "codec.lossless")


def _folder(module: str) -> str | None:
    return next((f for f in CODER_FOLDERS if module == f or module.startswith(f + ".")), None)


def test_coder_folders_stand_on_the_core_not_on_each_other():
    wrong = []
    for name, targets in _graph().items():
        if not name.startswith("codec"):
            continue
        own = _folder(name)
        for target in targets:
            folder = _folder(target)
            if folder is None or folder == own:
                continue
            if own is not None or name not in POLICY:
                wrong.append(f"{name} -> {target}")
    assert wrong == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _fresh_python(code: str) -> str:
    """What ``code`` prints in a new interpreter (nothing imported before it)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return out.stdout.strip()


def test_reading_headers_and_decoding_classical_files_never_import_torch():
    code = (
        "import sys, numpy as np, codec, codec.registry, codec.fileformat;"
        "from codec.raster import Raster;"
        "r = Raster.from_array(np.arange(12, dtype=np.uint16).reshape(3, 4));"
        "h = codec.fileformat.file_header(r, 3);"
        "import codec.fallback as f;"
        "data = codec.fileformat.write_file(r, h, f.zlib_encode(r.pixels));"
        "assert codec.info(data)['coder'] == 'zlib';"
        "back = codec.decode(data).pixels;"
        "assert back.dtype == r.pixels.dtype and back.shape == r.pixels.shape and (back == r.pixels).all();"
        "print('torch' in sys.modules)"
    )
    assert _fresh_python(code) == "False"


def test_the_library_leaves_pillows_limit_to_its_caller():
    code = (
        "from PIL import Image; default = Image.MAX_IMAGE_PIXELS;"
        "import codec.images, codec.api, jobs.archivecodec;"
        "assert Image.MAX_IMAGE_PIXELS == default, 'an import changed it';"
        "from jobs.runtime import LARGE_IMAGE_PIXELS, allow_large_images; allow_large_images();"
        "print(Image.MAX_IMAGE_PIXELS == LARGE_IMAGE_PIXELS)"
    )
    assert _fresh_python(code) == "True"

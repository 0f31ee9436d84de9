"""What a plain (non-editable) install gets, checked without building it (issue 15: the wheel once
left codec.cca out, and the tests imported PyYAML without declaring it). .ci/wheel_check builds
and runs the real wheel; these are the fast checks every test run makes."""

from __future__ import annotations

import ast
import fnmatch
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
TOPS = ("codec", "pipeline", "jobs")
LOCAL = {*TOPS, "tests", "bench"}
# Import name -> distribution name, where they differ.
DISTRIBUTION = {"PIL": "pillow", "yaml": "pyyaml", "debian": "python-debian"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(requirements: list[str]) -> set[str]:
    return {canonical(re.match(r"[A-Za-z0-9._-]+", r).group(0)) for r in requirements}


def third_party_imports(files: list[Path]) -> dict[str, Path]:
    """Top-level modules the files import (absolute imports only) that are not stdlib or ours."""
    found: dict[str, Path] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in LOCAL:
                    found.setdefault(top, path)
    return found


def undeclared(imports: dict[str, Path], declared: set[str]) -> dict[str, str]:
    """The imports no declared distribution provides, each with a file that makes it."""
    return {name: str(p) for name, p in imports.items() if canonical(DISTRIBUTION.get(name, name)) not in declared}


def test_every_import_the_code_makes_is_a_dependency():
    files = [p for top in TOPS for p in (ROOT / top).rglob("*.py")]
    assert undeclared(third_party_imports(files), requirement_names(PROJECT["dependencies"])) == {}


def test_every_import_the_tests_make_is_declared_for_them():
    declared = requirement_names(PROJECT["dependencies"] + PROJECT["optional-dependencies"]["test"])
    assert undeclared(third_party_imports(sorted((ROOT / "tests").rglob("*.py"))), declared) == {}


def test_the_check_sees_an_undeclared_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\nimport yaml\nfrom PIL import Image\nfrom . import sibling\nimport codec.api\n")
    assert set(third_party_imports([module])) == {"yaml", "PIL"}
    assert undeclared(third_party_imports([module]), {"pillow"}) == {"yaml": str(module)}


def packaged(name: str) -> bool:
    """Whether pyproject's setuptools configuration puts package `name` in the wheel."""
    packages = PYPROJECT["tool"]["setuptools"].get("packages")
    if isinstance(packages, list):
        return name in packages
    find = packages["find"]
    assert find.get("where", ["."]) == ["."], find
    included = any(fnmatch.fnmatchcase(name, pattern) for pattern in find.get("include", ["*"]))
    return included and not any(fnmatch.fnmatchcase(name, pattern) for pattern in find.get("exclude", []))


def test_every_package_is_in_the_wheel():
    inits = [init for top in TOPS for init in (ROOT / top).rglob("__init__.py")]
    names = [".".join(init.parent.relative_to(ROOT).parts) for init in inits]
    assert "codec.cca" in names
    assert [name for name in names if not packaged(name)] == []


def test_every_data_file_the_code_ships_has_a_package_data_pattern():
    """A model, sample or manifest without a pattern would be missing from every plain install."""
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]
    data = [
        p
        for top in TOPS
        for p in (ROOT / top).rglob("*")
        if p.is_file()
        and p.suffix not in (".py", ".pyc")
        and "__pycache__" not in p.parts
        and not p.name.startswith(".")
    ]
    assert any(p.suffix == ".safetensors" for p in data) and any(p.suffix == ".png" for p in data)
    for path in data:
        top, *rest = path.relative_to(ROOT).parts
        assert any(fnmatch.fnmatch("/".join(rest), pattern) for pattern in patterns.get(top, [])), path


def test_readme_test_command_is_what_ci_runs_and_every_install_is_pinned():
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in line and line[:1] != "#"]
    readme = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("python3 -m venv")]
    assert len(ci) == 1 and len(readme) == 2, (ci, readme)
    assert readme[1].endswith(" && " + ci[0])
    for line in [*readme, *ci]:
        installs = [step.strip() for step in line.split("&&") if step.strip().startswith("pip install")]
        installs = [step for step in installs if step != "pip install -U pip"]
        assert len(installs) == 2 and all("-c constraints.txt" in step for step in installs), line

"""The structure holds: layers point one way, no import cycles, each tool's name lives in its own module."""

import ast
import os
import subprocess
import sys
from pathlib import Path

from pipelines.tools import tool_names

ROOT = Path(__file__).resolve().parents[1]


def test_layers_point_one_way_without_cycles():
    """import-linter's contracts (pyproject.toml): cli/app -> ui | bench -> pipelines -> quantization."""
    proc = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                           "lint_imports_command()"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def project_files() -> list[Path]:
    """The project's Python files (hidden folders, such as a virtual environment in .venv, left out)."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
        found += [Path(folder) / name for name in sorted(files) if name.endswith(".py")]
    return found


def test_a_tool_name_is_written_only_in_its_own_module_and_its_tab():
    names = set(tool_names())
    found = []
    for path in project_files():
        relative = path.relative_to(ROOT)
        if relative.parts[0] == "tests" or relative.parts[:2] == ("ui", "tabs"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                if relative.parts[:2] == ("pipelines", "tools") and path.stem == node.value:
                    continue
                found.append(f"{relative}:{node.lineno} {node.value!r}")
    assert not found

"""pyproject.toml and environment.yml pin the same packages at the same versions."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pyproject_pins() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + project["optional-dependencies"]["test"]


def environment_pip_pins() -> list[str]:
    """The entries of the ``- pip:`` list of environment.yml (a list of plain strings; the editable install dropped)."""
    pins, in_pip, pip_indent = [], False, 0
    for line in (ROOT / "environment.yml").read_text().splitlines():
        text = line.split("#", 1)[0].rstrip()
        if not text.strip():
            continue
        indent = len(text) - len(text.lstrip())
        item = text.strip()
        if item == "- pip:":
            in_pip, pip_indent = True, indent
            continue
        if in_pip:
            if indent <= pip_indent:
                in_pip = False
            elif item.startswith("- "):
                entry = item[2:].strip().strip("'\"")
                if not entry.startswith("-e"):
                    pins.append(entry)
    return pins


def test_every_dependency_is_pinned_exactly():
    for pin in pyproject_pins():
        assert "==" in pin, f"pyproject.toml: {pin!r} is not pinned with =="


def test_pyproject_and_environment_pins_are_identical():
    env = environment_pip_pins()
    assert env, "environment.yml: no pip list found"
    assert sorted(env) == sorted(pyproject_pins())
    assert len(env) == len(set(env))

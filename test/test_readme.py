"""Every command in the README and docs/ runs as written, as far as it can run here: each
``vpr_ros_*`` command line is parsed by that command's own parser, each ``ros2 launch`` argument
is one its launch file declares, each ``ros2 run`` executable and script exists, and the ROS
workspace's install step (scripts/system_lacks.py) is run for real on requirements.txt."""
from __future__ import annotations

import argparse
import ast
import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMMANDS = dict((name, (module, func)) for name, module, func in
                re.findall(r'"(\w+) = ([\w.]+):(\w+)"', (REPO / "setup.py").read_text()))


def shell_lines() -> list[tuple[str, str]]:
    """(page, command line) of every ```bash block, continuation lines joined, comments dropped."""
    out = []
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            joined = re.sub(r"\\\n\s*", " ", block)
            for line in joined.splitlines():
                line = re.sub(r"(^|\s)#.*$", "", line).strip()
                if line:
                    out.append((page.name, line))
    return out


LINES = shell_lines()


def import_command(module: str):
    """The command's module; skipped where it needs torch and torch is absent (the Python 3.10
    robot run: those commands are the workstation's)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == "torch":
            pytest.skip(f"{module} needs torch")
        raise


def _placeholder(line: str) -> bool:
    """A line showing a pattern rather than a command (optional parts, ellipses, <names>)."""
    return any(s in line for s in (" [", "...", "<", "|")) or line.endswith("[")


def test_the_pages_have_commands_to_check():
    assert len(LINES) > 40
    assert sum(line.split()[0].startswith("vpr_ros_") for _, line in LINES) > 10


class _Parsed(Exception):
    pass


def _vpr_commands() -> list[tuple[str, list[str]]]:
    out = []
    for page, line in LINES:
        for part in re.split(r"\s*(?:&&|;)\s*", line):
            words = shlex.split(part)
            if words[:3] == ["ros2", "run", "vpr_ros"]:
                words = words[3:]
            if words and words[0].startswith("vpr_ros_") and not _placeholder(part):
                out.append((page, words))
    return out


@pytest.mark.parametrize("page,words", _vpr_commands(), ids=lambda v: v if isinstance(v, str) else " ".join(v)[:60])
def test_every_vpr_ros_command_line_parses_with_its_own_parser(monkeypatch, page, words):
    assert words[0] in COMMANDS, f"{page}: no command {words[0]}"
    module, func = COMMANDS[words[0]]
    command = import_command(module)
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        real(self, args, namespace)  # SystemExit(2) with argparse's message if the line is wrong
        raise _Parsed()
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(_Parsed):
        getattr(command, func)(words[1:])


def _launch_arguments(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "ARGUMENTS" for t in node.targets):
            return {elt.elts[0].value for elt in node.value.elts}  # type: ignore[attr-defined]
    raise AssertionError(f"{path}: no ARGUMENTS")


def test_every_ros2_launch_and_run_line_names_what_exists():
    checked = 0
    for page, line in LINES:
        words = shlex.split(line)
        if words[:3] == ["ros2", "launch", "vpr_ros"]:
            launch = REPO / "launch" / words[3]
            assert launch.is_file(), f"{page}: {line}"
            declared = _launch_arguments(launch)
            given = {w.split(":=")[0] for w in words[4:] if ":=" in w}
            assert given <= declared, f"{page}: {line}: {sorted(given - declared)} not declared by {launch.name}"
            checked += 1
        elif words[:3] == ["ros2", "run", "vpr_ros"]:
            assert words[3] in COMMANDS, f"{page}: {line}"
            checked += 1
        elif words[:1] == ["bash"] and words[1].startswith("scripts/"):
            assert (REPO / words[1]).is_file(), f"{page}: {line}"
            checked += 1
        elif words[:1] in (["python"], ["python3"]) and words[1].startswith(("benchmarks/", "scripts/", "examples/")):
            assert (REPO / words[1]).is_file(), f"{page}: {line}"
            checked += 1
    assert checked > 8


def test_the_workspace_install_step_runs_on_the_requirements(tmp_path):
    """The ROS-workspace page's pip step, run for real with this Python (everything it needs is
    installed here, so what is missing is what the script always installs); every line it prints
    is a pinned requirement pip can read."""
    step = [line for _, line in LINES if "system_lacks.py" in line and "constraints" in line]
    assert step, "the workspace page lost its install step"
    words = shlex.split(step[0].split(">")[0])
    assert words[1] == "src/vpr_ros/scripts/system_lacks.py" and words[2] == "src/vpr_ros/requirements.txt"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "system_lacks.py"), str(REPO / "requirements.txt"),
                        "--constraints", str(tmp_path / "constraints.txt")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    missing = [line for line in r.stdout.splitlines() if line.strip()]
    for line in missing:
        req = Requirement(line.split("#")[0].strip())
        assert [s.operator for s in req.specifier] == ["=="], line
    assert (tmp_path / "constraints.txt").is_file()
    pip_step = [line for _, line in LINES if line.startswith("pip install -c")]
    assert pip_step and "-r" in pip_step[0]

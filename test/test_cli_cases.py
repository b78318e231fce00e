"""Every command as a new user meets it (issue 33, commands): complete --help texts with defaults,
out-of-range arguments refused by argparse, and the cases a trial found answered with the
package's own error naming the file (FIFOs, a full disk, a binary bag metadata file)."""
from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vpr_ros.cli import HelpWithDefaults
from vpr_ros.mapping.map_store import VprMap

from conftest import REPO
from test_map_durability import MODEL, kf, vec
from test_readme import import_command

COMMANDS = re.findall(r'"(vpr_ros_\w+) = ([\w.]+):(\w+)"', (REPO / "setup.py").read_text())


class _Parsed(Exception):
    pass


@pytest.mark.parametrize("name,module,func", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_every_argument_of_every_command_has_help_and_shows_its_default(monkeypatch, name, module, func):
    def capture(self, *args, **kwargs):
        raise _Parsed(self)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(_Parsed) as got:
        getattr(import_command(module), func)([])
    parser = got.value.args[0]
    assert parser.formatter_class is HelpWithDefaults, name
    silent = [a.option_strings or a.dest for a in parser._actions
              if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert not silent, f"{name}: arguments without help: {silent}"
    text = parser.format_help()
    for action in parser._actions:
        if action.option_strings and action.default not in (None, "", False, argparse.SUPPRESS) \
                and not isinstance(action, argparse._HelpAction):
            assert "default" in action.help or f"(default: " in text, (name, action.option_strings)
    if any("choices" in a.__dict__ and a.choices for a in parser._actions):
        assert "{," not in text and ",}" not in text, f"{name}: an empty choice is listed"


@pytest.mark.parametrize("argv", [["vpr_ros.cli.map_info", "m", "--thumbnails", "-5"],
                                  ["vpr_ros.cli.map_info", "m", "--edge-score", "2"],
                                  ["vpr_ros.cli.localize", "src", "--map-dir", "m", "--correct-within", "-5"],
                                  ["vpr_ros.cli.eval", "d", "--tolerance", "-1"],
                                  ["vpr_ros.cli.quantize", "g.onnx", "--output", "o", "--calib-images", "c",
                                   "--max-images", "0"]])
def test_out_of_range_arguments_are_refused_by_name(argv, capsys):
    with pytest.raises(SystemExit) as ended:
        import_command(argv[0]).main(argv[1:])
    assert ended.value.code == 2
    assert f"argument {argv[-2]}: must be" in capsys.readouterr().err


@pytest.fixture(scope="module")
def small_map(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "map"
    m = VprMap.create(MODEL)
    m.add(np.stack([vec(i) for i in range(12)]), [kf(i) for i in range(12)])
    m.save(root)
    m.close()
    return root


def test_map_info_plot_onto_a_fifo_is_refused_naming_it(small_map, tmp_path, capsys):
    from vpr_ros.cli.map_info import main

    fifo = tmp_path / "plot.png"
    os.mkfifo(fifo)
    assert main([str(small_map), "--plot", str(fifo)]) == 2
    err = capsys.readouterr().err
    assert f"{fifo}: is a FIFO (named pipe), not a regular file" in err and "Traceback" not in err


def test_map_info_plot_on_a_full_disk_names_the_file_and_leaves_nothing(small_map, tmp_path):
    """A file-size limit (RLIMIT_FSIZE) makes the PNG write fail as a full disk does."""
    out = tmp_path / "plot.png"
    code = ("import resource, sys\n"
            "from vpr_ros.errors import VprError\n"
            "from vpr_ros.mapping.map_plot import plot_map\n"
            "from vpr_ros.mapping.map_store import VprMap\n"
            "vmap = VprMap.load(sys.argv[1])  # SQLite's files exist before the limit\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))\n"
            "try:\n"
            "    plot_map(vmap, sys.argv[2], 'full disk')\n"
            "except VprError as exc:\n"
            "    print(exc, file=sys.stderr)\n"
            "    raise SystemExit(2)\n")
    r = subprocess.run([sys.executable, "-c", code, str(small_map), str(out)], capture_output=True,
                       text=True, cwd=REPO)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"{out}: cannot write" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() and not list(tmp_path.glob(".plot.png.tmp-*"))


def test_a_bag_with_a_binary_metadata_file_is_named(tmp_path):
    from vpr_ros.errors import DatasetError
    from vpr_ros.mapping.bag_source import bag_camera_info

    bag = tmp_path / "bag"
    bag.mkdir()
    (bag / "metadata.yaml").write_bytes(b"\xff\xfe\x00rosbag2")
    (bag / "bag_0.db3").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"metadata.yaml: the bag's metadata.yaml is not UTF-8 text \(line 1"):
        bag_camera_info(bag, "/camera_info")


def test_map_info_says_what_a_keyframe_costs_on_disk_and_in_memory(small_map, capsys):
    from vpr_ros.cli.map_info import main
    from vpr_ros.mapping.map_store import VprMap

    assert main([str(small_map)]) == 0
    out = capsys.readouterr().out
    from vpr_ros.mapping.index import KEYFRAME_BYTES

    vmap = VprMap.load(small_map)
    assert vmap.manifest.index_type == "flat"
    # a flat index: float32 vectors counted twice (faiss's storage doubles as it grows) + the keyframe table
    want = (vmap.manifest.model.descriptor_dim * 8 + KEYFRAME_BYTES) / 1024
    vmap.close()
    line = next(x for x in out.splitlines() if x.strip().startswith("memory"))
    assert f"{want:.2f} KiB per keyframe held by a node" in line and "'flat' index" in line, line
    assert "KiB per keyframe on disk" in out

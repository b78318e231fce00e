"""The pose-graph example (a real consumer of the loop closures) runs and the closures help."""
from __future__ import annotations

import importlib.util

import pytest

from conftest import REPO, TINY_MODEL

pytest.importorskip("gtsam")


@pytest.mark.slow
def test_verified_loop_closures_shrink_the_trajectory_error_in_gtsam():
    spec = importlib.util.spec_from_file_location("gtsam_loop_closures", REPO / "examples" / "gtsam_loop_closures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # the run's tiny test network (its ONNX export is shared by the whole run)
    r = mod.run(mod.parse(["--places", "16", "--backbone", TINY_MODEL["backbone"], "--input-size",
                           str(TINY_MODEL["input_size"]), "--model-seed", str(TINY_MODEL["seed"])]))
    assert r["closures"] >= 8
    assert r["without"] > 0.5 and r["with"] < 0.5 * r["without"], r

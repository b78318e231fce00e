"""The pose-graph example (a real consumer of the loop closures) runs and the closures help."""
from __future__ import annotations

import importlib.util

import pytest

from conftest import REPO

pytest.importorskip("gtsam")


@pytest.mark.slow
def test_verified_loop_closures_shrink_the_trajectory_error_in_gtsam():
    spec = importlib.util.spec_from_file_location("gtsam_loop_closures", REPO / "examples" / "gtsam_loop_closures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    r = mod.run(mod.parse(["--places", "16", "--backbone", "vit_test"]))
    assert r["closures"] >= 8
    assert r["without"] > 0.5 and r["with"] < 0.5 * r["without"], r

"""vpr_ros_localize: a bag or folder replayed offline against a map through the node's Localizer,
with per-frame rows, a summary and a plot (the threshold-tuning workflow)."""
from __future__ import annotations

import csv
import json

import pytest
import yaml

from vpr_ros.cli.build_map import main as build_map
from vpr_ros.cli.localize import main as localize

from conftest import TINY_MODEL
from test_bags import write_bag


def _params(tmp_path, node: str) -> str:
    p = tmp_path / f"{node}.yaml"
    p.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "backend": "torch", **{f"model.{k}": v for k, v in TINY_MODEL.items()}}}}))
    return str(p)


@pytest.mark.torch
def test_a_bag_replayed_against_its_own_map_finds_every_frame_and_reports_decisions(tmp_path, traversals, capsys):
    first, second = traversals
    map_bag = write_bag(tmp_path / "map_bag", first)
    query_bag = write_bag(tmp_path / "query_bag", first)  # the same drive again: every place is in the map
    assert build_map([str(map_bag), "--map-dir", str(tmp_path / "map"), "--image-topic", "/camera/image_raw",
                      "--pose-topic", "/odom", "--params-file", _params(tmp_path, "builder")]) == 0
    out = tmp_path / "out"
    args = [str(query_bag), "--map-dir", str(tmp_path / "map"), "--image-topic", "/camera/image_raw",
            "--pose-topic", "/odom", "--params-file", _params(tmp_path, "loc"), "--output", str(out), "--no-progress",
            "--correct-within", "1.5", "--set", "score_threshold=0.0"]
    assert localize(args) == 0
    text = capsys.readouterr().out
    rows = list(csv.DictReader((out / "localization.csv").open()))
    assert len(rows) == len(first.images) and f"{len(rows)}/{len(rows)} frames answered" in text
    assert all(r["top1_db_id"] != "" and r["truth_x"] != "" and r["position_error_m"] != "" for r in rows)
    assert {r["loop_status"] for r in rows} <= {"verified", "accepted", "candidate", "rejected"}
    res = json.loads((out / "results.json").read_text())
    assert res["summary"]["frames"] == len(rows) and res["settings"]["localizer"]["score_threshold"] == 0.0
    assert res["summary"]["top1_correct"] == 1.0 and res["summary"]["position_error_m"]["median"] < 1e-6
    assert (out / "localize.png").stat().st_size > 10_000
    # another drive: a stricter threshold, set on the command line like any parameter, accepts fewer frames
    other = [str(write_bag(tmp_path / "other_bag", second)), *args[1:]]
    assert localize(other) == 0
    loose = json.loads((out / "results.json").read_text())["summary"]
    assert localize(other[:-1] + ["score_threshold=0.999"]) == 0
    strict = json.loads((out / "results.json").read_text())["summary"]
    assert strict["accepted"] < loose["accepted"] == loose["answered"]
    assert localize(args[:-1] + ["score_threshold=7"]) == 2  # out of range: the node's own check
    assert "score_threshold" in capsys.readouterr().err


@pytest.mark.torch
def test_a_folder_without_ground_truth_is_localized_too(tmp_path, traversals):
    from test_evaluation import make_gmberton

    data = make_gmberton(tmp_path / "city", n=4)
    camera = tmp_path / "camera.yaml"  # a folder has no CameraInfo: the camera_calibration file gives the model
    from vpr_ros.datasets import read_rgb

    height, width = read_rgb(next((data / "database").iterdir())).shape[:2]
    camera.write_text(yaml.safe_dump({"image_width": width, "image_height": height, "camera_matrix": {
        "rows": 3, "cols": 3, "data": [200.0, 0.0, width / 2, 0.0, 200.0, height / 2, 0.0, 0.0, 1.0]}}))
    assert build_map([str(data / "database"), "--map-dir", str(tmp_path / "map"), "--params-file",
                      _params(tmp_path, "b"), "--camera-info", str(camera)]) == 0
    from vpr_ros.mapping.map_store import VprMap

    stored = VprMap.load(tmp_path / "map").local_features(0)
    assert stored is not None and stored.intrinsics is not None and stored.intrinsics.fx == 200.0
    (tmp_path / "q").mkdir()
    for i, f in enumerate(sorted((data / "queries").iterdir())):
        (tmp_path / "q" / f"frame{i:03d}.jpg").write_bytes(f.read_bytes())  # names without coordinates
    assert localize([str(tmp_path / "q"), "--map-dir", str(tmp_path / "map"), "--params-file", _params(tmp_path, "l"),
                     "--output", str(tmp_path / "out"), "--no-progress"]) == 0
    rows = list(csv.DictReader((tmp_path / "out" / "localization.csv").open()))
    assert len(rows) == 4 and all(r["truth_x"] == "" and r["top1_db_id"] != "" for r in rows)


@pytest.mark.torch
def test_map_info_draws_the_map_with_sessions_revisit_edges_and_thumbnails(tmp_path, capsys):
    from vpr_ros.cli.map_info import main as map_info
    from vpr_ros.mapping.map_plot import revisit_edges
    from vpr_ros.mapping.map_store import VprMap
    from test_evaluation import make_gmberton

    data = make_gmberton(tmp_path / "city", n=5)
    params = _params(tmp_path, "b")
    assert build_map([str(data / "database"), "--map-dir", str(tmp_path / "map"), "--params-file", params]) == 0
    poses = tmp_path / "later.csv"  # a second session, 100 s later, over the same places
    poses.write_text("image,x,y,yaw,stamp\n" + "".join(
        f"{f.name},{f.name.split('@')[1]},{f.name.split('@')[2]},0,{100 + i}\n"
        for i, f in enumerate(sorted((data / "queries").iterdir()))))
    assert build_map([str(data / "queries"), "--map-dir", str(tmp_path / "map"), "--params-file", params,
                      "--poses", str(poses), "--append"]) == 0
    capsys.readouterr()
    assert map_info([str(tmp_path / "map"), "--plot", str(tmp_path / "map.png"), "--edge-score", "-1",
                     "--thumbnails", "4"]) == 0
    out = capsys.readouterr().out
    vmap = VprMap.load(tmp_path / "map")
    candidates = revisit_edges(vmap, -1.0, 30.0, verify=False)  # every second-session keyframe has older ones
    assert len(candidates) == 5 and all(vmap.keyframes[j].session == 0 < vmap.keyframes[i].session
                                        for i, j, _ in candidates)
    edges = revisit_edges(vmap, -1.0, 30.0)  # only those whose geometry verifies are drawn
    assert set(edges) <= set(candidates)
    assert f"geometrically verified ({len(edges)})" in out and (tmp_path / "map.png").stat().st_size > 20_000
    print(f"{len(edges)} of {len(candidates)} candidate revisits verified")


def test_the_plot_names_each_decision_with_its_main_reason():
    from vpr_ros.offline_localization import _decision_label

    rows = [{"loop_status": "rejected", "loop_reason": "score below threshold"}] * 3 + \
           [{"loop_status": "rejected", "loop_reason": "geometric verification failed: 12 inliers < 30"}] + \
           [{"loop_status": "verified", "loop_reason": ""}]
    assert _decision_label(rows, "rejected", 4) == "rejected (4, mostly: score below threshold)"
    assert _decision_label(rows[3:], "rejected", 1) == "rejected (1: geometric verification failed)"
    assert _decision_label(rows, "verified", 1) == "verified (1)"

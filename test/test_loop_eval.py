"""vpr_ros_eval_loops: loop-closure detection scored on one sequence against a ground-truth loop
matrix (the standard way: PR over the score threshold, maximum recall at 100 % precision), for
the real corridor driven as one sequence (reference pass, then query pass) through the map
builder's live code, and ground truth read from the formats loop-closure evaluations use."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from vpr_ros.errors import DatasetError
from vpr_ros.loop_eval import FrameDecision, loops_from_poses, read_loop_matrix, score_variants

from conftest import CORRIDOR, TINY_MODEL


def test_loop_matrices_are_read_from_npy_csv_and_images(tmp_path):
    gt = np.zeros((6, 6), bool)
    gt[4, 1] = gt[5, 2] = True
    np.save(tmp_path / "gt.npy", gt)
    np.savetxt(tmp_path / "gt.csv", gt.astype(int), fmt="%d", delimiter=",")
    cv2.imwrite(str(tmp_path / "seq_GT.bmp"), gt.astype(np.uint8) * 255)  # RTAB-Map's layout
    for name in ("gt.npy", "gt.csv", "seq_GT.bmp"):
        m = read_loop_matrix(tmp_path / name, 6)
        assert m[4, 1] and m[1, 4] and m.sum() == 4, name  # made symmetric
    with pytest.raises(DatasetError, match=r"the loop matrix is \[6, 6\], the sequence has 7 frames"):
        read_loop_matrix(tmp_path / "gt.npy", 7)
    (tmp_path / "bad.csv").write_text("0,1\n1,x\n")
    with pytest.raises(DatasetError, match="bad.csv: cannot read the loop matrix"):
        read_loop_matrix(tmp_path / "bad.csv", 2)
    with pytest.raises(DatasetError, match="a loop matrix is .npy"):
        read_loop_matrix(_touch(tmp_path / "gt.json"), 6)
    pos = np.array([[0, 0, 0], [5, 0, 0], [0.5, 0, 0]], float)
    assert loops_from_poses(pos, np.array([0.0, 10.0, 60.0]), 1.0, 30.0).tolist() == \
        [[False, False, True], [False, False, False], [True, False, False]]


def test_loop_matrices_are_read_from_matlab_files(tmp_path):
    """MATLAB v5 files as the FAB-MAP-era evaluation codes ship them (one logical or double [n, n]
    variable, e.g. 'truth'; written here by scipy.io.savemat in that format)."""
    sio = pytest.importorskip("scipy.io")
    gt = np.zeros((6, 6))
    gt[4, 1] = gt[5, 2] = 1.0
    sio.savemat(tmp_path / "one.mat", {"truth": gt})
    sio.savemat(tmp_path / "two.mat", {"truth": gt.astype(bool), "image_times": np.arange(6.0)[None],
                                       "other": np.ones((6, 6))})
    for name in ("one.mat", "two.mat"):
        m = read_loop_matrix(tmp_path / name, 6)
        assert m[4, 1] and m[1, 4] and m.sum() == 4, name
    sio.savemat(tmp_path / "none.mat", {"a": np.ones((6, 6)), "b": np.zeros((6, 6))})
    with pytest.raises(DatasetError, match=r"none.mat: needs exactly one \[6, 6\] numeric variable.*a \[6, 6\], b"):
        read_loop_matrix(tmp_path / "none.mat", 6)
    with pytest.raises(DatasetError, match=r"one.mat: needs exactly one \[7, 7\]"):
        read_loop_matrix(tmp_path / "one.mat", 7)
    (tmp_path / "v73.mat").write_bytes(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: x HDF5 schema 1.00 ."
                                       + b" " * 60 + b"\x00" * 400)
    with pytest.raises(DatasetError, match="v73.mat: a MATLAB v7.3 .HDF5. file"):
        read_loop_matrix(tmp_path / "v73.mat", 6)
    (tmp_path / "junk.mat").write_bytes(b"\x00" * 300)
    with pytest.raises(DatasetError, match="junk.mat: not a readable MATLAB file"):
        read_loop_matrix(tmp_path / "junk.mat", 6)


def _touch(p):
    p.write_text("{}")
    return p


def test_the_detectors_are_scored_as_loop_closure_evaluations_score_them():
    """Hand-made decisions with a known answer: 4 frames with a loop to find; the verified and
    temporal variants reuse the node's LoopClosureDetector."""
    n = 8
    gt = np.zeros((n, n), bool)
    for i, j in ((4, 0), (5, 1), (6, 2), (7, 3)):
        gt[i, j] = gt[j, i] = True
    run = [FrameDecision(i, float(i) * 10, -1, -np.inf, False, "", 0, 1.0) for i in range(4)]
    run += [FrameDecision(4, 40.0, 0, 0.9, True, "fundamental", 40, 1.0),   # correct, verified
            FrameDecision(5, 50.0, 3, 0.95, False, "", 0, 1.0),             # wrong, highest score, not verified
            FrameDecision(6, 60.0, 2, 0.8, True, "fundamental", 35, 1.0),   # correct, verified
            FrameDecision(7, 70.0, 3, 0.7, True, "fundamental", 31, 1.0)]   # correct, verified
    curves = score_variants(run, gt, exclude_recent=30.0, consistency=1, window=3, max_rate=100.0)
    r = curves["retrieval"]
    assert r.positives == 4 and r.thresholds.tolist() == [0.95, 0.9, 0.8, 0.7]
    assert r.precision.tolist() == [0.0, 0.5, 2 / 3, 0.75] and r.recall.tolist() == [0.0, 0.25, 0.5, 0.75]
    assert r.max_recall_at_full_precision == 0.0  # the wrong match scores highest
    v = curves["verification"]
    assert v.precision.tolist() == [1.0, 1.0, 1.0, 1.0] and v.max_recall_at_full_precision == 0.75
    assert v.threshold_at_full_precision == 0.7
    assert curves["verification+temporal"].max_recall_at_full_precision == 0.75


@pytest.mark.torch
@pytest.mark.slow
def test_the_real_corridor_as_one_sequence_through_the_live_code(tmp_path, capsys):
    from vpr_ros.cli.eval_loops import main

    if not CORRIDOR.is_dir():
        pytest.skip("../shared/data/corridor is not here")
    params = tmp_path / "p.yaml"
    import yaml

    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "backend": "torch", "verification.min_inliers": 12, "verification.ratio": 0.9,
        "verification.max_features": 2000, **{f"model.{k}": v for k, v in TINY_MODEL.items()}}}}))
    out = tmp_path / "out"
    assert main([str(CORRIDOR), "--params-file", str(params), "--output", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "111 reference frames, then 111 query frames" in text and "max recall at 100% precision" in text
    res = json.loads((out / "results.json").read_text())
    assert res["frames"] == 222 and res["frames_with_a_loop"] == 111  # every query revisits the reference pass
    assert set(res["detectors"]) == {"retrieval", "verification", "temporal", "verification+temporal", "sequence",
                                     "verification+sequence", "inliers"}
    inliers = res["detectors"]["inliers"]["curve"]["threshold"]  # the re-ranking score: inlier counts
    assert inliers and all(float(t).is_integer() and t >= 0 for t in inliers)
    for d in res["detectors"].values():
        assert 0.0 <= d["auc"] <= 1.0 and 0.0 <= d["max_recall_at_100_precision"] <= 1.0
    rows = (out / "loops.csv").read_text().splitlines()
    assert len(rows) == 223 and rows[0].startswith("frame,image,stamp,top1,score,rerank_score,verified")
    assert sum(1 for r in rows[1:] if r.split(",")[5].isdigit()) > 100  # re-ranked top-1s carry their score
    assert (out / "loops.png").stat().st_size > 30_000
    assert main([str(CORRIDOR), "--ground-truth", "x.npy", "--output", str(out)]) == 2  # a layout brings its own


def test_sequence_matching_scores_a_match_by_the_diagonal_behind_it():
    from vpr_ros.loop_eval import sequence_scores

    d = np.eye(8, dtype=np.float32)
    d[5:8] = d[1:4]  # frames 5..7 revisit 1..3, in the same order
    run = [FrameDecision(i, float(i), -1, -np.inf, False, "", 0, 1.0) for i in range(5)]
    run += [FrameDecision(5, 5.0, 1, 1.0, False, "", 0, 1.0), FrameDecision(6, 6.0, 2, 1.0, False, "", 0, 1.0),
            FrameDecision(7, 7.0, 0, 0.0, False, "", 0, 1.0)]
    s = sequence_scores(run, d, length=3)
    assert np.isneginf(s[:5]).all()
    assert s[5] == pytest.approx(1 / 3)   # k=0 matches; frame 4 vs 0 differ; nothing before frame 0 (counts 0)
    assert s[6] == pytest.approx(2 / 3)   # 6-2 and 5-1 agree, 4-0 does not
    assert s[7] == pytest.approx(0.0)     # off the diagonal


@pytest.mark.torch
def test_a_bag_with_revisits_is_scored_from_its_own_poses(tmp_path, traversals, capsys):
    """A rosbag2 recording of two drives over the same places (the second 1000 s later): its
    frames in bag order, ground truth from its odometry (within --radius, older by --exclude-recent)."""
    from types import SimpleNamespace

    from vpr_ros.cli.eval_loops import main

    from test_bags import write_bag

    first, second = traversals
    both = SimpleNamespace(images=[*first.images, *second.images],
                           stamps=[*first.stamps, *(t + 1000.0 for t in second.stamps)],
                           poses=[*first.poses, *second.poses])
    bag = write_bag(tmp_path / "bag", both)
    params = tmp_path / "p.yaml"
    import yaml

    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "backend": "torch", **{f"model.{k}": v for k, v in TINY_MODEL.items()}}}}))
    out = tmp_path / "out"
    assert main([str(bag), "--image-topic", "/camera/image_raw", "--pose-topic", "/odom", "--radius", "1.5",
                 "--params-file", str(params), "--output", str(out), "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["frames"] == len(both.images) and res["frames_with_a_loop"] == len(second.images)
    assert "/camera/image_raw@" in (out / "loops.csv").read_text()
    assert main([str(bag), "--image-topic", "/camera/image_raw", "--output", str(out)]) == 2
    assert "needs --image-topic and --pose-topic" in capsys.readouterr().err

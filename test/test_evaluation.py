"""Evaluation: metrics on hand-computed cases, dataset readers, malformed layouts, the command."""
from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from vpr_ros.datasets import read_eval_dataset
from vpr_ros.errors import CheckpointError, DatasetError
from vpr_ros.evaluation import positives_by_index, positives_within, precision_recall, recall_at_n
from vpr_ros.pca import Pca

from conftest import TINY_MODEL, random_image


def test_recall_at_n_by_hand():
    ranked = np.array([[2, 0, 1], [1, 2, 0], [0, 1, 2]])
    positives = [{0}, {1}, {5}]
    r = recall_at_n(ranked, positives, ns=(1, 2, 3, 10))
    assert r == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: pytest.approx(2 / 3), 10: pytest.approx(2 / 3)}
    with pytest.raises(ValueError):
        recall_at_n(ranked, positives[:2])


def test_precision_recall_by_hand():
    pr = precision_recall(np.array([0.7, 0.9, 0.6, 0.8]), np.array([True, True, False, False]),
                          np.array([True, True, False, True]))
    # sorted by score: .9 ok, .8 wrong, .7 ok, .6 wrong; 3 queries have a positive
    assert pr.thresholds.tolist() == [0.9, 0.8, 0.7, 0.6]
    assert pr.precision.tolist() == pytest.approx([1.0, 0.5, 2 / 3, 0.5])
    assert pr.recall.tolist() == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert pr.recall_at_100_precision == pytest.approx(1 / 3)
    assert pr.auc == pytest.approx(1 / 3 + (1 / 3) * (0.5 + 2 / 3) / 2)


def test_precision_recall_ties_and_edge_cases():
    pr = precision_recall(np.array([0.5, 0.5, 0.5]), np.array([True, False, True]), np.array([True] * 3))
    assert pr.thresholds.tolist() == [0.5] and pr.precision.tolist() == pytest.approx([2 / 3])
    assert pr.recall_at_100_precision == 0.0
    empty = precision_recall(np.zeros(0), np.zeros(0, bool), np.zeros(0, bool))
    assert empty.auc == 0.0 and len(empty.recall) == 0


def test_positive_sets():
    assert positives_by_index(3, 4, 1) == [{0, 1}, {0, 1, 2}, {1, 2, 3}]
    q = np.array([[0.0, 0.0], [100.0, 0.0]])
    d = np.array([[10.0, 0.0], [30.0, 0.0], [95.0, 5.0]])
    assert positives_within(q, d, 25.0) == [{0}, {2}]


def write_img(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), random_image(48, 64, seed))


def make_gmberton(root, n=6, nested=False):
    base = root / "images" / "test" if nested else root
    for i in range(n):
        write_img(base / "database" / f"@{500000 + 40 * i:.2f}@{4000000:.2f}@17@S@@@@@@@@.jpg", i)
        write_img(base / "queries" / f"@{500003 + 40 * i:.2f}@{4000002:.2f}@17@S@@@@@@@@.jpg", 100 + i)
    return root


def test_readers_on_generated_folders(tmp_path):
    g = read_eval_dataset(make_gmberton(tmp_path / "g"))
    assert g.layout == "gmberton" and len(g.database) == 6 and g.positives == [{i} for i in range(6)]
    assert read_eval_dataset(make_gmberton(tmp_path / "n", nested=True)).layout == "gmberton"
    wide = read_eval_dataset(tmp_path / "g", radius=50.0)
    assert wide.positives[2] == {1, 2, 3}
    s = tmp_path / "seq"
    for i in range(5):
        write_img(s / "ref" / f"{i:04d}.jpg", i)
        write_img(s / "query" / f"{i:04d}.jpg", 10 + i)
    seq = read_eval_dataset(s, tolerance=1)
    assert seq.layout == "sequence" and seq.positives[0] == {0, 1}
    (s / "ground_truth.csv").write_text("query_index,matching_ref_indices\n0,0 1\n3,2 3 4\n")
    vb = read_eval_dataset(s)
    assert vb.layout == "vpr_bench" and vb.positives[0] == {0, 1} and vb.positives[1] == set()


def test_malformed_layouts_raise_clear_errors(tmp_path):
    bad = tmp_path / "bad"
    write_img(bad / "database" / "no_coordinates.jpg")
    write_img(bad / "queries" / "@1@2@.jpg")
    with pytest.raises(DatasetError, match="no_coordinates.jpg.*utm"):
        read_eval_dataset(bad)
    empty = tmp_path / "empty"
    (empty / "database").mkdir(parents=True)
    (empty / "queries").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        read_eval_dataset(empty)
    s = tmp_path / "vb"
    for i in range(3):
        write_img(s / "ref" / f"{i}.jpg", i)
        write_img(s / "query" / f"{i}.jpg", i)
    (s / "ground_truth.csv").write_text("query_index,matching_ref_indices\n0,0 7\n")
    with pytest.raises(DatasetError, match="row 2 names an index outside"):
        read_eval_dataset(s)
    (s / "ground_truth.csv").write_text("query_index,matching_ref_indices\nzero,1\n")
    with pytest.raises(DatasetError, match="row 2 is malformed"):
        read_eval_dataset(s)
    with pytest.raises(DatasetError, match="no database"):
        read_eval_dataset(tmp_path / "nothing_here")


@pytest.mark.parametrize("n", [3000, 40], ids=["covariance (N >= D)", "Gram matrix (N < D)"])
def test_pca_fit_matches_the_full_svd_through_either_eigenproblem(n):
    """Same components (up to sign) and explained variance as an SVD of the centred data, on a
    matrix with a known, well-separated spectrum, whether the fit solves D x D or N x N; the
    memory estimate takes the smaller one."""
    rng = np.random.default_rng(3)
    d, k = 64, 8
    basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
    scales = np.geomspace(10.0, 0.1, d)
    x = ((rng.normal(size=(n, d)) * scales) @ basis.T + 5.0).astype(np.float32)
    steps: list[str] = []
    pca = Pca.fit(x, k, model_id="m-1", chunk=700, progress=steps.append)  # several chunks, one partial
    assert steps and ("Gram" in steps[0]) == (n < d) and pca.model_id == "m-1"
    centred = x.astype(np.float64) - x.astype(np.float64).mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    cos = np.abs((pca.components.astype(np.float64) * vt[:k].T).sum(0))
    assert cos.min() > 0.9999
    np.testing.assert_allclose(pca.explained, (s**2 / (s**2).sum())[:k], rtol=1e-4)
    assert np.allclose(pca.components.T @ pca.components, np.eye(k), atol=1e-5)
    small, large = Pca.fit_memory_bytes(92, 10752), Pca.fit_memory_bytes(20000, 10752)
    assert small["eigenproblem"] < 2**30 / 10 and large["eigenproblem"] < large["full_svd"] / 2


def test_pca_fit_apply_save_load(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 16)).astype(np.float32)
    pca = Pca.fit(x, 4, model_id="d2vpr-x")
    assert np.allclose(pca.components.T @ pca.components, np.eye(4), atol=1e-5)
    y = pca.apply(x)
    assert y.shape == (50, 4) and np.allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)
    pca.save(tmp_path / "p.npz")
    back = Pca.load(tmp_path / "p.npz")
    assert back.pca_id == pca.pca_id and back.model_id == "d2vpr-x" and np.allclose(back.apply(x), y)
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="bad.npz"):
        Pca.load(tmp_path / "bad.npz")


def _pca_file(path, **arrays):
    base = dict(mean=np.zeros(8, np.float32), components=np.eye(8, 2, dtype=np.float32),
                explained=np.full(2, 0.5, np.float32))
    np.savez(path, **{**base, **arrays})
    return path


@pytest.mark.parametrize("arrays, message", [
    (dict(components=np.full((8, 2), np.nan, np.float32)), "'components' contains NaN"),
    (dict(mean=np.full(8, np.inf, np.float32)), "'mean' contains NaN or infinite"),
    (dict(components=np.zeros((8, 0), np.float32), explained=np.zeros(0, np.float32)), "to 0 dimensions"),
    (dict(components=np.ones((8, 2), np.int64)), "'components' is int64, not floating point"),
    (dict(components=np.ones((8, 2), np.float32)), "not unit vectors"),
    (dict(mean=np.zeros(7, np.float32)), "shapes do not fit"),
])
def test_pca_files_are_validated_when_read(tmp_path, arrays, message):
    with pytest.raises(CheckpointError, match=message):
        Pca.load(_pca_file(tmp_path / "p.npz", **arrays))


def test_pca_of_another_model_or_size_and_npy_files_are_refused(tmp_path):
    np.save(tmp_path / "p.npy", np.zeros(8, np.float32))
    with pytest.raises(CheckpointError, match=r"p.npy: not a PCA file: a single array \(.npy\)"):
        Pca.load(tmp_path / "p.npy")
    pca = Pca.fit(np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32), 2, model_id="model-a")
    with pytest.raises(CheckpointError, match="fitted on the descriptors of model-a, not of model-b"):
        pca.check_fits(8, "model-b", "p.npz")
    with pytest.raises(CheckpointError, match="reduces 8-d descriptors but model model-a gives 16-d"):
        pca.check_fits(16, "model-a", "p.npz")
    pca.check_fits(8, "model-a", "p.npz")
    Pca.load(_pca_file(tmp_path / "old.npz")).check_fits(8, "model-b", "old.npz")  # pre-v0.4 file: size only


def test_eval_command_end_to_end_with_cache_and_pca(tmp_path, capsys):
    from vpr_ros.cli.eval import main

    data = make_gmberton(tmp_path / "city", n=8)
    model = ["--backbone", TINY_MODEL["backbone"], "--random-weights"]
    args = [str(data), "--output", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--batch-size", "3"]
    # tiny input size through a params file (the command reads model.* from it)
    params = tmp_path / "p.yaml"
    params.write_text(f"/**:\n  ros__parameters:\n    model:\n      input_size: {TINY_MODEL['input_size']}\n"
                      f"      seed: {TINY_MODEL['seed']}\n")
    assert main(args + model + ["--params-file", str(params)]) == 0
    first = capsys.readouterr().out
    assert "R@1 " in first and "R@20" in first and "from cache" not in first
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(res["recall"]) == {"R@1", "R@5", "R@10", "R@20"} and res["queries"] == 8
    assert (tmp_path / "out" / "eval.png").stat().st_size > 5000
    rows = (tmp_path / "out" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 9 and rows[0].startswith("query,query_image,top1_db_id")
    assert main(args + model + ["--params-file", str(params)]) == 0
    assert "descriptors loaded from cache" in capsys.readouterr().out
    chunks = sorted((tmp_path / "cache").glob("*/*.npy"))
    assert [c.name.split("-")[0] for c in chunks] == ["database", "queries"]
    pca = Pca.fit(np.concatenate([np.load(c, allow_pickle=False) for c in chunks]), 4)
    pca.save(tmp_path / "pca.npz")
    assert main(args + model + ["--params-file", str(params), "--pca", str(tmp_path / "pca.npz")]) == 0
    assert "pca4-" in json.loads((tmp_path / "out" / "results.json").read_text())["model"]
    assert main([str(tmp_path / "missing")]) == 2


@pytest.mark.parametrize("mode", ["classical", "dense"])
def test_eval_reranks_with_local_features(tmp_path, capsys, mode):
    """--rerank reports R@N before and after and the precision/recall of verified top-1 matches."""
    from vpr_ros.cli.eval import main

    data = make_gmberton(tmp_path / "city", n=6)
    params = tmp_path / "p.yaml"
    params.write_text(f"/**:\n  ros__parameters:\n    model:\n      input_size: {TINY_MODEL['input_size']}\n"
                      f"      seed: {TINY_MODEL['seed']}\n")
    assert main([str(data), "--output", str(tmp_path / "out"), "--cache-dir", "", "--backbone",
                 TINY_MODEL["backbone"], "--random-weights", "--params-file", str(params), "--rerank", mode,
                 "--min-inliers", "8"]) == 0
    out = capsys.readouterr().out
    assert "[eval] global: R@1" in out and f"re-ranked top-6 by {'dense' if mode == 'dense' else 'sift'}" in out
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    rr = res["rerank"]
    assert set(rr["recall_before"]) == {"R@1", "R@5", "R@10", "R@20"} and rr["recall_after"] == res["recall"]
    assert 0 <= rr["verified_top1_correct"] <= rr["verified_top1"] <= 6
    # every output says which ranking it shows, carries the local score, and the settings to reproduce it
    assert res["ranking"].startswith("re-ranked by") and rr["score"] in ("inliers", "mutual nearest neighbours")
    assert res["settings"]["radius_m"] == 25.0 and res["settings"]["rerank"] == mode
    assert res["settings"]["model"]["input_size"] == TINY_MODEL["input_size"] and rr["pr_auc_local"] is not None
    assert res["settings"]["random_weights"] is True  # the tiny model is randomly initialised; eval.png says so
    rows = list(csv.DictReader((tmp_path / "out" / "predictions.csv").open()))
    assert len(rows) == 6 and all(r["ranking"] == f"reranked_{'dense' if mode == 'dense' else 'sift'}" for r in rows)
    assert all(r["top1_local_score"] != "" and float(r["top1_global_score"]) <= 1.0 for r in rows)
    curves = {r["curve"] for r in csv.DictReader((tmp_path / "out" / "pr_curve.csv").open())}
    assert curves == {"global", f"reranked_{'dense' if mode == 'dense' else 'sift'}"}

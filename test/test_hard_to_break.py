"""Every bad input found in the trials, reproduced: each now gets a clear message naming the file /
key / row / encoding, a non-zero exit for commands, an ERROR on /diagnostics for nodes (which keep
their previous map), and nothing good is replaced by something broken or empty."""
from __future__ import annotations

import json
import shutil
import sqlite3

import numpy as np
import pytest
import yaml

from vpr_ros.mapping.map_store import MANIFEST, VprMap

from conftest import HANG_GUARD_S, TINY_MODEL
from test_bags import write_bag
from test_evaluation import make_gmberton, write_img

TINY_ARGS = ["--backbone", TINY_MODEL["backbone"], "--random-weights"]


@pytest.fixture()
def tiny_params(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump({"/**": {"ros__parameters": {f"model.{k}": v for k, v in TINY_MODEL.items()}}}))
    return str(p)


def _corrupt(map_dir, how):
    if how == "binary manifest":
        (map_dir / MANIFEST).write_bytes(b"\x80\x81\xfe binary \x00\xff" * 8)
    elif how == "truncated manifest":
        text = (map_dir / MANIFEST).read_text()
        (map_dir / MANIFEST).write_text(text[: len(text) // 3])
    else:  # a changed, text or infinite pose value in the keyframe table (a NULL is refused by its schema)
        value = {"changed pose": 99.0, "text pose": "north", "infinite pose": float("inf")}[how]
        con = sqlite3.connect(str(next(map_dir.glob("map-*.sqlite"))))
        con.execute("UPDATE keyframes SET x = ? WHERE id = 3", (value,))
        con.commit()
        con.close()


BAD_MAPS = ["binary manifest", "truncated manifest", "changed pose", "text pose", "infinite pose"]
EXPECTED = {"binary manifest": "not UTF-8", "truncated manifest": "manifest.yaml", "changed pose": "keyframe 3",
            "text pose": "keyframe 3", "infinite pose": "keyframe 3"}


@pytest.mark.parametrize("how", BAD_MAPS)
def test_map_info_names_the_corruption(tmp_path, built_map, how, capsys):
    from vpr_ros.cli.map_info import main

    bad = tmp_path / "bad"
    shutil.copytree(built_map, bad)
    _corrupt(bad, how)
    assert main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert EXPECTED[how] in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.ros
def test_localizer_survives_corrupt_maps_at_start_and_on_reload(rclpy_context, tmp_path, built_map, traversals):
    import rclpy
    from diagnostic_msgs.msg import DiagnosticStatus

    from test_nodes import Spinning, call_trigger, last_diag, overrides
    from vpr_ros.ros.localizer_node import LocalizerNode
    from vpr_ros.ros.player import QueryPlayer

    bad = tmp_path / "bad"
    shutil.copytree(built_map, bad)
    _corrupt(bad, "binary manifest")
    node = LocalizerNode(parameter_overrides=overrides(map_dir=str(bad), qos="reliable", diagnostics_period=0.2,
                                                      score_threshold=0.0))
    s = Spinning(node)
    client = rclpy.create_node("corrupt_client")
    try:
        p = QueryPlayer("image")
        st, _ = last_diag(p)
        assert st.level == DiagnosticStatus.ERROR and "not UTF-8" in st.message  # alive, and says why
        good = tmp_path / "good"
        shutil.copytree(built_map, good)
        from rclpy.parameter import Parameter

        node.set_parameters([Parameter("map_dir", value=str(good))])
        assert p.spin_until(lambda: node.loaded_map_dir == str(good), HANG_GUARD_S)
        _corrupt(good, "changed pose")  # the file on disk goes bad while its map is in use
        res = call_trigger(client, "vpr/reload_map")
        assert not res.success and "keyframe 3" in res.message and f"still using {good}" in res.message
        # the status says it (a diagnostics message already in flight before the reload may arrive first)
        p.log.diagnostics.clear()
        assert p.spin_until(lambda: any(st.level == DiagnosticStatus.ERROR and "keyframe 3" in st.message
                                        for a in p.log.diagnostics for st in a.status if st.name.endswith("localizer")),
                            HANG_GUARD_S)
        assert p.wait_for_localizer(HANG_GUARD_S)
        assert p.play([traversals[0].images[6]], [77.0], timeout=HANG_GUARD_S) == 1  # the previous map answers
        assert p.log.tables[77.0][0]["db_id"] == 6
        p.destroy_node()
    finally:
        client.destroy_node()
        s.stop()


def test_map_with_url_characters_in_its_path_saves_loads_and_reports(tmp_path, built_map, capsys):
    from vpr_ros.cli.map_info import main

    parent = tmp_path / "odd"
    odd = parent / "maps #2 ?v=1 %41"
    VprMap.load(built_map).save(odd)
    assert len(VprMap.load(odd)) == 24 and main([str(odd)]) == 0
    assert [p.name for p in parent.iterdir()] == [odd.name]  # no stray file at a cut path


def test_depth_images_in_a_bag_are_refused_and_the_old_map_kept(tmp_path, traversals, tiny_params, capsys):
    from vpr_ros.cli.build_map import main as build_map

    common = ["--map-dir", str(tmp_path / "map"), "--params-file", tiny_params, "--pose-topic", "/odom",
              "--image-topic", "/camera/image_raw"]
    assert build_map([str(write_bag(tmp_path / "good", traversals[0])), *common]) == 0
    before = VprMap.load(tmp_path / "map").manifest.generation
    capsys.readouterr()
    assert build_map([str(write_bag(tmp_path / "depth", traversals[0], encoding="32FC1")), *common]) == 2
    err = capsys.readouterr().err
    assert "'32FC1' is a depth image" in err and "depth" in err
    assert VprMap.load(tmp_path / "map").manifest.generation == before


def test_a_build_without_keyframes_does_not_replace_a_good_map(tmp_path, traversals, tiny_params, capsys):
    from vpr_ros.cli.build_map import main as build_map

    first = traversals[0]
    bag = write_bag(tmp_path / "run", first, odom=False)
    out = ["--map-dir", str(tmp_path / "map"), "--params-file", tiny_params, "--image-topic", "/camera/image_raw"]
    good = tmp_path / "good.tum"
    good.write_text("".join(f"{t:.6f} {p[0]} 0 0 0 0 0 1\n" for t, p in zip(first.stamps, first.poses)))
    assert build_map([str(bag), *out, "--trajectory", str(good)]) == 0
    vmap = VprMap.load(tmp_path / "map")
    far = tmp_path / "elsewhere.tum"  # a trajectory of another day: no image gets a pose
    far.write_text("".join(f"{t + 9999:.6f} {p[0]} 0 0 0 0 0 1\n" for t, p in zip(first.stamps, first.poses)))
    capsys.readouterr()
    assert build_map([str(bag), *out, "--trajectory", str(far)]) == 2
    err = capsys.readouterr().err
    assert "no keyframe was built from 24 images" in err and "unchanged" in err
    after = VprMap.load(tmp_path / "map")
    assert len(after) == len(vmap) and after.manifest.generation == vmap.manifest.generation


def _eval(args):
    from vpr_ros.cli.eval import main

    return main(args)


@pytest.mark.parametrize("size", ["0", "-4", "x"])
def test_eval_refuses_a_bad_batch_size_before_any_work(tmp_path, size, capsys):
    data = make_gmberton(tmp_path / "city", n=3)
    with pytest.raises(SystemExit) as e:
        _eval([str(data), "--batch-size", size, "--cache-dir", str(tmp_path / "cache"), *TINY_ARGS])
    assert e.value.code == 2 and "--batch-size" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()  # no empty cache left behind to break later runs


def test_eval_cache_chunks_are_validated_and_recomputed(tmp_path, tiny_params, capsys):
    data = make_gmberton(tmp_path / "city", n=4)
    args = [str(data), "--cache-dir", str(tmp_path / "cache"), "--output", str(tmp_path / "out"),
            "--params-file", tiny_params, *TINY_ARGS]
    assert _eval(args) == 0
    first = json.loads((tmp_path / "out" / "results.json").read_text())
    chunk = next((tmp_path / "cache").glob("*/database-*.npy"))
    np.save(chunk, np.zeros((1, 3), np.float32))  # wrong shape (an old or foreign cache)
    capsys.readouterr()
    assert _eval(args) == 0
    captured = capsys.readouterr()
    assert "invalid" in captured.err and "recomputing" in captured.err
    assert json.loads((tmp_path / "out" / "results.json").read_text())["recall"] == first["recall"]
    assert np.load(chunk).shape[0] == 4  # repaired


def _strict_json(text):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def test_results_json_is_valid_json_when_descriptors_come_from_the_cache(tmp_path, tiny_params, capsys):
    data = make_gmberton(tmp_path / "city", n=4)
    args = [str(data), "--cache-dir", str(tmp_path / "cache"), "--output", str(tmp_path / "out"),
            "--params-file", tiny_params, *TINY_ARGS]
    assert _eval(args) == 0 and _eval(args) == 0
    res = _strict_json((tmp_path / "out" / "results.json").read_text())
    assert res["descriptors_from_cache"] is True and res["timings"]["describe_ms_per_image"] is None


def test_eval_output_naming_a_file_fails_before_the_work(tmp_path, tiny_params, capsys):
    data = make_gmberton(tmp_path / "city", n=3)
    (tmp_path / "taken").write_text("a file")
    assert _eval([str(data), "--output", str(tmp_path / "taken"), "--cache-dir", str(tmp_path / "cache"),
                  "--params-file", tiny_params, *TINY_ARGS]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err and not (tmp_path / "cache").exists()


@pytest.mark.torch
def test_nan_weights_are_an_error_not_a_recall_of_zero(tmp_path, capsys):
    from safetensors.torch import save_file

    from vpr_ros.config import ModelConfig
    from vpr_ros.model.factory import create

    model = create(ModelConfig(**TINY_MODEL))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["drm.proj.weight"][:] = float("nan")
    save_file(state, str(tmp_path / "nan.safetensors"))
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        **{f"model.{k}": v for k, v in TINY_MODEL.items()}, "model.weights": str(tmp_path / "nan.safetensors")}}}))
    data = make_gmberton(tmp_path / "city", n=3)
    assert _eval([str(data), "--params-file", str(params), "--output", str(tmp_path / "out"),  # torch: no export
                  "--cache-dir", str(tmp_path / "cache"), *TINY_ARGS, "--backend", "torch"]) == 2
    err = capsys.readouterr().err
    assert "NaN or infinite values in (1): drm.proj.weight" in err and "nan.safetensors" in err
    assert not (tmp_path / "out" / "results.json").exists() and not list((tmp_path / "cache").glob("*/*.npy"))


@pytest.mark.torch
def test_missing_files_are_named_without_a_traceback(tmp_path, capsys):
    from vpr_ros.cli.build_engine import main as build_engine
    from vpr_ros.cli.export import main as export

    data = make_gmberton(tmp_path / "city", n=2)
    assert _eval([str(data), "--weights", str(tmp_path / "nope.pth"), *TINY_ARGS]) == 2
    err = capsys.readouterr().err
    assert "nope.pth: file not found" in err and "Traceback" not in err
    assert build_engine([str(tmp_path / "nonexistent.onnx")]) == 2
    assert "nonexistent.onnx: ONNX file not found" in capsys.readouterr().err  # not "TensorRT is missing"
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07junk")
    assert build_engine([str(tmp_path / "junk.onnx")]) == 2
    assert "not a readable ONNX file" in capsys.readouterr().err
    assert export(["--output", str(tmp_path / "t.onnx"), "--model-config",
                   str(__import__("conftest").REPO / "models" / "cricavpr_teacher.yaml")]) == 2
    assert "batch-dependent" in capsys.readouterr().err and not (tmp_path / "t.onnx").exists()


def test_ground_truth_tables_are_validated(tmp_path):
    from vpr_ros.datasets import read_vpr_bench
    from vpr_ros.errors import DatasetError

    root = tmp_path / "bench"
    for sub in ("ref", "query"):
        for i in range(4):
            write_img(root / sub / f"{i:03d}.jpg", i)
    gt = root / "ground_truth.csv"
    gt.write_text("0,0 1\n1,1 2\n2,2\n3,3\n")  # no header: row 1 is data, not a header to drop
    pair = read_vpr_bench(root)
    assert pair.positives[0] == {0, 1} and any("no header" in n for n in pair.notes)
    gt.write_text("query_index,matching_ref_indices\n0,0\n1,1\n0,2\n")
    with pytest.raises(DatasetError, match="rows 2 and 4 both give query 0"):
        read_vpr_bench(root)
    gt.write_text("query_index,matching_ref_indices\n0,0\n2,2\n")
    pair = read_vpr_bench(root)
    assert any("2 of 4 queries have no row (first: 1, 3)" in n for n in pair.notes)


def test_sequences_of_different_lengths_are_refused(tmp_path):
    from vpr_ros.datasets import read_eval_dataset
    from vpr_ros.errors import DatasetError

    for i in range(5):
        write_img(tmp_path / "seq" / "ref" / f"{i:04d}.jpg", i)
    for i in range(3):
        write_img(tmp_path / "seq" / "query" / f"{i:04d}.jpg", i)
    with pytest.raises(DatasetError, match="ref/ has 5 images and query/ has 3"):
        read_eval_dataset(tmp_path / "seq", layout="sequence")


def test_a_truncated_image_is_found_before_the_network_runs(tmp_path, tiny_params, capsys):
    data = make_gmberton(tmp_path / "city", n=5)
    last = sorted((data / "database").iterdir())[-1]
    last.write_bytes(last.read_bytes()[:120])  # truncated JPEG at the very end of the database
    assert _eval([str(data), "--cache-dir", str(tmp_path / "cache"), "--output", str(tmp_path / "out"),
                  "--params-file", tiny_params, *TINY_ARGS]) == 2
    err = capsys.readouterr().err
    assert last.name in err and "truncated JPEG" in err
    assert not (tmp_path / "cache").exists()  # nothing was described: the check came first


@pytest.mark.ros
def test_bad_poses_are_refused_where_they_enter_and_the_map_builder_keeps_building(rclpy_context, tmp_path,
                                                                                  traversals):
    """Trial cases: a NaN quaternion in Odometry (ZeroDivisionError in slerp, the node died), an
    orientation (0,0,0,0) or of norm 5 (stored as is), a NaN first NavSatFix (poisoned the GPS
    origin: NaN poses ever after), and a NO_FIX fix followed by an image without a pose (two
    warnings of different throttle periods from one call site: rclpy raised ValueError)."""
    from nav_msgs.msg import Odometry
    from sensor_msgs.msg import NavSatFix, NavSatStatus

    from test_nodes import feeding_map_builder, odometry, until
    from vpr_ros.ros.conversions import rgb_to_image, sec_to_stamp

    first = traversals[0]
    with feeding_map_builder(tmp_path / "odom_map", "bad_odom_feeder", Odometry, "odom", max_pose_wait=0.5,
                             **{"keyframes.min_distance": 0.5}) as (node, _, pub_img, pub_odom):
        for t, q in ((10.0, (float("nan"), 0.0, 0.0, 1.0)), (11.0, (0.0, 0.0, 0.0, 0.0)), (12.0, (0.0, 0.0, 0.0, 5.0)),
                     (2e9, (0.0, 0.0, 0.0, 1.0))):  # the last one: the trial's clock, years ahead
            od = odometry(t, (0.0, 0.0, 0.0, *q))
            pub_odom.publish(od)
        assert until(lambda: node.bad_poses == 4)
        assert "ahead of the node's clock" in node.last_error  # refused: it would stay the newest pose for good
        for k in range(3):  # good poses afterwards: every image becomes a keyframe
            pub_odom.publish(odometry(20.0 + k, first.poses[k]))
            pub_img.publish(rgb_to_image(first.images[k], 20.0 + k))
        assert until(lambda: node.keyframes == 3)
    assert all(abs(sum(v * v for v in k.pose[3:]) - 1.0) < 1e-6 for k in VprMap.load(tmp_path / "odom_map").keyframes)

    with feeding_map_builder(tmp_path / "gps_map", "bad_gps_feeder", NavSatFix, "fix", pose_source="navsatfix",
                             pose_topic="fix", max_pose_wait=0.2, **{"keyframes.min_distance": 0.5}) as (
            node, _, pub_img, pub_fix):
        nofix = NavSatFix(latitude=48.0, longitude=11.0, altitude=500.0)
        nofix.status.status = NavSatStatus.STATUS_NO_FIX
        nofix.header.stamp = sec_to_stamp(5.0)
        pub_fix.publish(nofix)
        pub_img.publish(rgb_to_image(first.images[0], 5.5))  # no pose for it: a warning of another throttle
        assert until(lambda: node.skipped_no_pose == 1)
        nan = NavSatFix(latitude=float("nan"), longitude=11.0, altitude=500.0)
        nan.status.status = NavSatStatus.STATUS_FIX
        nan.header.stamp = sec_to_stamp(6.0)
        pub_fix.publish(nan)
        assert until(lambda: node.bad_poses == 1)
        for k in range(3):
            fix = NavSatFix(latitude=48.0 + k / 111_199.0, longitude=11.0, altitude=500.0)  # ~1 m (WGS84 meridian)
            fix.status.status = NavSatStatus.STATUS_FIX
            fix.header.stamp = sec_to_stamp(10.0 + k)
            pub_fix.publish(fix)
            pub_img.publish(rgb_to_image(first.images[k], 10.0 + k))
        assert until(lambda: node.keyframes == 3)
    norths = [round(k.pose[1], 2) for k in VprMap.load(tmp_path / "gps_map").keyframes]
    assert norths == [0.0, 1.0, 2.0]  # the origin is the first good fix, not the NaN one

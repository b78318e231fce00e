"""The second trial battery's bad inputs outside the nodes (hard to break, round 2): each gives the
package's own error naming the file / key / row (commands: exit 2, no traceback), is validated
where it enters, and nothing good is replaced. One test per reproduced case."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from vpr_ros.errors import CheckpointError, ConfigError, DatasetError, EngineBuildError, ImageError, MapError

from conftest import TINY_MODEL
from test_evaluation import make_gmberton, write_img


def _traceback_free(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# --- files that are not regular files ------------------------------------------------------
def test_a_fifo_or_a_link_loop_named_like_an_image_is_refused_before_anything_opens_it(tmp_path):
    from vpr_ros.datasets import list_images
    from vpr_ros.training.gsv_cities import read_image_folders

    folder = tmp_path / "images"
    folder.mkdir()
    write_img(folder / "a.jpg", 1)
    os.mkfifo(folder / "b.jpg")  # opening it for reading would block forever
    with pytest.raises(DatasetError, match=r"b.jpg: image is a FIFO \(named pipe\), not a regular file"):
        list_images(folder)
    with pytest.raises(DatasetError, match="b.jpg: image is a FIFO"):
        read_image_folders([folder])
    (folder / "b.jpg").unlink()
    (folder / "c.png").symlink_to(folder / "c.png")
    with pytest.raises(DatasetError, match="c.png: image is a symbolic link loop"):
        list_images(folder)


def test_eval_on_a_dataset_holding_a_fifo_exits_2_without_hanging(tmp_path, capsys):
    from vpr_ros.cli.eval import main

    data = make_gmberton(tmp_path / "city", n=3)
    os.mkfifo(data / "queries" / "@0@0@.jpg")
    assert main([str(data), "--backbone", TINY_MODEL["backbone"], "--random-weights", "--output", str(tmp_path / "out"),
                 "--cache-dir", ""]) == 2
    assert "image is a FIFO" in _traceback_free(capsys)


# --- images whose header alone says they are too large -------------------------------------
@pytest.mark.parametrize("fmt", [".png", ".bmp"])
def test_an_image_bomb_is_refused_from_its_header_before_decoding(fmt):
    import cv2

    from vpr_ros.images import MAX_PIXELS, compressed_to_rgb, encoded_size

    ok, small = cv2.imencode(fmt, np.zeros((5, 7, 3), np.uint8))
    assert encoded_size(small.tobytes()) == (5, 7)
    raw = bytearray(small.tobytes())
    if fmt == ".png":  # IHDR claims 9000 x 9000 (81 MP); a real bomb compresses that into kilobytes
        raw[16:24] = (9000).to_bytes(4, "big") * 2
    else:
        raw[18:26] = (9000).to_bytes(4, "little") * 2
    assert 9000 * 9000 > MAX_PIXELS
    with pytest.raises(ImageError, match="header says 9000x9000.*refused before decoding"):
        compressed_to_rgb(fmt[1:], bytes(raw))


def test_local_features_of_a_huge_frame_are_found_on_a_bounded_image_in_camera_pixels():
    """SIFT runs on the image shrunk to max_side; keypoints come back in the camera's pixels,
    where the same structure (the image shrunk beforehand) puts them."""
    import cv2

    from vpr_ros.verification.features import extract_classical

    rng = np.random.default_rng(0)
    small = cv2.resize(rng.integers(0, 256, (60, 80), dtype=np.uint8), (800, 600), interpolation=cv2.INTER_CUBIC)
    big = cv2.resize(small, (4000, 3000), interpolation=cv2.INTER_CUBIC)
    f_big = extract_classical(np.repeat(big[:, :, None], 3, 2), "sift", 300, max_side=800)
    f_small = extract_classical(np.repeat(small[:, :, None], 3, 2), "sift", 300, max_side=800)
    assert f_big.image_size == (4000, 3000) and len(f_big) > 100
    assert f_big.keypoints[:, 0].max() < 4000 and f_big.keypoints[:, 1].max() < 3000
    # the same keypoints, scaled by 5 (up to area vs cubic resampling: a few px at most)
    d = np.linalg.norm(f_big.keypoints[:, None, :] / 5.0 - f_small.keypoints[None, :, :], axis=2).min(1)
    assert np.median(d) < 1.0


# --- weights, PCA, graphs --------------------------------------------------------------------
@pytest.mark.torch
@pytest.mark.parametrize("dtype", ["int64", "bool"])
def test_weights_of_a_non_float_dtype_are_refused_naming_the_key(tmp_path, dtype):
    import torch
    from safetensors.torch import save_file

    from vpr_ros.config import ModelConfig
    from vpr_ros.model.factory import build_model, create

    cfg = ModelConfig(**TINY_MODEL)
    state = {k: v.clone() for k, v in create(cfg).state_dict().items()}
    state["drm.proj.weight"] = state["drm.proj.weight"].to(getattr(torch, dtype))
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match=f"dtype mismatches \\(1\\): drm.proj.weight: file {dtype} vs model float32"):
        build_model(ModelConfig(**{**TINY_MODEL, "weights": str(tmp_path / "w.safetensors")}))


@pytest.mark.torch
def test_export_with_a_nan_pca_fails_and_leaves_the_good_graph(tmp_path, capsys):
    from vpr_ros.cli.export import main

    out = tmp_path / "model.onnx"
    out.write_bytes(b"the good graph of yesterday")
    np.savez(tmp_path / "nan.npz", mean=np.zeros(64, np.float32), components=np.full((64, 8), np.nan, np.float32),
             explained=np.zeros(8, np.float32))
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {f"model.{k}": v for k, v in TINY_MODEL.items()}}}))
    assert main(["--output", str(out), "--params-file", str(params), "--pca", str(tmp_path / "nan.npz")]) == 2
    assert "nan.npz: PCA 'components' contains NaN" in _traceback_free(capsys)
    assert out.read_bytes() == b"the good graph of yesterday" and sorted(p.name for p in tmp_path.iterdir()) == \
        ["model.onnx", "nan.npz", "p.yaml"]


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    from vpr_ros.files import replaced_atomically

    target = tmp_path / "x.bin"
    target.write_bytes(b"good")
    with pytest.raises(RuntimeError):
        with replaced_atomically(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("the check after writing failed")
    assert target.read_bytes() == b"good" and [p.name for p in tmp_path.iterdir()] == ["x.bin"]


@pytest.mark.torch
def test_eval_refuses_a_pca_fitted_for_another_model_before_describing(tmp_path, capsys):
    from vpr_ros.cli.eval import main
    from vpr_ros.pca import Pca

    from vpr_ros.config import ModelConfig
    from vpr_ros.runtime.torch_backend import TorchBackend

    data = make_gmberton(tmp_path / "city", n=3)
    with TorchBackend(ModelConfig(backbone=TINY_MODEL["backbone"])) as b:
        dim = b.descriptor_dim  # the right size: only the model differs
    rng = np.random.default_rng(0)
    Pca.fit(rng.normal(size=(40, dim)).astype(np.float32), 8, model_id="d2vpr-vit_test-56-000000000000").save(
        tmp_path / "other.npz")
    assert main([str(data), "--backbone", TINY_MODEL["backbone"], "--random-weights", "--backend", "torch", "--pca",
                 str(tmp_path / "other.npz"), "--output", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c")]) == 2
    err = _traceback_free(capsys)
    assert "other.npz: PCA was fitted on the descriptors of d2vpr-vit_test-56-000000000000" in err
    assert not (tmp_path / "c").exists() and not (tmp_path / "out").exists()  # refused before any work


def _edited_graph(tmp_path, edit):
    import onnx

    from vpr_ros.config import ModelConfig
    from vpr_ros.runtime.factory import onnx_for

    proto = onnx.load(str(onnx_for(ModelConfig(**TINY_MODEL))))  # the run's shared export
    edit(proto)
    path = tmp_path / "edited.onnx"
    onnx.save(proto, str(path))
    return path


def _set_meta(proto, key, value):
    next(p for p in proto.metadata_props if p.key == key).value = value


GRAPH_EDITS = [
    ("input_size not a number", lambda p: _set_meta(p, "vpr_ros.input_size", "abc"),
     "metadata vpr_ros.input_size is 'abc', not an integer"),
    ("input_size of another graph", lambda p: _set_meta(p, "vpr_ros.input_size", "224"),
     r"input 'images' has shape \['batch', 3, 56, 56\], expected \[batch, 3, 224, 224\]"),
    ("descriptor size of another graph", lambda p: _set_meta(p, "vpr_ros.descriptor_dim", "512"),
     "output 'descriptors' is tensor\\(float\\) \\['batch', 1792\\], expected tensor\\(float\\) \\[batch, 512\\]"),
    ("renamed input", lambda p: (setattr(p.graph.input[0], "name", "pixels"),
                                 [n.input.__setitem__(i, "pixels") for n in p.graph.node
                                  for i, x in enumerate(n.input) if x == "images"]),
     r"graph inputs are \['pixels'\], expected \['images'\]"),
    ("no metadata", lambda p: p.ClearField("metadata_props"), "not a vpr_ros export"),
]


@pytest.mark.parametrize("case, edit, message", GRAPH_EDITS, ids=[c[0] for c in GRAPH_EDITS])
def test_a_graph_contradicting_its_metadata_is_refused_when_it_is_opened(tmp_path, case, edit, message):
    from vpr_ros.runtime.onnxruntime_backend import OnnxRuntimeBackend

    with pytest.raises(EngineBuildError, match=message):
        OnnxRuntimeBackend(_edited_graph(tmp_path, edit))


def test_quantize_on_a_foreign_graph_names_what_is_missing(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    from vpr_ros.cli.quantize import main

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "foreign",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(g), str(tmp_path / "foreign.onnx"))
    assert main([str(tmp_path / "foreign.onnx"), "--calib-images", str(tmp_path), "--output",
                 str(tmp_path / "q.onnx")]) == 2
    assert "foreign.onnx: not a vpr_ros export (metadata lacks vpr_ros.model_id" in _traceback_free(capsys)


@pytest.mark.torch
def test_a_graph_carrying_a_maps_metadata_cannot_extend_it(tmp_path):
    """Identity is more than metadata: the map keeps the network's descriptor of a fixed probe
    input; another network wearing the same metadata is refused. Probe cosines measured here:
    one network through PyTorch and ONNX Runtime ~1.0; two networks with other weights far below
    PROBE_MIN_COSINE."""
    from vpr_ros.config import ModelConfig
    from vpr_ros.mapping.map_store import PROBE_MIN_COSINE, ModelIdentity, VprMap, probe_cosine
    from vpr_ros.runtime.factory import open_backend
    from vpr_ros.runtime.torch_backend import TorchBackend

    cfg = ModelConfig(**TINY_MODEL)
    with TorchBackend(cfg) as a, open_backend("onnxruntime", cfg) as a_onnx, \
            TorchBackend(ModelConfig(**{**TINY_MODEL, "seed": 4})) as b:
        ida, idb = ModelIdentity.of_backend(a), ModelIdentity.of_backend(b)
        same = probe_cosine(ida.probe, ModelIdentity.of_backend(a_onnx).probe)
        other = probe_cosine(ida.probe, idb.probe)
        assert same > 0.999 and other < PROBE_MIN_COSINE - 0.2, (same, other)
        VprMap.create(ida).save(tmp_path / "map")
        forged = ModelIdentity(ida.model_id, ida.weights_sha256, ida.input_size, ida.descriptor_dim, probe=idb.probe)
        assert forged == ida  # the metadata agree
        with pytest.raises(MapError, match="probe descriptor: cosine .* although their metadata agree"):
            VprMap.open_writer(tmp_path / "map", forged)
        VprMap.open_writer(tmp_path / "map", ModelIdentity.of_backend(a_onnx)).close()  # the real network: fine


# --- tables and configs ----------------------------------------------------------------------
def test_a_poses_table_listing_an_image_twice_is_refused(tmp_path):
    from vpr_ros.datasets import read_poses_csv

    (tmp_path / "poses.csv").write_text("image,x,y\na.jpg,0,0\nb.jpg,1,0\na.jpg,5,5\n")
    with pytest.raises(DatasetError, match="row 4 gives a second pose for image 'a.jpg' \\(first at row 2\\)"):
        read_poses_csv(tmp_path / "poses.csv")


@pytest.mark.parametrize("line, message", [
    ("2.0 1 0 0 0 0 0 5", "line 3 has orientation quaternion of norm 5.0000"),
    ("2.0 1 0 0 0 0 0 0", "line 3 has orientation quaternion of norm 0.0000"),
    ("1.0 1 0 0 0 0 0 1", "line 3 has stamp 1.0, not after the previous one"),
    ("2.0 nan 0 0 0 0 0 1", "line 3 has non-finite values"),
])
def test_trajectory_files_are_validated_where_they_enter(tmp_path, line, message):
    from vpr_ros.mapping.bag_source import read_trajectory

    (tmp_path / "t.txt").write_text(f"0.0 0 0 0 0 0 0 1\n1.0 1 0 0 0 0 0 1\n{line}\n")
    with pytest.raises(DatasetError, match=message):
        read_trajectory(tmp_path / "t.txt")


@pytest.mark.parametrize("text, message", [
    (b"image,x,y\ncaf\xe9.jpg,0,0\n", "poses file is not UTF-8 text \\(line 2, byte 0xe9\\)"),
])
def test_text_tables_in_another_encoding_are_refused_naming_the_line(tmp_path, text, message):
    from vpr_ros.datasets import read_poses_csv

    (tmp_path / "poses.csv").write_bytes(text)
    with pytest.raises(DatasetError, match=message):
        read_poses_csv(tmp_path / "poses.csv")


@pytest.mark.parametrize("field, value, message", [
    ("lat", "inf", "column 'lat' is not a finite number: 'inf'"),
    ("place_id", "inf", "column 'place_id' is not a number: 'inf'"),
    ("city_id", b"M\xfcnchen", "GSV-Cities table is not UTF-8 text"),
])
def test_gsv_cities_tables_with_inf_or_latin1_values_are_refused(tmp_path, field, value, message):
    from vpr_ros.demo.synthetic import place_views, write_gsv_cities
    from vpr_ros.training.gsv_cities import read_gsv_cities

    write_gsv_cities(tmp_path, place_views(2, 4, 32, seed=1), "Alpha")
    table = tmp_path / "Dataframes" / "Alpha.csv"
    lines = table.read_bytes().split(b"\n")
    header = lines[0].decode().split(",")
    cells = lines[1].split(b",")
    cells[header.index(field)] = value if isinstance(value, bytes) else value.encode()
    lines[1] = b",".join(cells)
    table.write_bytes(b"\n".join(lines))
    with pytest.raises(DatasetError, match=message):
        read_gsv_cities(tmp_path, check_images=False)


def test_random_bytes_as_a_config_file_are_a_config_error(tmp_path):
    from vpr_ros.config import read_yaml

    (tmp_path / "train.yaml").write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 400, dtype=np.uint8)))
    with pytest.raises(ConfigError, match="train.yaml: YAML file is not UTF-8 text"):
        read_yaml(tmp_path / "train.yaml")


def test_launch_with_a_missing_params_file_exits_2_naming_it(tmp_path, capsys):
    from vpr_ros.cli.launch import main

    assert main(["localize", "--params-file", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: YAML file not found" in _traceback_free(capsys)


# --- damaged bags ----------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated storage file", "garbage storage file", "broken metadata.yaml"])
def test_damaged_bags_are_a_dataset_error_naming_the_bag(tmp_path, traversals, damage):
    from vpr_ros.mapping.bag_source import bag_frames, count_messages

    from test_bags import write_bag

    bag = write_bag(tmp_path / "bag", traversals[0])
    storage = next(bag.glob("*.db3"))
    if damage == "truncated storage file":
        storage.write_bytes(storage.read_bytes()[: storage.stat().st_size // 3])
    elif damage == "garbage storage file":
        storage.write_bytes(bytes(np.random.default_rng(1).integers(0, 256, 20000, dtype=np.uint8)))
    else:
        (bag / "metadata.yaml").write_text("rosbag2_bagfile_information: {version: 9, storage_identifier: [")
    with pytest.raises(DatasetError, match="bag: cannot read the bag"):
        count_messages(bag, "/camera/image_raw")
    with pytest.raises(DatasetError, match="bag: cannot read the bag"):
        list(bag_frames(bag, "/camera/image_raw", pose_topic="/odom"))


# --- output folders that cannot be written; a refused training start -------------------------
@pytest.mark.torch
def test_a_cache_folder_that_cannot_be_created_is_named(tmp_path, capsys):
    from vpr_ros.cli.eval import main

    data = make_gmberton(tmp_path / "city", n=3)
    (tmp_path / "a_file").write_text("x")
    assert main([str(data), "--backbone", TINY_MODEL["backbone"], "--random-weights", "--backend", "torch", "--output",
                 str(tmp_path / "out"), "--cache-dir", str(tmp_path / "a_file" / "cache")]) == 2
    assert "a_file/cache" in _traceback_free(capsys)


@pytest.mark.torch
def test_a_refused_training_start_leaves_no_folder_that_blocks_the_retry(tmp_path, capsys):
    from vpr_ros.cli.distill import main

    run = tmp_path / "run"
    args = ["--run-dir", str(run), "--no-progress", "--set", f"data.image_folders=['{tmp_path / 'missing'}']",
            "--set", "data.gsv_root=''"]
    for _ in range(2):  # the second attempt fails for the same reason, not "run folder already exists"
        assert main(args) == 2
        err = _traceback_free(capsys)
        assert "missing: image folder not found" in err and "already exists" not in err
        assert not run.exists()


def test_no_command_prints_a_traceback_for_a_read_only_style_failure(tmp_path):
    """An OS error (here: an output path below a regular file) is one line from every command."""
    (tmp_path / "f").write_text("x")
    r = subprocess.run([sys.executable, "-m", "vpr_ros.cli.map_info", str(tmp_path / "f" / "map")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "f/map" in r.stderr, r.stderr


@pytest.mark.torch
def test_a_pickled_object_file_is_refused_without_torchs_advice_to_unpickle_it(tmp_path):
    import torch

    from vpr_ros.model.checkpoints import read_state_dict

    torch.save({"state_dict": {"a": torch.zeros(2)}, "optimizer": _Opaque()}, tmp_path / "w.pth")
    with pytest.raises(CheckpointError) as err:
        read_state_dict(tmp_path / "w.pth")
    assert "never unpickles" in str(err.value) and "weights_only=False" not in str(err.value)


class _Opaque:
    """A class torch.load(weights_only=True) refuses (a pickled Python object)."""

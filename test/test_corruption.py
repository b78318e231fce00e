"""Property tests: random corruptions of valid files never produce anything but a domain error.

A failing disk, a careless copy or a hostile file must never crash a reader with a stray
``TypeError``/``UnicodeDecodeError``/``sqlite3`` exception: the map reader, the image decoders
and the dataset readers either return a valid result or raise the package's own error naming
the problem. Examples are derandomized (the same in every run) and have no time limit.
"""
from __future__ import annotations

import shutil
import sqlite3
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vpr_ros.errors import DatasetError, ImageError, MapError
from vpr_ros.geometry import planar_pose
from vpr_ros.images import CAMERA_ENCODINGS, DEPTH_ENCODINGS, compressed_to_rgb, raw_to_rgb
from vpr_ros.mapping.map_store import MANIFEST, Keyframe, ModelIdentity, VprMap

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
MODEL = ModelIdentity("fuzz-model", "cd" * 32, 56, 8)


@pytest.fixture(scope="module")
def good_map():
    root = Path(tempfile.mkdtemp(prefix="vpr_fuzz_map_"))
    m = VprMap.create(MODEL)
    x = np.random.default_rng(0).normal(size=(12, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    from vpr_ros.verification.features import CameraIntrinsics, extract_classical

    rgb = np.random.default_rng(2).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    feats = [extract_classical(rgb, "orb", 100) for _ in range(12)]
    for f in feats[::2]:
        f.intrinsics = CameraIntrinsics(100.0, 100.0, 64.0, 48.0, 128, 96)
    m.add(x, [Keyframe(float(i), planar_pose(i, 0), gps=(48.0, 11.0, 500.0) if i % 2 else None) for i in range(12)],
          feats)
    m.save(root / "map")
    yield root / "map"
    shutil.rmtree(root, ignore_errors=True)


V1_MAP = Path(__file__).resolve().parent / "fixtures" / "map_v1" / "flat"  # written by vpr_ros v0.3 itself
V1_MODEL = ModelIdentity("fixture-model", "ef" * 32, 56, 8)


def _target(good_map: Path, which: str) -> tuple[Path, Path, ModelIdentity]:
    """(map copy, file in it to damage, its model): 'manifest' / 'store' of a format-2 map, or
    'v1 manifest' / 'v1 index' / 'v1 keyframes' of the format-1 fixture."""
    if which.startswith("v1 "):
        d = _copy(V1_MAP)
        f = {"v1 manifest": d / MANIFEST, "v1 index": next(d.glob("index.*")),
             "v1 keyframes": next(d.glob("keyframes.*"))}[which]
        return d, f, V1_MODEL
    d = _copy(good_map)
    return d, {"manifest": d / MANIFEST, "store": next(d.glob("map-*.sqlite"))}[which], MODEL


_CASES: list[Path] = []  # the folder of the example being run (hypothesis examples share no fixture)


def _copy(src: Path) -> Path:
    """A fresh copy of the map ``src`` for one example; the previous example's copy is removed."""
    while _CASES:
        shutil.rmtree(_CASES.pop(), ignore_errors=True)
    _CASES.append(Path(tempfile.mkdtemp(prefix="vpr_fuzz_case_")))
    dst = _CASES[-1] / "map #1 ?%"  # awkward characters on purpose
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module", autouse=True)
def _remove_the_last_case():
    yield
    while _CASES:
        shutil.rmtree(_CASES.pop(), ignore_errors=True)


def _load_or_domain_error(path: Path, model: ModelIdentity = MODEL) -> None:
    try:
        vmap = VprMap.load(path, expect=model)
    except MapError:
        return
    assert len(vmap) == len(vmap.keyframes)  # a benign corruption: the map is still consistent
    vmap.search(np.ones((1, 8), np.float32) / np.sqrt(8), 3)


@FUZZ
@given(which=st.sampled_from(["manifest", "store", "v1 manifest", "v1 index", "v1 keyframes"]),
       cut=st.floats(0.0, 1.0))
def test_truncated_map_files(good_map, which, cut):
    d, f, model = _target(good_map, which)
    data = f.read_bytes()
    f.write_bytes(data[: int(len(data) * cut)])
    _load_or_domain_error(d, model)


@FUZZ
@given(which=st.sampled_from(["manifest", "store", "v1 manifest", "v1 index", "v1 keyframes"]),
       flips=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=8))
def test_bytes_flipped_in_map_files(good_map, which, flips):
    d, f, model = _target(good_map, which)
    data = bytearray(f.read_bytes())
    for where, xor in flips:
        data[int(where * len(data))] ^= xor
    f.write_bytes(bytes(data))
    _load_or_domain_error(d, model)


@FUZZ
@given(manifest=st.one_of(st.binary(max_size=300), st.text(max_size=300),
                          st.dictionaries(st.sampled_from(["format_version", "model", "count", "generation",
                                                           "index_type", "map_frame", "extra"]),
                                          st.one_of(st.none(), st.integers(-3, 3), st.text(max_size=5),
                                                    st.lists(st.floats(allow_nan=True), max_size=4)), max_size=7)))
def test_replaced_manifests(good_map, manifest):
    import yaml

    d = _copy(good_map)
    if isinstance(manifest, dict):
        manifest = yaml.safe_dump(manifest)
    (d / MANIFEST).write_bytes(manifest if isinstance(manifest, bytes) else manifest.encode())
    with pytest.raises(MapError):
        VprMap.load(d, expect=MODEL)


@FUZZ
@given(row=st.integers(0, 11), column=st.sampled_from(["stamp", "x", "qw", "lat", "camera", "id"]),
       value=st.one_of(st.none(), st.text(max_size=4), st.just(float("nan")), st.just(float("inf")),
                       st.binary(max_size=4), st.integers(-5, 100)))
def test_bad_values_in_the_keyframe_table(good_map, row, column, value):
    d = _copy(good_map)
    con = sqlite3.connect(str(next(d.glob("map-*.sqlite"))))
    try:
        con.execute(f"UPDATE keyframes SET {column} = ? WHERE id = ?", (value, row))
        con.commit()
    except sqlite3.IntegrityError:
        return  # the table's own constraints refused it (NOT NULL columns, unique id)
    finally:
        con.close()
    _load_or_domain_error(d)


@FUZZ
@given(row=st.integers(0, 11), column=st.sampled_from(["kind", "n", "dim", "dtype", "keypoints", "descriptors",
                                                      "intrinsics", "points3d", "width"]),
       value=st.one_of(st.none(), st.text(max_size=4), st.binary(max_size=40), st.integers(-5, 5000)))
def test_bad_values_in_the_local_features_table(good_map, row, column, value):
    d = _copy(good_map)
    con = sqlite3.connect(str(next(d.glob("map-*.sqlite"))))
    try:
        con.execute(f"UPDATE local_features SET {column} = ? WHERE id = ?", (value, row))
        con.commit()
    except sqlite3.IntegrityError:
        return
    finally:
        con.close()
    try:
        vmap = VprMap.load(d, expect=MODEL)
        f = vmap.local_features(row)
    except MapError:
        return
    assert f is None or (f.keypoints.shape[0] == f.descriptors.shape[0] and f.keypoints.shape[1] == 2)


def test_a_map_in_a_directory_with_url_characters_loads_and_leaves_no_stray_file(good_map):
    d = _copy(good_map)
    assert len(VprMap.load(d, expect=MODEL)) == 12
    assert sorted(p.name for p in d.parent.iterdir()) == [d.name]  # nothing created at a cut path


@FUZZ
@given(encoding=st.sampled_from(sorted(CAMERA_ENCODINGS) + sorted(DEPTH_ENCODINGS) + ["16SC1", "8SC3", "64FC1",
                                                                                      "nv12", "", "rgb9"]),
       h=st.integers(-2, 9), w=st.integers(-2, 9), step=st.integers(-4, 80), big=st.booleans(),
       data=st.binary(max_size=400))
def test_raw_image_fields(encoding, h, w, step, big, data):
    try:
        out = raw_to_rgb(encoding, h, w, step, big, data)
    except ImageError:
        return
    assert out.dtype == np.uint8 and out.shape == (h, w, 3)


@FUZZ
@given(kind=st.sampled_from([".jpg", ".png"]), cut=st.floats(0.0, 1.0),
       flips=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(1, 255)), max_size=6),
       fmt=st.sampled_from(["jpeg", "png", "rgb8; jpeg compressed bgr8", "16UC1; compressedDepth", ""]))
def test_compressed_images(kind, cut, flips, fmt):
    img = np.random.default_rng(1).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    ok, enc = cv2.imencode(kind, img)
    data = bytearray(enc.tobytes()[: max(0, int(len(enc) * cut))])
    for where, xor in flips:
        if data:
            data[int(where * len(data))] ^= xor
    try:
        out = compressed_to_rgb(fmt, bytes(data))
    except ImageError:
        return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3


@FUZZ
@given(text=st.one_of(st.text(max_size=200), st.lists(st.lists(st.one_of(
    st.integers(-3, 8).map(str), st.text(alphabet="0123456789 -x.", max_size=6)), max_size=3), max_size=8).map(
    lambda rows: "\n".join(",".join(r) for r in rows))))
def test_ground_truth_tables(text):
    from vpr_ros.datasets import read_vpr_bench

    root = Path(tempfile.mkdtemp(prefix="vpr_fuzz_gt_"))
    for sub in ("ref", "query"):
        (root / sub).mkdir()
        for i in range(4):
            (root / sub / f"{i:03d}.jpg").write_bytes(b"not decoded by the reader")
    (root / "ground_truth.csv").write_text(text)
    try:
        pair = read_vpr_bench(root)
    except DatasetError:
        return
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert len(pair.positives) == 4 and all(p <= set(range(4)) for p in pair.positives)


@FUZZ
@given(text=st.text(max_size=300))
def test_pose_and_trajectory_files(text):
    from vpr_ros.datasets import read_poses_csv
    from vpr_ros.mapping.bag_source import read_trajectory

    root = Path(tempfile.mkdtemp(prefix="vpr_fuzz_poses_"))
    try:
        for name, reader in (("poses.csv", read_poses_csv), ("run.tum", read_trajectory)):
            (root / name).write_text(text)
            try:
                reader(root / name)
            except DatasetError:
                pass
            except MapError:
                pass
    finally:
        shutil.rmtree(root, ignore_errors=True)


@FUZZ
@given(cut=st.floats(0.0, 1.0), flips=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(1, 255)),
                                                max_size=6), as_text=st.booleans())
def test_pca_files(cut, flips, as_text):
    """A PCA file truncated, bit-flipped (any byte, headers included) or replaced by text loads as a
    valid PCA (finite, unit-norm components of matching shapes) or is a CheckpointError."""
    from vpr_ros.errors import CheckpointError
    from vpr_ros.pca import Pca

    root = Path(tempfile.mkdtemp(prefix="vpr_fuzz_pca_"))
    try:
        Pca.fit(np.random.default_rng(0).normal(size=(30, 12)).astype(np.float32), 4, model_id="m").save(root / "p.npz")
        data = bytearray((root / "p.npz").read_bytes())
        data = data[: max(0, int(len(data) * cut))] if cut < 0.98 else data
        for where, xor in flips:
            if data:
                data[int(where * len(data))] ^= xor
        (root / "p.npz").write_bytes(bytes(data) if not as_text else bytes(data).decode("latin-1").encode())
        try:
            pca = Pca.load(root / "p.npz")
        except CheckpointError:
            return
        y = pca.apply(np.ones((2, pca.in_dim), np.float32))
        assert np.isfinite(pca.components).all() and y.shape == (2, pca.out_dim)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@FUZZ
@given(head=st.sampled_from([b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"\xff\xd8\xff\xc0", b"BM", b"RIFF\x00\x00\x00\x00WEBPVP8X",
                             b"RIFF\x00\x00\x00\x00WEBPVP8L", b""]), tail=st.binary(max_size=60))
def test_image_headers(head, tail):
    """The header reader behind the size limit never fails on any bytes: a size or None."""
    from vpr_ros.images import encoded_size

    size = encoded_size(head + tail)
    assert size is None or (len(size) == 2 and all(isinstance(v, int) and v >= 0 for v in size))
    try:
        compressed_to_rgb("png", head + tail)
    except ImageError:
        pass


@FUZZ
@given(values=st.dictionaries(st.sampled_from(["model_id", "weights_sha256", "weights_source", "input_size",
                                               "descriptor_dim", "pca_id", "other"]), st.text(max_size=8), max_size=7),
       dims=st.lists(st.one_of(st.integers(-1, 300), st.text(max_size=5)), max_size=5))
def test_graph_metadata_and_shapes(values, dims):
    """Whatever a graph's metadata and input shape say, opening it checks them: the identity or an
    EngineBuildError, never a ValueError from int('abc')."""
    from vpr_ros.errors import EngineBuildError
    from vpr_ros.export.graph_io import check_graph_io, read_identity

    try:
        ident = read_identity({f"vpr_ros.{k}": v for k, v in values.items()}, "g.onnx")
        check_graph_io("g.onnx", [("images", "tensor(float)", dims)], [("descriptors", "tensor(float)", ["b", 8])], ident)
    except EngineBuildError:
        return
    size = int(ident["input_size"])
    assert size >= 14 and len(dims) == 4 and dims[1:] == [3, size, size]

"""Map directory: round trip, validation, refusal of foreign maps, saves that a kill cannot break.
(Durability, the writer lock, readers racing a writer, checksums and format-1 maps:
test_map_durability.py.)"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from vpr_ros.errors import MapError
from vpr_ros.geometry import planar_pose
from vpr_ros.mapping.map_store import Keyframe, ModelIdentity, VprMap

MODEL = ModelIdentity("test-model", "ab" * 32, 56, 8)


def unit(n, d=8, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_map(n=5):
    m = VprMap.create(MODEL, source="unit test")
    kfs = [Keyframe(stamp=float(i), pose=planar_pose(i, 2 * i, 0.1 * i), camera="cam0", frame_id="cam0_optical",
                    gps=(48.1, 11.5, 500.0) if i % 2 else None, image_ref=f"img{i}.jpg") for i in range(n)]
    ids = m.add(unit(n), kfs)
    return m, ids


def test_round_trip_preserves_everything(tmp_path):
    m, ids = make_map()
    assert ids == [0, 1, 2, 3, 4]
    m.save(tmp_path / "map")
    back = VprMap.load(tmp_path / "map", expect=MODEL)
    assert len(back) == 5 and back.model == MODEL
    assert [k.__dict__ for k in back.keyframes] == [k.__dict__ for k in m.keyframes]
    q = unit(5)
    s1, i1 = m.search(q, 3)
    s2, i2 = back.search(q, 3)
    assert np.array_equal(i1, i2) and np.allclose(s1, s2)
    assert np.array_equal(i2[:, 0], np.arange(5))  # each vector finds itself: ids are index ids
    manifest = yaml.safe_load((tmp_path / "map" / "manifest.yaml").read_text())
    assert manifest["format_version"] == 3 and manifest["store"] == f"map-{back.manifest.store_id}.sqlite"
    m2 = VprMap.read_manifest(tmp_path / "map")
    assert (m2.model, m2.count, m2.metric, m2.index_type, m2.map_frame, m2.source) == \
        (MODEL, 5, "inner_product", "flat", "map", "unit test")


def test_append_and_resave_extends_the_same_store(tmp_path):
    m, _ = make_map(3)
    m.save(tmp_path)
    back = VprMap.load(tmp_path)
    ids = back.add(unit(2, seed=5), [Keyframe(stamp=9.0 + i, pose=planar_pose(0, 0)) for i in range(2)])
    assert ids == [3, 4]
    back.save(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm")))
    assert names == ["manifest.yaml", f"map-{back.manifest.store_id}.sqlite", "writer.lock"]
    again = VprMap.load(tmp_path)
    assert len(again) == 5 and again.manifest.generation == back.manifest.generation
    assert [k.stamp for k in again.keyframes] == [0.0, 1.0, 2.0, 9.0, 10.0]


def test_refuses_map_of_another_model(tmp_path):
    m, _ = make_map()
    m.save(tmp_path)
    other = ModelIdentity("other-model", "cd" * 32, 56, 8)
    with pytest.raises(MapError) as e:
        VprMap.load(tmp_path, expect=other)
    assert "model_id: map has 'test-model', model has 'other-model'" in str(e.value)
    assert "weights_sha256" in str(e.value)


def test_corrupt_maps_give_clear_errors(tmp_path):
    m, _ = make_map()
    m.save(tmp_path)
    store = next(tmp_path.glob("map-*.sqlite"))
    good = store.read_bytes()
    store.write_bytes(b"not a database at all" * 10)
    with pytest.raises(MapError, match=r"map-.*\.sqlite: cannot open the map database"):
        VprMap.load(tmp_path)
    store.write_bytes(good[:4096 + 100])
    with pytest.raises(MapError, match=r"map-.*\.sqlite"):
        VprMap.load(tmp_path)
    store.write_bytes(good)
    mf = tmp_path / "manifest.yaml"
    d = yaml.safe_load(mf.read_text())
    mf.write_text(yaml.safe_dump({**d, "format_version": 99}))
    with pytest.raises(MapError, match="format version 99 is not supported"):
        VprMap.load(tmp_path)
    mf.write_text(yaml.safe_dump({**d, "store": "map-000000000000.sqlite"}))
    with pytest.raises(MapError, match="store named by the manifest is missing"):
        VprMap.load(tmp_path)
    mf.write_text(yaml.safe_dump({**d, "store": "../elsewhere.sqlite"}))
    with pytest.raises(MapError, match="holds format_version, store"):
        VprMap.load(tmp_path)
    mf.write_text(yaml.safe_dump(d))
    assert len(VprMap.load(tmp_path)) == 5
    with pytest.raises(MapError, match="not a map directory"):
        VprMap.load(tmp_path / "nowhere")


def test_bad_descriptors_and_poses_are_refused():
    m = VprMap.create(MODEL)
    with pytest.raises(MapError, match="do not match"):
        m.add(unit(2, d=4), [Keyframe(0.0, planar_pose(0, 0))] * 2)
    bad = unit(1)
    bad[0, 0] = np.nan
    with pytest.raises(MapError, match="NaN"):
        m.add(bad, [Keyframe(0.0, planar_pose(0, 0))])
    with pytest.raises(MapError, match="pose"):
        Keyframe(0.0, (float("nan"), 0, 0, 0, 0, 0, 1))


SAVER = r"""
import sys, numpy as np
from vpr_ros.mapping.map_store import VprMap, Keyframe, ModelIdentity
from vpr_ros.geometry import planar_pose
m = VprMap.load(sys.argv[1])
d = m.model.descriptor_dim
x = np.random.default_rng(0).normal(size=(20000, d)).astype(np.float32)
x /= np.linalg.norm(x, axis=1, keepdims=True)
m.add(x, [Keyframe(float(i), planar_pose(i, 0)) for i in range(len(x))])
print("saving", flush=True)
while True:
    m.save(sys.argv[1])
"""


@pytest.mark.slow
def test_killed_save_leaves_previous_map_loadable(tmp_path):
    """Kill a real process at random moments while it saves a large map."""
    big = ModelIdentity("test-model", "ab" * 32, 56, 256)
    m = VprMap.create(big)
    m.add(unit(3, d=256), [Keyframe(float(i), planar_pose(i, 0)) for i in range(3)])
    m.save(tmp_path)
    rng = np.random.default_rng(1)
    size, grew = 3, 0
    for _ in range(4):
        p = subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "saving"
        time.sleep(float(rng.uniform(0.0, 0.4)))  # a random kill moment, not a synchronisation:
        os.kill(p.pid, signal.SIGKILL)            # any moment must leave a loadable map
        p.wait()
        loaded = VprMap.load(tmp_path, expect=big)  # never half-written
        assert len(loaded) in (size, size + 20000), "a killed save must leave the old or the new map"
        grew += len(loaded) > size
        size = len(loaded)
        assert loaded.search(unit(1, d=256), 1)[1].shape == (1, 1)
    VprMap.open_writer(tmp_path).close()  # the next writer clears what a killed one left behind
    assert not [f for f in Path(tmp_path).iterdir() if f.name.startswith(".")]


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq"])
def test_index_types_round_trip_append_and_search(tmp_path, kind):
    from vpr_ros.config import IndexConfig

    ident = ModelIdentity("test-model", "ab" * 32, 56, 32)
    m = VprMap.create(ident)
    x = unit(3000, d=32, seed=3)
    m.add(x, [Keyframe(float(i), planar_pose(i, 0)) for i in range(len(x))])
    m.reindex(kind, IndexConfig(ivf_nlist=16, pq_m=8))
    m.save(tmp_path)
    back = VprMap.load(tmp_path, expect=ident)
    assert back.manifest.index_type == kind and len(back) == 3000
    assert back.notes == []  # a trained index is read from its snapshot, not rebuilt
    assert bool(list(tmp_path.glob("index-*.faiss"))) == (kind != "flat")
    ids = back.add(unit(2, d=32, seed=9), [Keyframe(9e3 + i, planar_pose(0, 0)) for i in range(2)])
    assert ids == [3000, 3001]  # appends get the ids the index returns
    _, found = back.search(x[:200], 1)
    assert (found[:, 0] == np.arange(200)).mean() >= (0.9 if kind == "ivfpq" else 0.97)


def test_auto_index_switches_to_hnsw_and_ivf_needs_enough_keyframes(tmp_path, tiny_backend, traversals):
    from vpr_ros.config import IndexConfig, KeyframeConfig
    from vpr_ros.mapping.builder import MapBuilder, frames_from_lists

    first = traversals[0]
    frames = frames_from_lists(first.images, first.stamps, first.poses)
    small = MapBuilder(tiny_backend, KeyframeConfig(min_distance=0.5), index=IndexConfig(auto_threshold=1000))
    small.add_many(frames)
    small.save(tmp_path / "a")
    assert VprMap.load(tmp_path / "a").manifest.index_type == "flat"
    big = MapBuilder(tiny_backend, KeyframeConfig(min_distance=0.5), index=IndexConfig(auto_threshold=10))
    big.add_many(frames)
    big.save(tmp_path / "b")
    assert VprMap.load(tmp_path / "b").manifest.index_type == "hnsw"
    ivf = MapBuilder(tiny_backend, KeyframeConfig(min_distance=0.5), index=IndexConfig(index_type="ivf", ivf_nlist=100))
    ivf.add_many(frames)
    with pytest.raises(MapError, match="needs at least 100 keyframes"):
        ivf.save(tmp_path / "c")


def test_map_info_command(tmp_path, capsys):
    from vpr_ros.cli.map_info import main

    m, _ = make_map()
    m.save(tmp_path / "map")
    assert main([str(tmp_path / "map")]) == 0
    out = capsys.readouterr().out
    assert "test-model" in out and "5 x 8" in out and "cam0 (5)" in out and "with GPS      2" in out
    assert "(format 3, generation 1," in out and "writer        none" in out and "pending       0" in out
    assert "checksums     OK: metadata, 5 keyframe rows" in out
    assert main([str(tmp_path / "nowhere")]) == 2


def test_the_store_does_not_import_the_map_it_serves():
    """The map's types (keyframe, manifest, model identity) live in store.map_types: no module of the
    store imports map_store, at module level or inside a function (no import cycle to hide)."""
    import ast
    from pathlib import Path

    import vpr_ros.mapping.store as store

    for path in sorted(Path(store.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any(n.startswith("vpr_ros.mapping.map_store") for n in names), (path.name, names)
    from vpr_ros.mapping import map_store
    from vpr_ros.mapping.store import database, map_types

    assert map_store.Keyframe is database.Keyframe is map_types.Keyframe  # one type, re-exported

"""Every file of a map directory opened as hostile (issue 33, map store): links are never followed
(a ``writer.lock`` linked to the store must not truncate it), FIFOs and devices never block a
reader, implausibly large snapshots are refused before they are hashed, a writer whose lock file
was deleted stops before its next commit, format-1 descriptors are checked before migration, and
a damaged pending row never blocks the good ones. Real files, real FIFOs, real links."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from vpr_ros.errors import DamagedPending, MapError
from vpr_ros.mapping.map_store import MANIFEST, VprMap
from vpr_ros.mapping.store.database import as_stored
from vpr_ros.mapping.store.lock import LOCK_FILE

from test_map_durability import MODEL, V1, kf, vec


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def hnsw_map(tmp_path):
    """A closed 20-keyframe HNSW map (so it has an index snapshot file)."""
    m = VprMap.create(MODEL)
    m.add(np.stack([vec(i) for i in range(20)]), [kf(i) for i in range(20)])
    m.reindex("hnsw")
    root = tmp_path / "map"
    m.save(root)
    m.close()
    return root


def _store(root: Path) -> Path:
    return next(root.glob("map-*.sqlite"))


def _snapshot(root: Path) -> Path:
    return next(root.glob("index-*.faiss"))


# ---------------------------------------------------------------------------- the writer lock
def test_a_lock_linked_to_the_store_is_refused_and_truncates_nothing(hnsw_map, tmp_path):
    store = _store(hnsw_map)
    before = _digest(store)
    (hnsw_map / LOCK_FILE).unlink(missing_ok=True)
    (hnsw_map / LOCK_FILE).symlink_to(store.name)
    with pytest.raises(MapError, match="writer lock is a symbolic link"):
        VprMap.open_writer(hnsw_map, MODEL)
    assert _digest(store) == before and len(VprMap.load(hnsw_map)) == 20

    user_file = tmp_path / "notes.txt"
    user_file.write_text("mine\n")
    (hnsw_map / LOCK_FILE).unlink()
    (hnsw_map / LOCK_FILE).symlink_to(user_file)
    with pytest.raises(MapError, match="symbolic link"):
        VprMap.open_writer(hnsw_map, MODEL)
    assert user_file.read_text() == "mine\n"


def test_a_fifo_as_lock_is_refused(hnsw_map):
    (hnsw_map / LOCK_FILE).unlink(missing_ok=True)
    os.mkfifo(hnsw_map / LOCK_FILE)
    with pytest.raises(MapError, match="FIFO"):
        VprMap.open_writer(hnsw_map, MODEL)


def test_a_writer_whose_lock_file_was_deleted_stops_before_its_next_commit(hnsw_map):
    first = VprMap.open_writer(hnsw_map, MODEL)
    first.add(vec(20)[None], [kf(20)])  # committed while the lock is its own
    (hnsw_map / LOCK_FILE).unlink()  # a user "cleans up" under a running writer
    second = VprMap.open_writer(hnsw_map, MODEL)  # the new lock file is free: a second writer starts
    with pytest.raises(MapError, match="deleted or replaced"):
        first.add(vec(21)[None], [kf(21)])
    second.add(vec(21)[None], [kf(21)])
    first.close()
    second.close()
    back = VprMap.load(hnsw_map)
    assert len(back) == 22 and np.array_equal(back.descriptors()[21], as_stored(vec(21)[None])[0])

    offline = VprMap.load(hnsw_map)  # an offline build saving at its end checks the lock too
    lock = __import__("vpr_ros.mapping.map_store", fromlist=["hold_writer_lock"]).hold_writer_lock(hnsw_map)
    (hnsw_map / LOCK_FILE).unlink()
    offline.add(vec(22)[None], [kf(22)])
    with pytest.raises(MapError, match="deleted or replaced"):
        offline.save(hnsw_map, lock=lock)
    lock.release()
    assert len(VprMap.load(hnsw_map)) == 22


# ---------------------------------------------------------------------------- readers never hang
@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "sparse", "link"])
def test_a_hostile_index_snapshot_is_rebuilt_never_waited_on(hnsw_map, tmp_path, kind, capsys):
    from vpr_ros.cli.map_info import main

    snap = _snapshot(hnsw_map)
    good = snap.read_bytes()
    snap.unlink()
    if kind == "fifo":
        os.mkfifo(snap)
    elif kind == "dev_zero":
        snap.symlink_to("/dev/zero")
    elif kind == "sparse":
        with open(snap, "wb") as fh:
            fh.truncate(20 << 30)  # 20 GiB of holes: no disk used, refused by size before hashing
    else:
        other = tmp_path / "elsewhere.faiss"
        other.write_bytes(good)  # even the right bytes: a link is not the map's own file
        snap.symlink_to(other)
    vmap = VprMap.load(hnsw_map)
    assert len(vmap) == 20 and any("rebuilt" in n and snap.name in n for n in vmap.notes), vmap.notes
    assert int(vmap.search(vec(7)[None], 1)[1][0, 0]) == 7
    assert main([str(hnsw_map)]) == 0
    w = VprMap.open_writer(hnsw_map, MODEL)  # a writer reads past it too (and snapshots anew on save)
    w.add(vec(20)[None], [kf(20)])
    w.save()
    w.close()
    assert len(VprMap.load(hnsw_map)) == 21


@pytest.mark.parametrize("name", ["store", "wal", "manifest"])
@pytest.mark.parametrize("kind", ["fifo", "link"])
def test_hostile_store_files_are_refused_by_name(hnsw_map, tmp_path, name, kind):
    from vpr_ros.cli.map_info import main

    path = {"store": _store(hnsw_map), "wal": Path(f"{_store(hnsw_map)}-wal"),
            "manifest": hnsw_map / MANIFEST}[name]
    copy = tmp_path / "copy"
    if path.exists():
        shutil.copy(path, copy)
        path.unlink()
    else:
        copy.write_bytes(b"")
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(copy)
    what = "FIFO" if kind == "fifo" else "symbolic link"
    with pytest.raises(MapError, match=what):
        VprMap.load(hnsw_map)
    with pytest.raises(MapError, match=what):
        VprMap.open_writer(hnsw_map, MODEL)
    assert main([str(hnsw_map)]) == 2  # the package's exit status for bad input


# ---------------------------------------------------------------------------- format 1
def test_a_v03_descriptor_with_a_flipped_exponent_bit_is_refused_before_migration(tmp_path):
    d = tmp_path / "flat"
    shutil.copytree(V1 / "flat", d)
    want = np.load(V1 / "descriptors.npy", allow_pickle=False)
    index_file = next(d.glob("index.*.faiss"))
    data = bytearray(index_file.read_bytes())
    at = bytes(data).find(want[11, 3].astype("<f4").tobytes())
    assert at > 0 and bytes(data).count(want[11, 3].astype("<f4").tobytes()) == 1
    data[at + 3] ^= 0x40  # the top exponent bit: ~1e38 instead of ~0.3
    index_file.write_bytes(bytes(data))
    before = {f.name: _digest(f) for f in d.iterdir()}
    with pytest.raises(MapError, match=r"keyframe 11: descriptor has norm .* \(component 3 = "):
        VprMap.load(d)
    with pytest.raises(MapError, match="keyframe 11"):
        VprMap.open_writer(d)
    after = {f.name: _digest(f) for f in d.iterdir() if f.name != LOCK_FILE}
    assert after == before  # nothing migrated, nothing written beside it but the lock
    assert yaml.safe_load((d / MANIFEST).read_text())["format_version"] == 1


# ---------------------------------------------------------------------------- pending rows
def _map_with_a_damaged_pending_row(root: Path, ident) -> list[int]:
    """Four accepted, unencoded keyframes (stamps 0..3); the second's stored row altered."""
    import sqlite3

    from vpr_ros.mapping.store.pending import PendingFrame, RawImage

    from conftest import random_image

    w = VprMap.open_writer(root, ident)
    seqs = [w.add_pending(PendingFrame(kf(i), RawImage(random_image(48, 64, i).tobytes(), "rgb8", 48, 64, 64 * 3)))
            for i in range(4)]
    w.close()
    con = sqlite3.connect(str(_store(root)))
    con.execute("UPDATE pending SET header = replace(header, '\"stamp\": 1.0', '\"stamp\": 9.0') WHERE seq = ?",
                (seqs[1],))
    con.commit()
    con.close()
    return seqs


@pytest.mark.torch
def test_a_damaged_pending_row_is_skipped_and_dropped_only_on_request(tmp_path, tiny_backend, capsys):
    from vpr_ros.cli.build_map import main
    from vpr_ros.config import KeyframeConfig
    from vpr_ros.mapping.builder import MapBuilder
    from vpr_ros.mapping.map_store import ModelIdentity

    from conftest import TINY_MODEL

    root = tmp_path / "map"
    ident = ModelIdentity.of_backend(tiny_backend)
    seqs = _map_with_a_damaged_pending_row(root, ident)

    w = VprMap.open_writer(root, ident)
    with pytest.raises(DamagedPending, match=f"pending keyframe {seqs[1]} fails its checksum"):
        w.read_pending(seqs[1])
    w.close()

    params = tmp_path / "p.yaml"  # one params file for both nodes: the localizer's keys are ignored here
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "backend": "torch", "diagnostics_period": 0.5, **{f"model.{k}": v for k, v in TINY_MODEL.items()}}}}))
    args = ["--finish", "--map-dir", str(root), "--params-file", str(params)]
    assert main(args) == 1  # the three good ones behind and before it are encoded; the damaged one is reported
    out = capsys.readouterr()
    assert f"skipped {_store(root)}: pending keyframe {seqs[1]} fails its checksum" in out.err
    assert "3 pending keyframe(s) encoded" in out.out and "--drop-damaged" in out.out
    m = VprMap.load(root)
    assert [k.stamp for k in m.keyframes] == [0.0, 2.0, 3.0] and m.pending == 1
    assert main([*args, "--drop-damaged"]) == 0
    assert "0 pending keyframe(s) encoded" in capsys.readouterr().out
    m = VprMap.load(root)
    assert len(m) == 3 and m.pending == 0

    w = VprMap.open_writer(root, ident)
    builder = MapBuilder(tiny_backend, KeyframeConfig(), base=w)
    assert builder.finish_pending() == (0, [], [])
    w.close()


def test_the_map_builder_node_skips_a_damaged_pending_row_and_says_what_to_do(rclpy_context, tmp_path, tiny_backend):
    from vpr_ros.mapping.map_store import ModelIdentity
    from vpr_ros.ros.map_builder_node import MapBuilderNode

    from test_nodes import Spinning, overrides, until

    root = tmp_path / "map"
    seqs = _map_with_a_damaged_pending_row(root, ModelIdentity.of_backend(tiny_backend))
    node = MapBuilderNode(backend=tiny_backend, parameter_overrides=overrides(map_dir=str(root), autosave_period=0.0))
    s = Spinning(node)
    try:
        assert until(lambda: node.keyframes == 3 and node.damaged_pending == 1)
        assert f"pending keyframe {seqs[1]} skipped" in node.last_error and "--drop-damaged" in node.last_error
        assert "encoded at the next start" not in node.last_error and node.left_pending == 0
    finally:
        s.stop()
    m = VprMap.load(root)
    assert [k.stamp for k in m.keyframes] == [0.0, 2.0, 3.0] and m.pending == 1

"""The map store as a storage engine: durable on commit, one writer (a real OS lock), readers that
always see one consistent generation, checksums over every stored byte that carries data, the
package's own errors, nothing readable replaced, and format-1 maps written by v0.3 itself.

Real processes are killed with SIGKILL; real files are damaged bit by bit. The node-level
guarantees (signals to a map builder with a full queue) are in test_ros_behaviour.py."""
from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from vpr_ros.errors import MapError
from vpr_ros.geometry import planar_pose
from vpr_ros.mapping.map_store import Keyframe, ModelIdentity, VprMap, writer_holder
from vpr_ros.mapping.store.database import as_stored
from vpr_ros.mapping.store.pending import PendingFrame, RawImage

REPO = Path(__file__).resolve().parent.parent
V1 = REPO / "test" / "fixtures" / "map_v1"
V2 = REPO / "test" / "fixtures" / "map_v2"
MODEL = ModelIdentity("store-model", "ab" * 32, 56, 8)


def vec(i: int, d: int = 8) -> np.ndarray:
    """The descriptor of keyframe i in these tests (a pure function of i: a reader can check it)."""
    x = np.random.default_rng(1000 + i).normal(size=d).astype(np.float32)
    return x / np.linalg.norm(x)


_EXPECTED: list[np.ndarray] = []


def expected(n: int) -> np.ndarray:
    """vec(0..n-1) [n, 8], computed once."""
    while len(_EXPECTED) < n:
        _EXPECTED.append(vec(len(_EXPECTED)))
    return np.stack(_EXPECTED[:n]) if n else np.zeros((0, 8), np.float32)


def kf(i: int) -> Keyframe:
    return Keyframe(stamp=float(i), pose=planar_pose(0.5 * i, 0.0, 0.01 * i), camera="cam0")


def spawn(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=REPO)


def check_consistent(vmap: VprMap) -> None:
    """One generation: index, keyframe rows and count agree, and every vector is its keyframe's."""
    n = len(vmap.keyframes)
    assert len(vmap) == n == vmap.manifest.count
    assert [k.id for k in vmap.keyframes] == list(range(n)) and [k.stamp for k in vmap.keyframes] == list(map(float, range(n)))
    if n:
        assert np.array_equal(vmap.descriptors(), as_stored(expected(n)))  # stored as float16, read back as float32


# ---------------------------------------------------------------------------- durable writes
WRITER = r"""
import sys, time, numpy as np
sys.path.insert(0, "test")
from test_map_durability import MODEL, kf, vec
from vpr_ros.mapping.map_store import VprMap
w = VprMap.open_writer(sys.argv[1], MODEL, durable=True)
if sys.argv[2] == "hnsw":
    w.reindex("hnsw")
i = len(w)
print("open", flush=True)
if sys.argv[3:] == ["gated"]:
    sys.stdin.readline()  # the reader's first load happens before the first commit
commits = 0
while True:
    commits += 1
    if i < 150 or sys.argv[2] == "flat":
        w.add(vec(i)[None], [kf(i)])
        print(f"committed {i}", flush=True)
        i += 1
    else:  # the map stops growing (loads stay quick) but the writer goes on committing
        w.set_map_frame("odom" if commits % 2 else "map")
    if sys.argv[2] == "hnsw":
        if commits % 100 == 0:
            w.save()  # an index snapshot while readers read
        time.sleep(0.002)  # a (fast) node's pace, so that a reader-free moment lets the journal restart
"""


def test_every_committed_keyframe_survives_sigkill(tmp_path):
    """A writer adds keyframes one by one; SIGKILL at a moment chosen by its own progress: every
    keyframe it reported committed is in the map, and the lock died with it."""
    for round_, stop_after in enumerate((1, 17, 40)):
        p = spawn(WRITER, str(tmp_path), "flat")
        assert p.stdout.readline().strip() == "open"
        done = -1
        while done < stop_after + 20 * round_:
            done = int(p.stdout.readline().split()[1])
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        back = VprMap.load(tmp_path, expect=MODEL)
        assert len(back) >= done + 1  # never fewer than reported (maybe the one in flight too)
        check_consistent(back)
        assert writer_holder(tmp_path) == ""
        back.close()


def test_one_writer_at_a_time_and_the_lock_dies_with_its_process(tmp_path):
    w = VprMap.open_writer(tmp_path, MODEL)
    with pytest.raises(MapError, match=rf"being written by pid {os.getpid()} on .*one writer at a time"):
        VprMap.open_writer(tmp_path, MODEL)
    with pytest.raises(MapError, match="being written by"):  # an in-memory map saved there: refused too
        m = VprMap.create(MODEL)
        m.add(vec(0)[None], [kf(0)])
        m.save(tmp_path)
    p = spawn("import sys; from vpr_ros.mapping.map_store import VprMap\n"
              "try:\n    VprMap.open_writer(sys.argv[1])\nexcept Exception as e:\n    print(type(e).__name__, e)",
              str(tmp_path))
    out, _ = p.communicate()
    assert out.startswith("MapError") and f"pid {os.getpid()}" in out, out
    assert f"pid {os.getpid()}" in writer_holder(tmp_path)
    w.close()
    assert writer_holder(tmp_path) == ""
    p = spawn(WRITER, str(tmp_path), "flat")  # a holder killed outright leaves no stale lock
    assert p.stdout.readline().strip() == "open"
    assert str(p.pid) in writer_holder(tmp_path)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    VprMap.open_writer(tmp_path, MODEL).close()


@pytest.mark.slow
def test_readers_see_one_generation_while_a_writer_commits_and_snapshots(tmp_path):
    """Loads against a writer committing keyframes and HNSW snapshots continuously, until the
    writer has committed 1000 generations under the readers (progress, not time, ends the loop:
    a slow or busy machine only takes longer): none fails, none mixes an index of one generation
    with rows of another, and the map only grows."""
    p = spawn(WRITER, str(tmp_path), "hnsw", "gated")
    try:
        assert p.stdout.readline().strip() == "open"
        sizes, generations, notes, loads = [], [], 0, 0
        while loads < 200 or generations[-1] < generations[0] + 1000 or sizes[-1] < 150:
            vmap = VprMap.load(tmp_path, expect=MODEL, verify_features=False)
            check_consistent(vmap)
            sizes.append(len(vmap))
            generations.append(vmap.manifest.generation)
            notes += bool(vmap.notes)
            vmap.close()
            if loads == 0:
                p.stdin.write("go\n")
                p.stdin.flush()
            loads += 1
            assert p.poll() is None, p.stdout.read()  # the writer is alive, so the loop ends
    finally:
        p.kill()
        p.wait()
    assert sizes[0] == 0 and sizes == sorted(sizes)  # the map grew under the readers, never shrank
    print(f"{loads} loads, map grew {sizes[0]} -> {sizes[-1]} keyframes, generation {generations[0]} -> "
          f"{generations[-1]}; {notes} loads built the index from descriptors")
    assert len(set(generations)) > 100  # the loads saw many distinct generations, not a few


# ---------------------------------------------------------------------------- pending frames
def _rgb(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)


def test_pending_frames_are_durable_and_encoded_after_a_restart(tmp_path, tiny_backend):
    from vpr_ros.config import KeyframeConfig
    from vpr_ros.mapping.builder import MapBuilder

    ident = ModelIdentity.of_backend(tiny_backend)
    w = VprMap.open_writer(tmp_path, ident)
    frames = [PendingFrame(kf(i), RawImage(_rgb(i).tobytes(), "rgb8", 48, 64, 64 * 3)) for i in range(3)]
    bad = PendingFrame(kf(3), RawImage(b"\x00" * 10, "rgb8", 48, 64, 64 * 3))  # truncated: never decodable
    seqs = [w.add_pending(f) for f in [*frames, bad]]
    assert seqs == sorted(seqs) and w.pending_frames() == seqs
    back = VprMap.load(tmp_path)
    assert back.pending == 4 and len(back) == 0  # on disk, not yet keyframes
    w.close()  # the node stopped (or was killed) before encoding them

    w = VprMap.open_writer(tmp_path, ident)
    builder = MapBuilder(tiny_backend, KeyframeConfig(), base=w)
    added, dropped, damaged = builder.finish_pending()
    assert added == 3 and len(dropped) == 1 and f"pending keyframe {seqs[3]}" in dropped[0] and damaged == []
    assert w.pending_frames() == []
    w.close()
    done = VprMap.load(tmp_path, expect=ident)
    assert done.pending == 0 and [k.stamp for k in done.keyframes] == [0.0, 1.0, 2.0]
    direct = builder.encode([_rgb(i) for i in range(3)])[0]  # the same descriptors as encoding them live
    assert ((done.descriptors() * direct).sum(1) > 1 - 1e-5).all()  # float16 storage: cosine error ~1e-7


@pytest.mark.torch
def test_finish_command_encodes_what_a_node_left(tmp_path, tiny_backend, capsys):
    from vpr_ros.cli.build_map import main

    from conftest import TINY_MODEL

    w = VprMap.open_writer(tmp_path / "map", ModelIdentity.of_backend(tiny_backend))
    w.add_pending(PendingFrame(kf(0), RawImage(_rgb(0).tobytes(), "rgb8", 48, 64, 64 * 3)))
    w.close()
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"backend": "torch",
                                                                  **{f"model.{k}": v for k, v in TINY_MODEL.items()}}}}))
    assert main(["--finish", "--map-dir", str(tmp_path / "map"), "--params-file", str(params)]) == 0
    assert "1 pending keyframe(s) encoded" in capsys.readouterr().out
    assert len(VprMap.load(tmp_path / "map")) == 1


# ---------------------------------------------------------------------------- integrity
@pytest.fixture(scope="module")
def sealed_map(tmp_path_factory):
    """50 keyframes with ORB features and an HNSW snapshot, closed (no journal beside the file)."""
    from vpr_ros.verification.features import CameraIntrinsics, extract_classical

    root = tmp_path_factory.mktemp("sealed") / "map"
    m = VprMap.create(MODEL)
    rgb = _rgb(5)
    feats = [extract_classical(np.roll(rgb, 2 * i, axis=1), "orb", 40) for i in range(50)]
    for f in feats[::3]:
        f.intrinsics = CameraIntrinsics(80.0, 80.0, 32.0, 24.0, 64, 48)
    m.add(np.stack([vec(i) for i in range(50)]), [kf(i) for i in range(50)], feats)
    m.reindex("hnsw")
    m.save(root)
    m.close()
    return root


def _content(vmap: VprMap) -> tuple:
    feats = vmap.all_features()
    return ([(k.id, k.stamp, k.pose, k.camera, k.frame_id, k.gps, k.image_ref, k.session) for k in vmap.keyframes],
            vmap.descriptors().tobytes(), vmap.manifest.model, vmap.manifest.map_frame, vmap.manifest.count,
            sorted((i, f.kind, f.keypoints.tobytes(), f.descriptors.tobytes(),
                    None if f.intrinsics is None else f.intrinsics.as_array().tobytes()) for i, f in feats.items()))


def test_a_flipped_exponent_bit_in_a_descriptor_is_refused_naming_the_keyframe(tmp_path, sealed_map):
    """The trial's case: one exponent bit of keyframe 40's descriptor flipped on disk."""
    d = tmp_path / "map"
    shutil.copytree(sealed_map, d)
    store = next(d.glob("map-*.sqlite"))
    data = bytearray(store.read_bytes())
    at = bytes(data).find(vec(40).astype(np.float16).tobytes())
    assert at > 0
    data[at + 1] ^= 0x40  # the top exponent bit of the first (float16) value: x 2^16
    store.write_bytes(bytes(data))
    # covered by the HNSW snapshot, so a localizer's start-up does not read it; the full check of
    # map_info and of every writer does (a writer never carries it into a migration or a rebuild)
    with pytest.raises(MapError, match="keyframe 40: descriptor fails its checksum"):
        VprMap.load(d, check_structure=True)
    with pytest.raises(MapError, match="keyframe 40: descriptor fails its checksum"):
        VprMap.open_writer(d).close()
    (next(d.glob("index-*.faiss"))).unlink()  # without the snapshot every vector is read at load
    with pytest.raises(MapError, match="keyframe 40: descriptor fails its checksum"):
        VprMap.load(d)
    from vpr_ros.cli.map_info import main

    assert main([str(d)]) == 2


def _flip_positions(path: Path) -> list[int]:
    """Byte positions of every class in a file: in an SQLite file the file header, and in every page
    (of the size its header names) its header, cell-pointer array, free space and cell content
    (start, middle, end); elsewhere every 97th byte."""
    size = path.stat().st_size
    if not path.name.endswith(".sqlite"):
        return list(range(0, size, 97))
    with open(path, "rb") as f:
        page_size = int.from_bytes(f.read(18)[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size  # the file format writes 65536 as 1
    out = list(range(0, 100, 3))
    for start in range(0, size, page_size):
        head = start + (100 if start == 0 else 0)
        out += [head, head + 1, head + 3, head + 5, head + 7, head + 8, head + 10, head + 12,
                start + page_size // 2, start + page_size - 200, start + page_size - 1]
    return sorted({p for p in out if p < size})


@pytest.mark.slow
def test_every_byte_class_flipped_is_detected_or_harmless(tmp_path, sealed_map):
    """One bit flipped at every position class of every file: the load either refuses with the
    package's MapError or returns exactly the original content (the byte carried no data, or the
    index snapshot was rebuilt from the stored descriptors)."""
    reference = VprMap.load(sealed_map)
    original = _content(reference)
    reference.close()
    refused = repaired = harmless = 0
    for name in sorted(p.name for p in sealed_map.iterdir()):
        if name == "writer.lock":
            continue
        for k, pos in enumerate(_flip_positions(sealed_map / name)):
            for bit in (0x01 << (k % 8),):  # one bit per position, cycling through the bit places
                d = tmp_path / f"case-{refused + repaired + harmless}"
                shutil.copytree(sealed_map, d)
                f = d / name
                data = bytearray(f.read_bytes())
                data[pos] ^= bit
                f.write_bytes(bytes(data))
                try:
                    vmap = VprMap.load(d)
                except MapError:
                    refused += 1
                else:
                    assert _content(vmap) == original, (name, pos, bit)
                    repaired += bool(vmap.notes)
                    harmless += not vmap.notes
                    vmap.close()
                shutil.rmtree(d)
    print(f"flips: {refused} refused, {repaired} repaired (index rebuilt), {harmless} harmless")
    assert refused and repaired and harmless


# ---------------------------------------------------------------------------- errors and refusals
def future_format_copy(src: Path, dst: Path) -> Path:
    """A copy of the map ``src`` whose manifest claims format version 4 (a newer vpr_ros's)."""
    shutil.copytree(src, dst)
    mf = dst / "manifest.yaml"
    mf.write_text(yaml.safe_dump({**yaml.safe_load(mf.read_text()), "format_version": 4}))
    return dst


def test_unreadable_maps_are_refused_never_replaced(tmp_path, sealed_map):
    future = future_format_copy(sealed_map, tmp_path / "future")
    truncated = tmp_path / "truncated"
    shutil.copytree(sealed_map, truncated)
    store = next(truncated.glob("map-*.sqlite"))
    store.write_bytes(store.read_bytes()[: store.stat().st_size // 2])
    new = VprMap.create(MODEL)
    new.add(vec(0)[None], [kf(0)])
    for d, why in ((future, "format version 4 is not supported"), (truncated, "map-")):
        before = {p.name: p.read_bytes() for p in d.iterdir() if p.name != "writer.lock"}
        with pytest.raises(MapError, match=why):
            VprMap.open_writer(d, MODEL)
        with pytest.raises(MapError, match=why):
            new.save(d, replace_existing=True)
        assert {p.name: p.read_bytes() for p in d.iterdir() if p.name != "writer.lock"} == before
    other = tmp_path / "other"
    shutil.copytree(sealed_map, other)
    with pytest.raises(MapError, match="holds another map; not overwritten"):
        new.save(other)
    with pytest.raises(MapError, match="built by another model"):
        VprMap.open_writer(other, ModelIdentity("another", "cd" * 32, 56, 8))
    new.save(other, replace_existing=True)  # a readable map, replaced on request (vpr_ros_build_map)
    assert len(VprMap.load(other)) == 1 and len(list(other.glob("map-*.sqlite"))) == 1


def test_a_map_changed_by_another_writer_is_not_overwritten(tmp_path, sealed_map):
    shutil.copytree(sealed_map, tmp_path / "m")
    stale = VprMap.load(tmp_path / "m")
    w = VprMap.open_writer(tmp_path / "m", MODEL)
    w.add(vec(50)[None], [kf(50)])
    w.close()
    stale.add(vec(99)[None], [kf(99)])
    with pytest.raises(MapError, match="has changed since this map was loaded"):
        stale.save(tmp_path / "m")
    assert [k.stamp for k in VprMap.load(tmp_path / "m").keyframes][-1] == 50.0


def test_write_failures_are_map_errors_and_leave_no_stray_files(tmp_path, sealed_map):
    """Real OS errors: a directory where the index snapshot must go, a file where the map directory
    must be, a store that cannot grow (RLIMIT_FSIZE in a child process: the write fails with EFBIG,
    as on a full disk). Each gives a MapError naming the path; the map keeps every committed row."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    m = VprMap.create(MODEL)
    m.add(vec(0)[None], [kf(0)])
    with pytest.raises(MapError, match="cannot create the map directory"):
        m.save(blocker / "map")
    d = tmp_path / "m"
    shutil.copytree(sealed_map, d)
    w = VprMap.open_writer(d, MODEL)
    w.add(vec(50)[None], [kf(50)])
    w.close()
    (d / "index-notes").mkdir()  # a directory of the user's own that writers must leave alone
    code = r"""
import resource, signal, sys
sys.path.insert(0, "test")
from test_map_durability import MODEL, kf, vec
from vpr_ros.errors import MapError
from vpr_ros.mapping.map_store import VprMap
w = VprMap.open_writer(sys.argv[1], MODEL)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
size = max(p.stat().st_size for p in __import__("pathlib").Path(sys.argv[1]).iterdir() if p.is_file())
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 8192, size + 8192))
import numpy as np
big = np.stack([vec(i, 8) for i in range(51, 51 + 4000)])
try:
    w.add(big, [kf(i) for i in range(51, 51 + 4000)])
    print("no error")
except MapError as e:
    print("MapError", e)
print("still", len(w))
"""
    p = spawn(code, str(d))
    out, _ = p.communicate()
    assert "MapError" in out and "cannot store keyframes" in out and "still 51" in out, out
    back = VprMap.load(d)
    assert len(back) == 51
    assert not [f for f in d.iterdir() if f.name.startswith(".")] and (d / "index-notes").is_dir()


# ---------------------------------------------------------------------------- format 1 (v0.3)
def test_v03_maps_load_and_migrate_on_first_write(tmp_path, capsys):
    """Maps written by v0.3 itself: read as they are; the first writer migrates them to format 3
    with every keyframe, descriptor and local feature (compared with the v0.3 files' own rows)."""
    import logging

    from vpr_ros.cli.map_info import main

    want = np.load(V1 / "descriptors.npy", allow_pickle=False)
    for kind in ("flat", "hnsw"):
        d = tmp_path / kind
        shutil.copytree(V1 / kind, d)
        con = sqlite3.connect(str(next(d.glob("keyframes.*.sqlite"))))
        rows = con.execute("SELECT id, stamp, camera, frame_id, x, y, z, qx, qy, qz, qw, lat, lon, alt, image_ref "
                           "FROM keyframes ORDER BY id").fetchall()
        has_feats = con.execute("SELECT COUNT(*) FROM sqlite_master WHERE name='local_features'").fetchone()[0]
        feats = con.execute("SELECT id, keypoints, descriptors, intrinsics FROM local_features ORDER BY id"
                            ).fetchall() if has_feats else []
        con.close()
        old = VprMap.load(d)
        assert old.manifest.format_version == 1 and len(old) == 12
        assert main([str(d)]) == 0 and "format 1" in capsys.readouterr().out
        old.close()
        logging.getLogger("vpr_ros").setLevel(logging.INFO)
        w = VprMap.open_writer(d)
        w.close()
        assert yaml.safe_load((d / "manifest.yaml").read_text())["format_version"] == 3
        assert not list(d.glob("keyframes.*")) and not list(d.glob("index.*"))
        new = VprMap.load(d, expect=old.model)
        # float16 storage: |error| <= 2^-12 |x| (the HNSW snapshot, derived data, keeps v0.3's float32 values)
        assert np.allclose(new.descriptors(), want, rtol=0, atol=2.5e-4)
        assert [(k.id, k.stamp, k.camera, k.frame_id, *k.pose, *(k.gps or (None, None, None)), k.image_ref)
                for k in new.keyframes] == [tuple(r) for r in rows]
        assert new.manifest.index_type == kind and new.manifest.map_frame == ("odom" if kind == "flat" else "map")
        got = new.all_features()
        assert [(i, f.keypoints.tobytes(), f.descriptors.tobytes(),
                 None if f.intrinsics is None else f.intrinsics.as_array().tobytes()) for i, f in sorted(got.items())] \
            == [tuple(r) for r in feats]
        assert main([str(d)]) == 0
        out = capsys.readouterr().out
        assert "(format 3," in out and "checksums     OK" in out


# ---------------------------------------------------------------------------- format 2 (v0.4)
def _v2_rows(d: Path) -> tuple[list[tuple], list[tuple], dict]:
    """The keyframe rows, local-feature rows and metadata of a v0.4 store, read with sqlite3 itself."""
    import json

    con = sqlite3.connect(str(next(d.glob("map-*.sqlite"))))
    rows = con.execute("SELECT id, stamp, camera, frame_id, x, y, z, qx, qy, qz, qw, lat, lon, alt, image_ref, "
                       "session FROM keyframes ORDER BY id").fetchall()
    feats = con.execute("SELECT id, kind, keypoints, descriptors, intrinsics FROM local_features ORDER BY id").fetchall()
    meta = {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM meta")}
    con.close()
    return rows, feats, meta


def _contents(vmap: VprMap) -> tuple:
    return ([(k.id, k.stamp, k.camera, k.frame_id, *k.pose, *(k.gps or (None, None, None)), k.image_ref, k.session)
             for k in vmap.keyframes],
            [(i, f.kind, f.keypoints.tobytes(), f.descriptors.tobytes(),
              None if f.intrinsics is None else f.intrinsics.as_array().tobytes())
             for i, f in sorted(vmap.all_features().items())])


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_v04_maps_load_as_they_are_and_migrate_on_first_write(tmp_path, kind, capsys):
    """Maps written by v0.4 itself (format 2: float32 descriptors in the keyframe rows): read as
    they are; the first writer rewrites them as format 3 keeping every keyframe, local feature,
    session record and the map frame; its descriptors are the v0.4 ones rounded to float16."""
    from vpr_ros.cli.map_info import main

    want = np.load(V2 / "descriptors.npy", allow_pickle=False)
    d = tmp_path / kind
    shutil.copytree(V2 / kind, d)
    rows, feats, meta = _v2_rows(d)
    old = VprMap.load(d)
    assert old.manifest.format_version == 2 and len(old) == 12 and old.manifest.generation == meta["generation"]
    assert np.array_equal(old.descriptors(), want)  # read as v0.4 wrote them, bit for bit
    assert _contents(old) == ([tuple(r) for r in rows], [tuple(r) for r in feats])
    assert {str(k) for k in old.session_records} == set(meta.get("sessions", {}))
    assert old.search(want[:3], 1)[1][:, 0].tolist() == [0, 1, 2]
    assert main([str(d)]) == 0 and "(format 2," in capsys.readouterr().out
    before = {p.name for p in d.iterdir()}

    w = VprMap.open_writer(d)  # the first writer migrates before it writes
    assert w.manifest.format_version == 3 and _contents(w) == _contents(old)
    w.add(want[5][None], [Keyframe(stamp=100.0, pose=planar_pose(0.0, 0.0), camera="cam0", session=2)])
    w.close()
    assert yaml.safe_load((d / "manifest.yaml").read_text())["format_version"] == 3
    assert not before & {p.name for p in d.iterdir()} - {"manifest.yaml", "writer.lock"}  # v0.4's files are gone
    new = VprMap.load(d, expect=old.model, check_structure=True)
    assert new.manifest.format_version == 3 and len(new) == 13
    assert new.manifest.map_frame == meta["map_frame"] and new.manifest.index_type == kind
    assert new.session_records == old.session_records and new.sessions() == {**old.sessions(), 2: 1}
    kf_new, f_new = _contents(new)
    assert kf_new[:12] == _contents(old)[0] and f_new == _contents(old)[1]
    # float16 storage: |error| <= 2^-12 |x| (an HNSW snapshot, derived data, may keep v0.4's float32 values)
    assert np.allclose(new.descriptors(), np.vstack([want, want[5]]), rtol=0, atol=2.5e-4)
    assert new.search(want[:3], 1)[1][:, 0].tolist() == [0, 1, 2]
    assert main([str(d)]) == 0 and "(format 3," in capsys.readouterr().out


def test_a_v04_map_loaded_and_saved_back_migrates_and_refuses_a_stale_copy(tmp_path):
    """VprMap.save into the v0.4 map a copy was loaded from: migrated with the new keyframes; a
    second, now stale copy is refused (nothing newer is overwritten)."""
    d = tmp_path / "map"
    shutil.copytree(V2 / "flat", d)
    a, b = VprMap.load(d), VprMap.load(d)
    a.add(vec(0)[None], [kf(12)])
    a.save(d)
    assert VprMap.read_manifest(d).format_version == 3 and len(VprMap.load(d)) == 13
    b.add(vec(1)[None], [kf(12)])
    with pytest.raises(MapError, match="holds another map"):
        b.save(d)

"""Loop closure while mapping, in the core: a rendered drive with revisits in one session (SIFT
features and 3-D points from depth, the tiny random network for the global descriptor), the
exclusion of a session's own recent keyframes by id range, prior-map closures, session alignment
and keyframe poses that follow a SLAM back end's optimised path. Through the real node:
test_slam_ros.py."""
from __future__ import annotations

import math

import numpy as np
import pytest

from vpr_ros.config import KeyframeConfig, LiveLoopConfig, VerificationConfig
from vpr_ros.errors import MapError
from vpr_ros.geometry import compose, inverse, planar_pose
from vpr_ros.mapping.builder import MapBuilder
from vpr_ros.mapping.live_loops import LiveLoopCloser
from vpr_ros.mapping.map_store import Keyframe, VprMap

LIVE = LiveLoopConfig(enabled=True, score_threshold=-1.0)  # the random network's scores mean little: geometry decides


@pytest.fixture(scope="module")
def drive():
    from vpr_ros.demo.slam_drive import slam_drive

    return slam_drive(places=20, laps=3)


def run_session(backend, drive, frames, vmap=None, poses=None):
    """Map ``frames`` of the drive with live loop closure (as the map builder node does per keyframe);
    returns (builder, [(frame index, LiveClosure)])."""
    b = MapBuilder(backend, KeyframeConfig(min_distance=0.5), base=vmap, intrinsics=drive.intrinsics)
    if b.map.manifest.index_type == "flat":
        b.map.reindex("hnsw")
    closer = LiveLoopCloser(backend, b.map, LIVE, VerificationConfig(), b.session)
    out = []
    for i in frames:
        kf = Keyframe(drive.stamps[i], (poses or drive.odometry)[i], session=b.session)
        desc, feats = b.encode([drive.images[i]], [drive.depths[i]], drive.intrinsics)
        c = closer.check(desc, feats[0], kf, drive.intrinsics)
        if c is not None:
            out.append((i, c))
        b.add_encoded(desc, [kf], feats)
        closer.added(kf)
    return b, out


@pytest.mark.slow
def test_every_closure_of_a_session_revisits_and_recent_keyframes_are_never_searched(tiny_backend, drive):
    b, results = run_session(tiny_backend, drive, range(len(drive.images)))
    published = [(i, c) for i, c in results if c.publish_pair]
    assert len(published) >= 10  # lap 2 revisits lap 0
    for i, c in published:
        lp, j = c.result.loop, c.result.loop.db_id
        assert drive.laps[i] == 2 and drive.laps[j] == 0
        assert np.linalg.norm(np.subtract(drive.truth[i][:3], drive.truth[j][:3])) < 1.5  # precision 1.00
        assert lp.t_query == drive.stamps[i] and lp.t_match == drive.stamps[j]
        true_rel = compose(inverse(drive.truth[j]), drive.truth[i])
        assert np.linalg.norm(np.subtract(c.result.relative[:3], true_rel[:3])) < 0.1  # metric (PnP on depth)
    for i, c in results:  # only keyframes at least exclude_recent (30 s) older were ever candidates
        assert all(drive.stamps[i] - m.keyframe.stamp >= LIVE.exclude_recent for m in c.result.matches)
    assert not [c for i, c in results if drive.laps[i] < 2 and c.publish_pair]


def test_the_exclusion_window_is_an_id_range_inside_the_search():
    from vpr_ros.mapping.map_store import ModelIdentity

    vmap = VprMap.create(ModelIdentity("m", "ab" * 32, 56, 8))
    x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    vmap.add(x, [Keyframe(float(i), planar_pose(i, 0)) for i in range(50)])
    for kind in ("flat", "hnsw"):
        vmap.reindex(kind)
        _, ids = vmap.search(x[45:], 5, before=30)
        assert ids.max() < 30 and ids.shape == (5, 5)
        assert vmap.search(x[:1], 5, before=0)[1].shape == (1, 0)


def test_closures_with_a_prior_map_are_marked_and_never_sent_as_pairs(tiny_backend, drive, tmp_path):
    lap0 = [i for i, lap in enumerate(drive.laps) if lap == 0]
    lap2 = [i for i, lap in enumerate(drive.laps) if lap == 2]
    first, _ = run_session(tiny_backend, drive, lap0)
    first.save(tmp_path / "map")
    vmap = VprMap.open_writer(tmp_path / "map")
    b, results = run_session(tiny_backend, drive, lap2, vmap=vmap)
    assert b.session == 1
    verified = [c for i, c in results if c.result.loop is not None and c.result.loop.publish]
    assert len(verified) >= 10 and all(c.prior and not c.publish_pair for c in verified)
    b.save()
    vmap.close()
    assert VprMap.load(tmp_path / "map").sessions() == {0: len(lap0), 1: len(lap2)}


def test_a_second_session_in_another_odometry_frame_is_aligned(tiny_backend, drive, tmp_path):
    """Session 0 in the map frame; session 1 drives the same place with odometry in its own frame
    (a transform away); its verified metric closures say where that frame is: within 5 cm and 1 deg."""
    from vpr_ros.mapping.sessions import align_session, closure_estimate

    lap0 = [i for i, lap in enumerate(drive.laps) if lap == 0]
    lap2 = [i for i, lap in enumerate(drive.laps) if lap == 2]
    first, _ = run_session(tiny_backend, drive, lap0, poses=drive.truth)
    T_true = compose(planar_pose(3.0, -2.0, 0.7), (0.0, 0.0, 0.2, 0.0, 0.0, 0.0, 1.0))
    in_b = {i: compose(inverse(T_true), drive.truth[i]) for i in lap2}  # session 1's own odometry frame
    _, results = run_session(tiny_backend, drive, lap2, vmap=first.map, poses=[in_b.get(i, p) for i, p in
                                                                                 enumerate(drive.truth)])
    estimates = [closure_estimate(in_b[i], c.result.matches[0].keyframe.pose, c.result.relative)
                 for i, c in results if c.result.loop is not None and c.result.loop.publish and c.result.relative]
    a = align_session(estimates)
    assert a.ok and a.inliers >= 3, a
    err = compose(inverse(T_true), a.transform)
    print(f"aligned from {a.inliers} of {a.closures} closures: {np.linalg.norm(err[:3]) * 100:.2f} cm, "
          f"{math.degrees(2 * math.acos(min(1.0, abs(err[6])))):.3f} deg from the true transform")
    assert np.linalg.norm(err[:3]) < 0.05
    assert math.degrees(2 * math.acos(min(1.0, abs(err[6])))) < 1.0
    # closures that disagree (a wrong match among them, or too few): no transform, with the reason
    bad = [compose(planar_pose(5.0 * k, 0.0, 0.5 * k), e) for k, e in enumerate(estimates[:4])]
    refused = align_session(bad)
    assert not refused.ok and "disagree" in refused.reason
    assert "needed" in align_session(estimates[:2]).reason


def test_keyframe_poses_follow_an_optimised_path(tiny_backend, drive, tmp_path):
    from vpr_ros.mapping.reanchor import reanchor

    lap0 = [i for i, lap in enumerate(drive.laps) if lap == 0][:8]
    b, _ = run_session(tiny_backend, drive, lap0)
    b.save(tmp_path / "map")
    vmap = VprMap.open_writer(tmp_path / "map")
    # the back end's path (moved and turned), sampled at some keyframe stamps and between others;
    # it ends 30 ms before the last keyframe (stamp rounding: the nearest pose is taken)
    T = planar_pose(0.5, -0.2, 0.05)
    stamps = [0.0, 0.5, 1.5, 2.0, 3.0, 3.5, 4.5, 5.0, 6.0, 6.97]
    path = [compose(T, planar_pose(s, 0.0, 0.0)) for s in stamps]
    r = reanchor(vmap.keyframes, stamps, path, max_gap=1.0)
    assert r.unreached == 0 and r.how == {"exact": 5, "interpolated": 2, "nearest": 1}
    # ending half a second early, the last keyframe is not pulled onto the path's end: unreached
    short = reanchor(vmap.keyframes, stamps[:-1], path[:-1], max_gap=1.0)
    assert short.unreached == 1 and short.how == {"exact": 5, "interpolated": 2}
    # a path that puts one stamp in two places 100 m apart is refused, not applied silently
    with pytest.raises(MapError, match=r"poses 2 and 3 have the same stamp 1.5 but differ \(100.000 m apart\)"):
        reanchor(vmap.keyframes, [0.0, 0.5, 1.5, 1.5], [*path[:3], compose(planar_pose(100.0, 0.0, 0.0), path[2])], 1.0)
    vmap.update_poses(r.poses, "map_optimized")
    vmap.close()
    back = VprMap.load(tmp_path / "map")
    assert back.manifest.map_frame == "map_optimized"
    for k in back.keyframes:  # exactly the path's pose at the keyframe's stamp (interpolated between samples)
        t = min(k.stamp, stamps[-1])
        assert np.allclose(k.pose, compose(T, planar_pose(t, 0.0, 0.0)), atol=1e-9), (k.id, k.pose)
    for bad, why in (([float("nan")] * 7, "non-finite"), ([0, 0, 0, 0, 0, 0, 5.0], "norm 5.0000")):
        with pytest.raises(MapError, match=why):
            reanchor(back.keyframes, [0.0, 1.0], [bad, bad], 1.0)
    far = reanchor(back.keyframes, [1e6, 1e6 + 1], [path[0], path[1]], 1.0)
    assert far.unreached == len(back.keyframes) and not far.poses


# ---------------------------------------------------------------------------- session alignment over time
def _closures(T_true_of, places):
    """(new pose in the session's frame, matched pose in the map frame, relative) for closures at
    ``places`` (x along a corridor) when the session's frame lies at ``T_true_of(x)`` in the map's."""
    out = []
    for x in places:
        truth = planar_pose(x, 0.3, 0.05 * x)           # where the robot really is (map frame)
        matched = planar_pose(x - 0.4, 0.0, 0.05 * x)   # the keyframe it matched (map frame)
        relative = compose(inverse(matched), truth)
        out.append((compose(inverse(T_true_of(x)), truth), matched, relative))
    return out


def test_session_alignment_needs_spread_closures_and_follows_later_ones():
    from vpr_ros.mapping.sessions import ALIGNED, UNALIGNED, SessionAligner, SessionRecord, pose_difference

    T = planar_pose(4.0, -1.5, 0.6)
    # three agreeing closures at one spot are no evidence against a look-alike place elsewhere
    spot = SessionAligner(min_closures=3, min_extent_m=2.0)
    events = [spot.add(*c, anchor=0) for c in _closures(lambda x: T, [5.0, 5.3, 5.6])]
    assert [e.kind for e in events] == ["collected"] * 3 and "within 0.60 m of each other" in events[-1].text
    assert spot.record.state == UNALIGNED and not spot.record.anchor
    # spread over 4 m: aligned, exactly
    a = SessionAligner(min_closures=3, min_extent_m=2.0)
    events = [a.add(*c, anchor=0) for c in _closures(lambda x: T, [5.0, 7.0, 9.0])]
    assert events[-1].kind == "aligned" and a.record.state == ALIGNED and a.record.anchor
    assert pose_difference(a.transform, T)[0] < 1e-9 and a.record.extent_m == pytest.approx(4.0)
    # an odometry jump of 2 m: the next closures disagree (counted, reported), then the recent
    # consensus moves the transform by 2 m; what came before keeps the old one
    jumped = compose(T, planar_pose(2.0, 0.0, 0.0))
    events = [a.add(*c, anchor=0) for c in _closures(lambda x: jumped, [11.0, 13.0, 15.0, 17.0, 19.0])]
    kinds = [e.kind for e in events]
    assert kinds == ["disagrees", "disagrees", "updated", "agrees", "agrees"], kinds
    assert "disagrees with the alignment in use by 200.0 cm" in events[0].text
    assert pose_difference(a.transform, jumped)[0] < 1e-9
    updated = next(e for e in events if e.kind == "updated")
    assert updated.shift_m == pytest.approx(2.0) and a.record.updates == 1 and a.record.disagreeing >= 3
    # odometry drifting 0.6 deg/m (the demo's model): the transform in use is re-estimated as the
    # closures move away from it, and still puts the latest keyframe where it truly is
    from vpr_ros.demo.slam_drive import drifting_odometry
    from vpr_ros.mapping.sessions import landing_difference

    truth = [planar_pose(float(x), 0.3, 0.0) for x in range(30)]
    odo, _ = drifting_odometry(truth, 0.6, np.random.default_rng(5))
    own = [compose(inverse(T), p) for p in odo]  # the session's own frame
    drift, fixed = SessionAligner(3, 2.0), SessionAligner(3, 2.0, window=10**6, tol_m=1e9, tol_deg=360.0)
    for x in range(30):
        matched = planar_pose(x - 0.4, 0.0, 0.0)
        for aligner in (drift, fixed):
            aligner.add(own[x], matched, compose(inverse(matched), truth[x]), anchor=0)
    assert drift.record.updates >= 3 and fixed.record.updates == 0
    true_now = compose(truth[29], inverse(own[29]))
    follows, stays = landing_difference(drift.transform, true_now, own[29]), landing_difference(fixed.transform, true_now, own[29])
    assert follows[0] < 0.05 and follows[1] < 2.0, follows
    assert stays[0] > 0.5, stays  # a transform fixed from the first closures: far off by now
    # stored and read back; malformed records refused by name
    back = SessionRecord.from_json(a.record.to_json(), "here")
    assert back == a.record and "re-estimated 1 time(s)" in back.describe()
    for bad in ({"state": "maybe"}, {"state": "aligned"}, {"state": "aligned", "transform": [0.0] * 6},
                {"state": "unaligned", "closures": -1}, {"state": "reference", "extra": 1}):
        with pytest.raises(ValueError, match="here"):
            SessionRecord.from_json(bad, "here")


def test_session_records_are_stored_with_the_map(tmp_path):
    from vpr_ros.mapping.sessions import ALIGNED, SessionRecord

    from test_map_durability import MODEL, kf, vec

    w = VprMap.open_writer(tmp_path / "map", MODEL)
    w.add(vec(0)[None], [kf(0)])
    assert w.session_record(0).state == "reference" and w.session_record(1).state == "unaligned"
    rec = SessionRecord(ALIGNED, transform=(1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 1.0), closures=5, inliers=4,
                        spread_m=0.01, spread_deg=0.1, extent_m=6.0, anchors=(0,))
    w.set_session_record(1, rec)
    w.close()
    back = VprMap.load(tmp_path / "map")
    assert back.session_record(1) == rec and back.session_record(0).state == "reference"
    copy = VprMap.load(tmp_path / "map")
    copy.save(tmp_path / "copy")  # a new store carries them over
    assert VprMap.load(tmp_path / "copy").session_record(1) == rec


def test_map_plot_revisits_are_verified_not_cosines_of_random_weights(tiny_backend, drive):
    """A single straight pass has no revisits, yet the random network scores every pair ~1: the
    plot's edges are the candidates that pass geometric verification. Two passes over the same
    corridor: the verified edges join the same places."""
    from vpr_ros.mapping.map_plot import revisit_edges

    lap0 = [i for i, lap in enumerate(drive.laps) if lap == 0]
    lap2 = [i for i, lap in enumerate(drive.laps) if lap == 2]
    one, _ = run_session(tiny_backend, drive, lap0, poses=drive.truth)
    candidates = revisit_edges(one.map, -1.0, 10.0, verify=False)  # 10 m apart: no longer in view
    assert len(candidates) >= 8 and revisit_edges(one.map, -1.0, 10.0) == []
    two, _ = run_session(tiny_backend, drive, lap2, vmap=one.map, poses=drive.truth)
    edges = revisit_edges(two.map, -1.0, 30.0)
    assert len(edges) >= 10
    for i, j, _ in edges:  # co-visible: the same stretch of corridor (a forward camera sees metres ahead)
        assert np.linalg.norm(np.subtract(two.map.keyframes[i].pose[:3], two.map.keyframes[j].pose[:3])) < 6.0

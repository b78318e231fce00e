"""ROS-free localization: matching, pose covariance, loop-closure rules, newest-frame slots."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from vpr_ros.config import LocalizerConfig
from vpr_ros.errors import MapError
from vpr_ros.frame_slots import LatestFrameSlots
from vpr_ros.localization import Localizer, pose_covariance
from vpr_ros.loop_closure import CANDIDATE, REJECTED, VERIFIED, LoopClosureDetector
from vpr_ros.mapping.map_store import ModelIdentity, VprMap


def test_localizer_matches_clean_views_of_its_own_map(built_map, tiny_backend, traversals):
    vmap = VprMap.load(built_map, expect=ModelIdentity.of_backend(tiny_backend))
    loc = Localizer(tiny_backend, vmap, LocalizerConfig(top_k=3, score_threshold=0.0))
    first = traversals[0]
    for i in (0, 7, 15):
        r = loc.localize(first.images[i], stamp=1000.0 + i)
        assert r.matches[0].db_id == i and r.matches[0].score > 0.999  # the same image
        assert [m.rank for m in r.matches] == [0, 1, 2]
        assert r.pose == first.poses[i] and len(r.covariance) == 36
        assert set(r.timings_ms) == {"preprocess", "inference", "search"}


def test_localizer_refuses_foreign_or_empty_map(tiny_backend, built_map):
    vmap = VprMap.load(built_map)
    vmap.manifest.model = ModelIdentity("x", "y", 56, vmap.model.descriptor_dim)
    with pytest.raises(MapError, match="another model"):
        Localizer(tiny_backend, vmap, LocalizerConfig())
    empty = VprMap.create(ModelIdentity.of_backend(tiny_backend))
    with pytest.raises(MapError, match="empty"):
        Localizer(tiny_backend, empty, LocalizerConfig())


def test_covariance_grows_as_score_falls():
    hi, lo = pose_covariance(0.9, 2.0), pose_covariance(0.3, 2.0)
    assert lo[0] > hi[0] > 0 and hi[35] > 0 and hi[1] == 0.0


def test_loop_closure_rules():
    det = LoopClosureDetector(score_threshold=0.5, min_time_separation=30, consistency=3, window=2, max_rate=1.0)
    assert det.update(100.0, 90.0, 5, 0.9).reason == "match too recent"
    assert det.update(100.5, 10.0, 5, 0.2).status == REJECTED
    seq = [det.update(101.0 + 0.25 * k, 10.0 + k, 5 + k, 0.9) for k in range(8)]
    assert [d.status for d in seq[:3]] == [CANDIDATE, CANDIDATE, VERIFIED]
    published = [d for d in seq if d.publish]
    times = [d.t_query for d in published]
    assert all(b - a >= 1.0 for a, b in zip(times, times[1:]))  # rate limit (1 Hz, query time)
    assert any(d.reason == "rate limited" for d in seq)
    jump = det.update(104.0, 10.0, 40, 0.9)  # inconsistent with the previous match
    assert jump.status == CANDIDATE and jump.streak == 1


def test_loop_closures_on_a_revisiting_trajectory():
    """Ground truth: the robot revisits keyframes 20..39 from t=200 s on."""
    det = LoopClosureDetector(0.6, 30.0, 3, 2, 1.0)
    rng = np.random.default_rng(0)
    truth, published = [], []
    for k in range(60):
        t = 200.0 + 0.5 * k
        if k < 40:  # revisit: right match with high score, sometimes a wrong one
            good = rng.random() > 0.15
            db = 20 + k // 2 if good else int(rng.integers(0, 100))
            d = det.update(t, float(db), db, 0.8 if good else 0.65)
            truth.append(good)
        else:  # new territory: best match is random and weak
            db = int(rng.integers(0, 100))
            d = det.update(t, float(db), db, float(rng.uniform(0.3, 0.62)))
            truth.append(False)
        if d.publish:
            published.append(truth[-1])
    precision = np.mean(published)
    # at most one closure per second (rate limit): 20 s of revisits allow 20
    recall = sum(published) / 20
    assert precision == 1.0 and recall >= 0.4, (precision, recall, len(published))


def test_latest_frame_slots_keep_only_the_newest_per_camera():
    s = LatestFrameSlots()
    for i in range(100):
        s.put("a", i)
    s.put("b", "x")
    got = [s.take(timeout=0.1), s.take(timeout=0.1)]
    assert sorted(map(str, got)) == sorted(map(str, [("a", 99), ("b", "x")]))
    assert s.received == 101 and s.dropped == 99 and s.pending() == 0
    assert s.take(timeout=0.01) is None
    t = threading.Thread(target=lambda: (s.close()))
    t.start()
    assert s.take(timeout=2.0) is None
    t.join()


def test_appearance_novelty_adds_keyframes_without_motion(tiny_backend, traversals):
    from vpr_ros.config import KeyframeConfig
    from vpr_ros.geometry import planar_pose
    from vpr_ros.mapping.builder import MapBuilder
    from vpr_ros.mapping.map_store import Keyframe

    first = traversals[0]
    still = planar_pose(0.0, 0.0)  # the robot does not move; the scene in front of it changes
    frames = [(img, Keyframe(stamp=float(i), pose=still)) for i, img in enumerate(first.images[:12])]
    plain = MapBuilder(tiny_backend, KeyframeConfig(min_distance=1.0))
    assert len(plain.add_many(frames)) == 1
    novel = MapBuilder(tiny_backend, KeyframeConfig(min_distance=1.0, novelty_threshold=0.995))
    ids = novel.add_many(frames)
    assert 1 < len(ids) <= 12
    repeated = MapBuilder(tiny_backend, KeyframeConfig(min_distance=1.0, novelty_threshold=0.995))
    same = [(first.images[0], Keyframe(stamp=float(i), pose=still)) for i in range(6)]
    assert len(repeated.add_many(same)) == 1  # an unchanged view is never novel


def test_recent_keyframes_are_excluded_when_querying_ones_own_map(built_map, tiny_backend, traversals):
    """A robot querying the map it is building: its latest keyframes must not match themselves."""
    vmap = VprMap.load(built_map)
    first = traversals[0]
    t = first.stamps[10]  # the query happens at the time keyframe 10 was taken
    plain = Localizer(tiny_backend, vmap, LocalizerConfig(top_k=3, score_threshold=0.0))
    assert plain.localize(first.images[10], stamp=t).matches[0].db_id == 10
    own = Localizer(tiny_backend, vmap, LocalizerConfig(top_k=3, score_threshold=0.0, exclude_recent=3.0))
    r = own.localize(first.images[10], stamp=t)
    assert len(r.matches) == 3 and all(abs(m.keyframe.stamp - t) >= 3.0 for m in r.matches)
    everything = Localizer(tiny_backend, vmap, LocalizerConfig(exclude_recent=1e6))
    with pytest.raises(MapError, match="exclude_recent"):
        everything.localize(first.images[0], stamp=t)

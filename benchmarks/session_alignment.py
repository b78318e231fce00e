"""Session alignment measured on rendered drives with odometry drift, side by side in one run (CPU).

Session 0 is the first lap of the SLAM demo's rendered corridor, in the map frame (true poses).
Session 1 drives the third lap with odometry of its own (a frame rotated and shifted from the
map's, 2 m and 30 deg away), integrated from the true motion with noise and a heading drift of
``--drift`` deg per metre, optionally with a sudden jump of the odometry half-way (``--jump`` m).
Each session-1 keyframe goes through the map builder's own code: live loop closure
(:class:`~vpr_ros.mapping.live_loops.LiveLoopCloser`: retrieval, SIFT + PnP on depth), and
:class:`~vpr_ros.mapping.session_tracking.SessionTracker` for the alignment; it is stored at the
pose the tracker gives. Printed per case: how far session 1's keyframes end up from the truth in
the map frame (median / max position, median heading), for the transform fixed from the first
agreeing closures (vpr_ros 0.4) and for the one that follows later closures (0.5).

Geometry decides the closures (score threshold -1): the tiny random network only orders the
candidates, so the figures do not depend on trained weights.

    python benchmarks/session_alignment.py [--places 20] [--threads 2]
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--places", type=int, default=20, help="frames per lap (1 m apart)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for torch and OpenCV")
    a = ap.parse_args(argv)
    import cv2
    import torch

    torch.set_num_threads(a.threads)
    cv2.setNumThreads(a.threads)
    from vpr_ros.config import KeyframeConfig, LiveLoopConfig, ModelConfig, VerificationConfig
    from vpr_ros.demo.slam_drive import drifting_odometry, slam_drive
    from vpr_ros.geometry import compose, inverse, planar_pose
    from vpr_ros.mapping.builder import MapBuilder
    from vpr_ros.mapping.live_loops import LiveLoopCloser
    from vpr_ros.mapping.map_store import Keyframe
    from vpr_ros.mapping.session_tracking import SessionTracker
    from vpr_ros.mapping.sessions import pose_difference
    from vpr_ros.runtime.factory import open_backend

    start = time.monotonic()
    drive = slam_drive(places=a.places, laps=3, drift_deg=0.0)
    lap0 = [i for i, lap in enumerate(drive.laps) if lap == 0]
    lap2 = [i for i, lap in enumerate(drive.laps) if lap == 2]
    backend = open_backend("torch", ModelConfig(backbone="vit_test", input_size=56, seed=3))
    live = LiveLoopConfig(enabled=True, score_threshold=-1.0)
    encoder = MapBuilder(backend, KeyframeConfig(min_distance=0.5), intrinsics=drive.intrinsics)
    encoded = {i: encoder.encode([drive.images[i]], [drive.depths[i]], drive.intrinsics) for i in lap0 + lap2}
    print(f"{len(lap0)} + {len(lap2)} keyframes encoded in {time.monotonic() - start:.0f} s "
          f"({backend.model_id}, {a.threads} threads)")
    frame_b = compose(planar_pose(2.0, -1.0, math.radians(30.0)), (0.0, 0.0, 0.1, 0.0, 0.0, 0.0, 1.0))

    def session_one_odometry(drift: float, jump: float) -> list[tuple[float, ...]]:
        truth = [drive.truth[i] for i in lap2]
        odo, _ = drifting_odometry(truth, drift, np.random.default_rng(11))
        if jump:
            half = len(odo) // 2
            odo = odo[:half] + [compose(planar_pose(jump, 0.0, 0.0), p) for p in odo[half:]]
        return [compose(inverse(frame_b), p) for p in odo]  # in session 1's own frame

    def run(drift: float, jump: float, follow: bool) -> dict[str, float]:
        b0 = MapBuilder(backend, KeyframeConfig(min_distance=0.5), intrinsics=drive.intrinsics)
        for i in lap0:
            desc, feats = encoded[i]
            b0.add_encoded(desc, [Keyframe(drive.stamps[i], drive.truth[i])], feats)
        b0.map.reindex("hnsw")
        b = MapBuilder(backend, KeyframeConfig(min_distance=0.5), base=b0.map, intrinsics=drive.intrinsics)
        closer = LiveLoopCloser(backend, b.map, live, VerificationConfig(), b.session)
        tracker = SessionTracker(b.map, b.session, closing=True, follow=follow)
        events: dict[str, int] = {}
        for i, pose in zip(lap2, session_one_odometry(drift, jump)):
            desc, feats = encoded[i]
            kf = Keyframe(drive.stamps[i] + 1000.0, pose, session=b.session)
            c = closer.check(desc, feats[0], kf, drive.intrinsics)
            r = c.result if c is not None else None
            if r is not None and c.prior and r.loop is not None and r.loop.publish and r.relative is not None \
                    and r.loop.verification is not None and r.loop.verification.metric:
                e = tracker.closure(r.matches[0].keyframe, pose, r.relative, kf.stamp)
                if e is not None:
                    events[e.kind] = events.get(e.kind, 0) + 1
            placed = Keyframe(kf.stamp, tracker.pose_in_map(pose), session=b.session)
            b.add_encoded(desc, [placed], feats)
            closer.added(placed)
            tracker.added(placed)
        mine = [k for k in b.map.keyframes if k.session == b.session]
        err = [pose_difference(k.pose, drive.truth[i]) for k, i in zip(mine, lap2)]
        aligned_from = next((n for n, k in enumerate(mine) if tracker.transform is not None), len(mine))
        return {"median_cm": 100 * float(np.median([e[0] for e in err])), "max_cm": 100 * max(e[0] for e in err),
                "median_deg": float(np.median([e[1] for e in err])), "closures": sum(events.values()),
                "updates": tracker.aligner.record.updates, "disagreeing": tracker.aligner.record.disagreeing,
                "state": tracker.aligner.record.state, "first": aligned_from}

    cases = [("no drift", 0.0, 0.0), ("drift 0.6 deg/m", 0.6, 0.0), ("drift 0.6 deg/m + 2 m jump", 0.6, 2.0)]
    print(f"\nsession 1 keyframes vs truth in the map frame ({len(lap2)} keyframes, frame 2 m / 30 deg away)")
    print(f"  {'case':28s} {'transform':22s} {'median cm':>9s} {'max cm':>7s} {'median deg':>10s} "
          f"{'closures':>8s} {'updates':>7s} {'disagreed':>9s}")
    for name, drift, jump in cases:
        for follow, label in ((False, "fixed from first (0.4)"), (True, "follows closures (0.5)")):
            r = run(drift, jump, follow)
            print(f"  {name:28s} {label:22s} {r['median_cm']:9.1f} {r['max_cm']:7.1f} {r['median_deg']:10.2f} "
                  f"{r['closures']:8d} {r['updates']:7d} {r['disagreeing']:9d}   {r['state']}")
    print(f"\n(total {time.monotonic() - start:.0f} s; keyframes before the alignment are moved when it is found)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

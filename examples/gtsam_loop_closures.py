"""A SLAM back end consuming vpr_ros loop closures: odometry with drift plus verified loop closures
(metric relative poses with their covariances) in a GTSAM pose graph.

A robot drives a rendered 3-D corridor three times (forward, back, forward again). The forward
frames of the first lap become the map (global descriptors, SIFT features, 3-D points from depth);
the frames of the third lap are localized against it with the localizer's core (the code the
``localizer`` node runs), with the camera model. Each verified loop closure becomes a
``BetweenFactorPose3`` between the third-lap pose and the matched first-lap pose, with the
verification's covariance. Prints the trajectory error (RMSE of positions against ground truth) of
odometry alone and of the optimized graph.

    python examples/gtsam_loop_closures.py [--places 24] [--drift-deg 0.6] [--seed 3]
"""
from __future__ import annotations

import argparse
import math

import numpy as np


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--places", type=int, default=24, help="frames per lap, 1 m apart")
    ap.add_argument("--drift-deg", type=float, default=0.6, help="odometry heading drift per metre (deg)")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--backbone", default="vits14", help="network of the global descriptor (random weights)")
    ap.add_argument("--input-size", type=int, default=224, help="network input size (px, multiple of 14)")
    ap.add_argument("--model-seed", type=int, default=0, help="seed of the network's random weights")
    return ap.parse_args(argv)


def run(a: argparse.Namespace) -> dict[str, float]:
    """Build, localize, optimise; returns the RMSEs (m) and the number of loop closures used."""
    import gtsam

    from vpr_ros.config import KeyframeConfig, LocalizerConfig, ModelConfig, VerificationConfig
    from vpr_ros.demo.scene3d import Scene, corridor_traversals
    from vpr_ros.demo.slam_drive import drifting_odometry
    from vpr_ros.geometry import compose, planar_pose, quat_to_matrix
    from vpr_ros.localization import Localizer
    from vpr_ros.mapping.builder import MapBuilder
    from vpr_ros.mapping.map_store import Keyframe
    from vpr_ros.runtime.factory import open_backend
    from vpr_ros.runtime.preprocess import preprocess_batch

    rng = np.random.default_rng(a.seed)
    n = a.places
    scene = Scene.corridor(length=n + 8.0, seed=a.seed)
    lap1, lap3 = corridor_traversals(n, scene=scene, seed=a.seed)
    intr = lap1.intrinsics
    # ground truth of the whole drive: lap 1 forward, lap 2 back (turned around), lap 3 forward
    back = [compose(p, planar_pose(0.0, 0.0, math.pi)) for p in lap1.poses[::-1]]
    truth = list(lap1.poses) + back + list(lap3.poses)
    # odometry: true increments with noise and a heading bias (drift)
    odo, increments = drifting_odometry(truth, a.drift_deg, rng)

    with open_backend("auto", ModelConfig(backbone=a.backbone, input_size=a.input_size, seed=a.model_seed,
                                          random_weights=True)) as backend:
        vcfg = VerificationConfig()
        builder = MapBuilder(backend, KeyframeConfig(min_distance=0.5), verification=vcfg, intrinsics=intr)
        for k in range(0, n, 8):
            imgs = lap1.images[k:k + 8]
            desc = backend.infer(preprocess_batch(imgs, backend.input_size))
            builder.add_encoded(desc, [Keyframe(t, p) for t, p in zip(lap1.stamps[k:k + 8], odo[k:k + 8])],
                                [builder.features(im, d) for im, d in zip(imgs, lap1.depths[k:k + 8])])
        loc = Localizer(backend, builder.map, LocalizerConfig(max_loop_closure_rate=2.0), vcfg)
        closures = []  # (graph index of the lap-3 pose, graph index of the lap-1 pose, relative pose, covariance)
        for i, (img, t) in enumerate(zip(lap3.images, lap3.stamps)):
            r = loc.localize(img, t, intrinsics=intr)
            if r.loop is not None and r.loop.publish and r.relative is not None:
                closures.append((2 * n + i, r.loop.db_id, r.relative, r.relative_covariance))

    def pose3(p):  # type: ignore[no-untyped-def]
        return gtsam.Pose3(gtsam.Rot3(quat_to_matrix(p[3:])), gtsam.Point3(*p[:3]))

    def optimise(with_loops: bool) -> list:
        graph = gtsam.NonlinearFactorGraph()
        values = gtsam.Values()
        graph.add(gtsam.PriorFactorPose3(0, pose3(truth[0]), gtsam.noiseModel.Isotropic.Sigma(6, 1e-4)))
        odo_noise = gtsam.noiseModel.Diagonal.Sigmas(np.array([0.02, 0.02, 0.02, 0.02, 0.02, 0.02]))
        for i, inc in enumerate(increments):
            graph.add(gtsam.BetweenFactorPose3(i, i + 1, pose3(inc), odo_noise))
        if with_loops:
            for q, m, rel, cov in closures:
                # GTSAM orders Pose3 tangent vectors (rotation, translation); ours is (translation, rotation)
                c6 = np.block([[cov[3:, 3:], cov[3:, :3]], [cov[:3, 3:], cov[:3, :3]]]) + np.eye(6) * 1e-8
                noise = gtsam.noiseModel.Robust.Create(gtsam.noiseModel.mEstimator.Huber.Create(1.345),
                                                       gtsam.noiseModel.Gaussian.Covariance(c6))
                graph.add(gtsam.BetweenFactorPose3(m, q, pose3(rel), noise))
        for i, p in enumerate(odo):
            values.insert(i, pose3(p))
        result = gtsam.LevenbergMarquardtOptimizer(graph, values).optimize()
        return [result.atPose3(i).translation() for i in range(len(odo))]

    def rmse(positions: list) -> float:
        err = [np.linalg.norm(np.asarray(p) - np.asarray(t[:3])) for p, t in zip(positions, truth)]
        return float(np.sqrt(np.mean(np.square(err))))

    return {"poses": len(truth), "closures": len(closures), "odometry": rmse([p[:3] for p in odo]),
            "without": rmse(optimise(False)), "with": rmse(optimise(True))}


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    r = run(a)
    print(f"drive: {r['poses']} poses (3 laps of {a.places} m), odometry heading drift {a.drift_deg} deg/m")
    print(f"verified loop closures used: {r['closures']} (metric relative poses from PnP on keyframe depth)")
    print(f"trajectory RMSE: odometry {r['odometry']:.3f} m | pose graph without loop closures {r['without']:.3f} m"
          f" | with loop closures {r['with']:.3f} m ({r['without'] / max(r['with'], 1e-9):.1f}x smaller)")
    return 0 if r["closures"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

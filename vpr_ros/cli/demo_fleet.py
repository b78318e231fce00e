"""``vpr_ros_demo --fleet``: three robots share one memory of places.

Three robots drive overlapping routes through a rendered corridor, each in its own odometry frame
with drift (:mod:`vpr_ros.demo.fleet_drives`). Each robot's map is built as its map builder stores
it (keyframes at their odometry poses, SIFT with depth, the camera model). The maps then find each
other through the fleet exchange the ``fleet`` nodes run (fleet codes, feature requests for
candidates, PnP verification; here in one process, without a bandwidth limit), and
``vpr_ros_merge_maps``'s code aligns robot_b's and robot_c's frames to robot_a's and writes one
merged map. The demo prints closures, precision, bytes and alignment error, and draws the
trajectories before and after merging with the inter-robot edges (``demo_output/fleet.png``).
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import numpy as np

ROBOT_IDS = {"robot_a": 1, "robot_b": 2, "robot_c": 3}
COLOURS = {"robot_a": "tab:blue", "robot_b": "tab:orange", "robot_c": "tab:green"}


def _descriptor_model(model_cfg: Any, images: list, out: Path) -> Any:  # type: ignore[type-arg]
    """The demo's model; an untrained network's descriptors make poor candidates (all alike), so
    without weights the weight-free VLAD is used, fitted on robot_a's images (said in the output)."""
    from vpr_ros.config import WEIGHT_FREE, ModelConfig
    from vpr_ros.vocabulary import Vocabulary, fit_vocabulary, rgb_chunks

    if model_cfg.arch in WEIGHT_FREE or not model_cfg.random_weights:
        return model_cfg
    settings = Vocabulary(np.zeros((2, 128), np.float32), 224, "")
    vocab, _ = fit_vocabulary(rgb_chunks(images, settings), settings, 32, f"robot_a's {len(images)} keyframes")
    vocab.save(out / "vocabulary.npz")
    print("[demo] fleet: no network weights: descriptors from the weight-free VLAD (32 words fitted on robot_a's "
          "images); an untrained network's descriptors are all alike and make poor candidates")
    return ModelConfig(arch="vlad", vocabulary=str(out / "vocabulary.npz"), input_size=vocab.input_size)


def run_fleet(args: argparse.Namespace, model_cfg: Any) -> int:
    from vpr_ros.config import VerificationConfig
    from vpr_ros.demo.fleet_drives import fleet_drives
    from vpr_ros.fleet.codec import Robot
    from vpr_ros.fleet.merge import merge_maps, offline_closures
    from vpr_ros.mapping.map_store import Keyframe, ModelIdentity, VprMap
    from vpr_ros.runtime.factory import open_backend
    from vpr_ros.runtime.preprocess import preprocess_batch
    from vpr_ros.verification.verifier import Verifier

    out = Path(args.output).resolve()
    work = out / "fleet"
    shutil.rmtree(work, ignore_errors=True)  # the demo's own output
    work.mkdir(parents=True)
    drives = fleet_drives()
    for d in drives.values():
        print(f"[demo] fleet: {d.name} drives places {d.places[0]}..{d.places[-1]} from t={d.times[0]:.0f} s in its "
              "own odometry frame (drifting 0.05 deg/m)")
    cfg = _descriptor_model(model_cfg, drives["robot_a"].images, work)
    verifier = Verifier(VerificationConfig(features="sift"))
    robots, maps = [], []
    backend = open_backend(args.backend, cfg, args.device)
    identity = ModelIdentity.of_backend(backend)
    for name, d in drives.items():
        x = np.concatenate([backend.infer(preprocess_batch(d.images[i:i + 8], backend.input_size))
                            for i in range(0, len(d.images), 8)])
        feats = [verifier.features(img).with_depth(dep, d.intrinsics) for img, dep in zip(d.images, d.depths)]
        m = VprMap.create(identity, source=f"vpr_ros_demo --fleet: {name}")
        m.add(x, [Keyframe(t, p, image_ref=f"place {pl}") for t, p, pl in zip(d.times, d.odometry, d.places)],
              feats)
        m.save(work / name)
        robots.append(Robot(name, ROBOT_IDS[name]))
        maps.append(m)
    closures = offline_closures(robots, maps)
    report = merge_maps(robots, maps, work / "merged", ROBOT_IDS["robot_a"], closures)
    for m in maps:
        m.close()
    correct = [c for c in closures if _true_error(c, drives)[0] <= 0.3]
    print(f"[demo] fleet: {len(closures)} verified inter-robot closures, {len(correct)} with the true relative pose "
          f"(precision {len(correct) / max(1, len(closures)):.2f})")
    merged = VprMap.load(work / "merged")
    for name, rid in ROBOT_IDS.items():
        f = report.frames[rid]
        state = "reference" if rid == ROBOT_IDS["robot_a"] else \
            (f"aligned through {' -> '.join(map(str, f.path))}" if f.transform is not None else f"left out: {f.reason}")
        print(f"[demo] fleet: {name}: {state}")
    met = _where_they_met(merged, drives, closures)
    print(f"[demo] fleet: where robots met, the merged map is within {100 * met[0]:.2f} cm and {met[1]:.3f} deg of the "
          "true relative poses; away from the meetings each trajectory keeps its own odometry drift")
    print(f"[demo] fleet: merged map {work / 'merged'} ({report.keyframes} keyframes, one session per robot)")
    try:
        _localize_in_merged(backend, merged)
    finally:
        backend.close()
    _plot(drives, merged, closures, out / "fleet.png")
    merged.close()
    print(f"[demo] fleet: wrote {out / 'fleet.png'}")
    return 0 if not report.left_out and len(correct) == len(closures) else 1


def _localize_in_merged(backend: Any, merged: Any) -> None:
    """A newcomer localizes in the merged map with the localizer's code: new views of places 14..19,
    which only robot_b drove; its poses come out in robot_a's frame."""
    from vpr_ros.config import LocalizerConfig, VerificationConfig
    from vpr_ros.demo.scene3d import Scene, corridor_traversals
    from vpr_ros.localization import Localizer

    _, views = corridor_traversals(20, scene=Scene.corridor(length=28.0, seed=3), seed=11)
    # VLAD cosines of one place are 0.3-0.65 here (docs/fleet.md): the localizer's default 0.5 suits the network
    loc = Localizer(backend, merged, LocalizerConfig(score_threshold=0.3), VerificationConfig(features="sift"))
    errors = []
    for p in range(14, 20):
        r = loc.localize(views.images[p], 1000.0 + p, intrinsics=views.intrinsics)
        if r.metric and r.pose is not None:
            errors.append(float(np.linalg.norm(np.subtract(r.pose[:3], views.poses[p][:3]))))
    worst = f", within {100 * max(errors):.1f} cm of the truth (robot_b's odometry drift)" if errors else ""
    print(f"[demo] fleet: a newcomer localized in the merged map with a metric pose for {len(errors)} of 6 new "
          f"views of places only robot_b drove, in robot_a's frame{worst}")


def _true_error(c: Any, drives: dict) -> tuple[float, float]:  # type: ignore[type-arg]
    from vpr_ros.geometry import compose, inverse, quat_to_matrix

    truth = compose(inverse(drives[c.robot.name].world[c.keyframe]), drives[c.other.name].world[c.other_keyframe])
    R = quat_to_matrix(c.pose[3:]).T @ quat_to_matrix(truth[3:])
    rot = float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))))
    return float(np.linalg.norm(np.subtract(c.pose[:3], truth[:3]))), rot


def _where_they_met(merged: Any, drives: dict, closures: list) -> tuple[float, float]:  # type: ignore[type-arg]
    """Worst (position m, angle deg) error of each closure's two keyframes' relative pose in the merged
    map against the true one."""
    from vpr_ros.geometry import compose, inverse, quat_to_matrix

    at = {(kf.image_ref.split("#")[0], int(kf.image_ref.split("#")[1].split()[0])): kf.pose for kf in merged.keyframes}
    worst = (0.0, 0.0)
    for c in closures:
        if (c.robot.name, c.keyframe) not in at or (c.other.name, c.other_keyframe) not in at:
            continue
        rel = compose(inverse(at[(c.robot.name, c.keyframe)]), at[(c.other.name, c.other_keyframe)])
        truth = compose(inverse(drives[c.robot.name].world[c.keyframe]), drives[c.other.name].world[c.other_keyframe])
        R = quat_to_matrix(rel[3:]).T @ quat_to_matrix(truth[3:])
        rot = float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))))
        worst = (max(worst[0], float(np.linalg.norm(np.subtract(rel[:3], truth[:3])))), max(worst[1], rot))
    return worst


def _plot(drives: dict, merged: Any, closures: list, path: Path) -> None:  # type: ignore[type-arg]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (before, after) = plt.subplots(1, 2, figsize=(13, 5.5))
    for name, d in drives.items():
        xy = np.array([p[:2] for p in d.odometry])
        before.plot(xy[:, 0], xy[:, 1], "o-", ms=3, color=COLOURS[name], label=f"{name} (its own odometry frame)")
    before.set_title("before: each robot's map in its own frame")
    pos: dict[tuple[str, int], np.ndarray] = {}
    for kf in merged.keyframes:
        name, own = kf.image_ref.split("#")[0], int(kf.image_ref.split("#")[1].split()[0])
        pos[(name, own)] = np.array(kf.pose[:2])
    for name, d in drives.items():
        truth = np.array([p[:2] for p in d.world])
        after.plot(truth[:, 0], truth[:, 1], "-", lw=6, color="0.85", zorder=0)
        xy = np.array([pos[(name, k)] for k in range(len(d.places)) if (name, k) in pos])
        if len(xy):
            after.plot(xy[:, 0], xy[:, 1], "o-", ms=3, color=COLOURS[name], label=name)
    for c in closures:
        a, b = pos.get((c.robot.name, c.keyframe)), pos.get((c.other.name, c.other_keyframe))
        if a is not None and b is not None:  # a closure at one spot is a short line: its ends are marked
            after.plot([a[0], b[0]], [a[1], b[1]], "x-", color="crimson", ms=6, lw=1.0, alpha=0.8)
    after.plot([], [], "x-", color="crimson", label="inter-robot closures (ends marked)")
    after.plot([], [], "-", lw=6, color="0.85", label="true trajectories")
    after.set_title("after merging: robot_a's frame (y stretched)")
    after.set_ylim(-1.5, 1.5)  # a 20 m corridor: at equal scale the robots' offsets would not show
    before.set_aspect("equal")
    for ax in (before, after):
        ax.set_xlabel("x (m)")
        ax.set_ylabel("y (m)")
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

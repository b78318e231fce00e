"""``vpr_ros_demo --slam``: live loop closure for a SLAM back end, through the real map_builder node.

A robot drives a rendered 3-D corridor three times in one session (forward, back, forward again)
with drifting odometry. The map_builder node (its own process, the graph of
``build_map.launch.py loop_closure:=true``) gets the images, aligned depth, the CameraInfo and the
odometry over ROS 2 topics, starting from an empty map, and publishes verified loop closures of
that session while it is being driven. A pose graph that consumes them by LIO-SAM's rules (GTSAM
ISAM2, :mod:`vpr_ros.demo.pose_graph`) removes the drift; the demo prints precision and trajectory
errors and draws the trajectories with the loop edges (``demo_output/slam.png``).
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml

CAMERA = "camera/image"


def run_slam(args: argparse.Namespace, model_cfg: Any) -> int:
    from vpr_ros.cli.demo import _isolated_ros_env
    from vpr_ros.demo.pose_graph import LioSamStyleBackEnd
    from vpr_ros.demo.slam_drive import slam_drive
    from vpr_ros.launch_graph import build_map_graph, start_graph, stop_graph
    from vpr_ros.ros.drive_player import play_drive

    out = Path(args.output).resolve()
    places = max(16, args.places // 2)
    drive = slam_drive(places=places, laps=3, seed=args.seed)
    print(f"[demo] SLAM: 3 laps of {places} m through a rendered corridor ({len(drive.images)} frames, odometry "
          "drifting 0.6 deg/m); the map_builder closes loops on the map it builds, from empty")
    map_dir = out / "slam_map"
    shutil.rmtree(map_dir, ignore_errors=True)  # the demo's own output: a fresh session
    params = {"/**": {"ros__parameters": {
        "map_dir": str(map_dir), "backend": args.backend, "qos": "reliable", "pose_qos": "reliable",
        "max_pose_wait": 5.0, "autosave_period": 0.0, "depth_topics": ["camera/depth"],
        "keyframes.min_distance": 0.5, "loop_closure.score_threshold": 0.0,
        **{f"model.{k}": v for k, v in vars(model_cfg).items()}}}}
    params_file = out / "map_builder_params.yaml"
    out.mkdir(parents=True, exist_ok=True)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    env = _isolated_ros_env()
    os.environ.update(env)
    specs = build_map_graph(params_file=str(params_file), camera_topic=CAMERA, loop_closure="true")
    print(f"[demo] starting map_builder node (ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']})")
    procs = start_graph(specs, env=env, log_dir=str(out / "logs"))
    back_end = LioSamStyleBackEnd(drive.odometry[0])
    used: list[tuple[int, int, int]] = []
    taken = [0]

    def after_frame(k: int, log: Any) -> None:  # the back end: its own keyframe, then its loop thread
        back_end.add_keyframe(drive.stamps[k], drive.increments[k - 1] if k else None)
        taken[0] = _use(log.pairs, taken[0], log.rows, back_end, used)
        print(f"\r[demo] drove {k + 1}/{len(drive.images)} m, {len(log.pairs)} loop closures received", end="",
              flush=True)

    try:
        log = play_drive(drive.images, drive.depths, drive.stamps, drive.odometry, drive.intrinsics, CAMERA,
                         "camera/depth", args.slam_rate, args.frame_timeout * 4, after_frame)
    finally:
        stop_graph(procs, [s.shutdown_timeouts for s in specs])
    print()
    if not log.came_up:
        print(f"[demo] ERROR: the map builder did not come up; see {out / 'logs' / 'map_builder.log'}")
        return 1
    _use(log.pairs, taken[0], log.rows, back_end, used)
    return _report(drive, log.pairs, used, back_end, out)


def _use(pairs: list, taken: int, rows: dict, back_end: Any, used: list) -> int:
    """The back end's loop thread: every new pair with its table row."""
    for t_cur, t_pre, at in pairs[taken:]:
        row = rows.get(round(t_cur, 6))
        keys = back_end.add_loop(t_cur, t_pre, row) if row is not None else None
        if keys is not None:
            used.append((*keys, at))
    return len(pairs)


def _report(drive: Any, pairs: list, used: list, back_end: Any, out: Path) -> int:
    truth = np.array([p[:3] for p in drive.truth])
    odo = np.array([p[:3] for p in drive.odometry])
    est = back_end.positions()
    ok = [float(np.linalg.norm(truth[c] - truth[p])) < 1.5 for c, p, _ in used]
    rmse = lambda x: float(np.sqrt(np.mean(np.sum((x - truth) ** 2, axis=1))))  # noqa: E731
    lag = [at - 1 - c for c, _, at in used if at >= 0]
    late = sum(at < 0 for _, _, at in used)
    print(f"[demo] loop closures published on vpr/loop_closures: {len(pairs)}; used by the LIO-SAM-style back end: "
          f"{len(used)}" + (f", {sum(ok)} join the same place (precision {np.mean(ok):.2f})" if used else ""))
    if lag:
        print(f"[demo] {len(lag)} arrived while driving: median {np.median(lag):.0f} frame(s) after the revisiting "
              "frame")
    if late:
        print(f"[demo] {late} arrived after the last frame was sent (the encoder was behind: a slower or busier "
              "machine than the drive's rate)")
    print(f"[demo] trajectory RMSE: odometry {rmse(odo):.2f} m, pose graph with the loop closures {rmse(est):.2f} m")
    png = _plot(truth, odo, est, used, out / "slam.png")
    print(f"[demo] wrote {png}")
    return 0 if used and all(ok) else 1


def _plot(truth: np.ndarray, odo: np.ndarray, est: np.ndarray, used: list, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(14, 5.2), sharex=True, sharey=True)
    for a, xy, title in ((ax[0], odo, "Before: odometry (drifting)"), (ax[1], est, "After: ISAM2 with vpr_ros loop "
                                                                                      "closures")):
        a.plot(truth[:, 0], truth[:, 1], color="0.6", lw=4, alpha=0.5, label="ground truth")
        a.plot(xy[:, 0], xy[:, 1], ".-", color="tab:blue", lw=1, ms=3, label="estimate")
        for c, p, _ in used:
            a.plot([xy[c, 0], xy[p, 0]], [xy[c, 1], xy[p, 1]], color="tab:red", lw=0.8)
        a.plot([], [], color="tab:red", lw=0.8, label=f"loop closures ({len(used)})")
        err = float(np.sqrt(np.mean(np.sum((xy - truth) ** 2, axis=1))))
        a.set(title=f"{title}: RMSE {err:.2f} m", xlabel="x (m)", ylabel="y (m)", aspect="equal")
        a.legend(loc="best", fontsize=8)
    fig.suptitle("vpr_ros live loop closure: one session, closures [t_cur, t_pre] used by LIO-SAM's rules", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

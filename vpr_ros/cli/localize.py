"""``vpr_ros_localize``: replay a rosbag2 recording or an image folder against a map, offline,
through the localizer node's own matching, re-ranking, verification and loop-closure rules.

Writes ``localization.csv`` (per frame: top-1 match and scores, pose, verification, loop-closure
decision, and with ground truth the position error), ``results.json`` (summary and every setting)
and ``localize.png``. The tuning workflow: change a ``--set`` (or the params file) and run again.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Iterator

from vpr_ros import __version__
from vpr_ros.cli.camera_args import add_camera_args, camera_model_of
from vpr_ros.cli import EXPECTED_ERRORS, HelpWithDefaults, positive_float, report_error
from vpr_ros.cli.model_args import add_model_args, model_with_args, warn_if_random
from vpr_ros.mapping.bag_source import is_bag
from vpr_ros.errors import ConfigError, DatasetError


def _folder_frames(folder: Path, poses_csv: str) -> tuple[list, int]:  # type: ignore[type-arg]
    from vpr_ros.datasets import list_images, read_poses_csv, read_rgb, utm_from_name
    from vpr_ros.offline_localization import OfflineFrame

    files = list_images(folder)
    poses = read_poses_csv(poses_csv) if poses_csv else None
    frames = []
    for i, f in enumerate(files):
        truth, stamp = None, float(i)
        if poses is not None:
            if f.name not in poses:
                raise DatasetError(f"{poses_csv}: no pose for image '{f.name}'")
            x, y, _, stamp = poses[f.name]
            truth = (x, y, 0.0)
        else:
            try:
                truth = (*utm_from_name(f), 0.0)
            except DatasetError:
                truth = None  # no coordinates in the name: no ground truth
        frames.append(OfflineFrame(lambda f=f: read_rgb(f), stamp, f.name, truth))
    return frames, len(frames)


def _bag_frames(bag: Path, a: argparse.Namespace) -> tuple[Iterator[Any], int]:
    from vpr_ros.mapping.bag_source import bag_frames, bag_images, count_messages
    from vpr_ros.offline_localization import OfflineFrame

    if not a.image_topic:
        raise DatasetError(f"{bag}: a bag needs --image-topic")
    total = count_messages(bag, a.image_topic)
    if a.pose_topic or a.trajectory:  # ground truth for the errors (frames without a pose are skipped)
        gen = (OfflineFrame(dec, kf.stamp, kf.image_ref, kf.pose[:3])
               for dec, kf in bag_frames(bag, a.image_topic, a.pose_topic, a.trajectory))
    else:
        gen = (OfflineFrame(dec, t, f"{bag.name}:{a.image_topic}@{t:.6f}") for dec, t, _ in bag_images(bag, a.image_topic))
    return gen, total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(formatter_class=HelpWithDefaults, prog="vpr_ros_localize", description=__doc__.splitlines()[0],
                                 epilog="Example: vpr_ros_localize ~/bags/run2 --map-dir ~/maps/lab --image-topic "
                                        "/camera/image_raw --pose-topic /odom --set score_threshold=0.6")
    ap.add_argument("source", help="folder of images, or a rosbag2 directory (.db3 / .mcap)")
    ap.add_argument("--map-dir", required=True, help="the map to localize against")
    ap.add_argument("--memory-budget-mb", type=int, default=1024,
                    help="memory (MiB) the map may take: a map whose index would take more is searched through "
                         "a compact index built at load")
    ap.add_argument("--output", default="localize_output", help="folder for localization.csv, results.json, localize.png")
    ap.add_argument("--params-file", default="", help="localizer params YAML (default: the package's config/localizer.yaml)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override one localizer parameter, e.g. --set score_threshold=0.6 or "
                         "--set verification.min_inliers=40; repeatable")
    ap.add_argument("--image-topic", default="", help="bag: image topic (Image or CompressedImage)")
    ap.add_argument("--pose-topic", default="", help="bag: ground-truth Odometry / PoseStamped topic (optional)")
    ap.add_argument("--trajectory", default="", help="bag: ground-truth TUM / CSV trajectory (optional)")
    add_camera_args(ap)
    ap.add_argument("--poses", default="", help="folder: ground-truth poses CSV image,x,y[,yaw][,stamp] (optional)")
    ap.add_argument("--correct-within", type=positive_float, default=25.0,
                    help="m: a top-1 match this close to the frame's true position counts as correct")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in logs)")
    add_model_args(ap)
    a = ap.parse_args(argv)
    try:
        return _run(a, argv)
    except EXPECTED_ERRORS as exc:
        return report_error("vpr_ros_localize", exc)


def _run(a: argparse.Namespace, argv: list[str] | None) -> int:
    import yaml

    from vpr_ros.config import LOCALIZER_SECTIONS, from_dict, load_node_config
    from vpr_ros.launch_graph import default_params_file
    from vpr_ros.localization import Localizer
    from vpr_ros.mapping.map_store import ModelIdentity, VprMap
    from vpr_ros.offline_localization import localize_frames, summarize, write_outputs
    from vpr_ros.runtime.factory import open_backend

    params = a.params_file or default_params_file("localizer.yaml")
    cfg = load_node_config(params, "localizer", LOCALIZER_SECTIONS)
    for item in a.overrides:
        key, sep, value = item.partition("=")
        section, _, name = key.rpartition(".") if "." in key else ("", "", key)
        if not sep or section not in cfg or not hasattr(cfg[section], name):
            raise ConfigError(f"--set {item}: expected KEY=VALUE with a localizer parameter, e.g. score_threshold=0.6")
        values = {**dataclasses.asdict(cfg[section]), name: yaml.safe_load(value)}
        cfg[section] = from_dict(type(cfg[section]), values, source=f"--set {item}")  # the node's type and range checks
    cfg["model"] = model_with_args(cfg["model"], a)
    node = dataclasses.replace(cfg[""], **{k: getattr(a, k) for k in ("backend", "device") if getattr(a, k)})
    source = Path(a.source)
    from_bag = is_bag(source)
    if not source.exists():
        raise DatasetError(f"{source}: no such folder or bag")
    intrinsics = camera_model_of(a, from_bag, source, "vpr_ros_localize")
    frames, total = _bag_frames(source, a) if from_bag else _folder_frames(source, a.poses)
    # one run's numbers from one backend: a missing engine is built before the replay, not swapped in
    gpu = node.gpu if node.gpu.engine_build == "never" else dataclasses.replace(node.gpu, engine_build="startup")
    with open_backend(node.backend, cfg["model"], node.device, node.engine_cache_dir or None, gpu=gpu) as backend:
        warn_if_random("vpr_ros_localize", backend)
        vmap = VprMap.load(a.map_dir, expect=ModelIdentity.of_backend(backend), verify_features=False,
                           memory_budget_mb=a.memory_budget_mb)
        localizer = Localizer(backend, vmap, node, cfg["verification"])
        if localizer.map_note:
            print(f"vpr_ros_localize: NOTE: {localizer.map_note}", file=sys.stderr)
        print(f"vpr_ros_localize: {total} frames of {source} against {len(vmap)} keyframes of {a.map_dir} "
              f"(model {backend.model_id} on '{backend.name}')", flush=True)
        rows = localize_frames(localizer, frames, intrinsics, a.correct_within, total, progress=not a.no_progress)
        title = f"{source.name} against {Path(a.map_dir).name}: {backend.model_id} ({backend.weights_source})"
        if backend.weights_source.startswith("random"):
            title += " - RANDOM WEIGHTS: the scores mean nothing"
        map_poses = vmap.poses()
    settings = {"source": str(source.resolve()), "map_dir": str(Path(a.map_dir).resolve()), "params_file": str(params),
                "overrides": a.overrides, "localizer": dataclasses.asdict(node),
                "verification": dataclasses.asdict(cfg["verification"]), "model": dataclasses.asdict(cfg["model"]),
                "image_topic": a.image_topic, "pose_topic": a.pose_topic, "trajectory": a.trajectory,
                "camera_info_topic": a.camera_info_topic, "camera_info": a.camera_info, "correct_within_m": a.correct_within,
                "command": "vpr_ros_localize " + " ".join(sys.argv[1:] if argv is None else argv),
                "vpr_ros_version": __version__}
    files = write_outputs(rows, map_poses, Path(a.output), settings, title)
    s = summarize(rows)
    line = (f"vpr_ros_localize: {s['answered']}/{s['frames']} frames answered, {s['accepted']} accepted "
            f"(score >= {node.score_threshold}), {s['loop_closures']} loop closures")
    if "top1_correct" in s:
        prec = s.get("loop_closure_precision")
        line += (f"; top-1 correct (within {a.correct_within} m) {s['top1_correct']:.3f}, loop-closure precision "
                 + (f"{prec:.2f}" if prec is not None else "n/a"))
    print(line)
    print(f"vpr_ros_localize: wrote {', '.join(str(f) for f in files)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``vpr_ros_build_map``: build a map offline from an image folder or a rosbag2 recording.

Folders: poses from gmberton-style names (``@utm_east@utm_north@...@.jpg``) or a poses CSV
(``image,x,y[,yaw][,stamp]``). Bags (.db3 or .mcap, no ROS needed): ``--image-topic`` and
either ``--pose-topic`` (Odometry / PoseStamped / PoseWithCovarianceStamped) or
``--trajectory`` (TUM or CSV). Same MapBuilder and keyframe selection as the map_builder node.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from vpr_ros.config import MAP_BUILDER_SECTIONS, load_node_config
from vpr_ros.datasets import list_images, read_poses_csv, read_rgb, utm_from_name
from vpr_ros.cli.camera_args import add_camera_args, camera_model_of
from vpr_ros.cli import EXPECTED_ERRORS, HelpWithDefaults, report_error
from vpr_ros.cli.model_args import add_model_args, model_with_args, warn_if_random
from vpr_ros.mapping.bag_source import is_bag
from vpr_ros.errors import DatasetError
from vpr_ros.geometry import planar_pose
from vpr_ros.mapping.builder import MapBuilder
from vpr_ros.mapping.map_store import Keyframe, VprMap


def _from_folder(folder: Path, poses_csv: str) -> list:  # type: ignore[type-arg]
    files = list_images(folder)
    poses = read_poses_csv(poses_csv) if poses_csv else None
    frames = []
    for i, f in enumerate(files):
        if poses is not None:
            if f.name not in poses:
                raise DatasetError(f"{poses_csv}: no pose for image '{f.name}'")
            x, y, yaw, stamp = poses[f.name]
        else:
            (x, y), yaw, stamp = utm_from_name(f), 0.0, float(i)
        frames.append((lambda f=f: read_rgb(f), Keyframe(stamp=stamp, pose=planar_pose(x, y, yaw),
                                                          image_ref=str(f.resolve()))))
    return frames


def _from_bag(builder: MapBuilder, bag: Path, a: argparse.Namespace, max_pose_age: float,
              max_gap: float) -> tuple[list[int], int]:
    from vpr_ros.mapping.bag_source import BagStats, bag_frames, count_messages

    if not bag.exists():
        raise DatasetError(f"{bag}: bag not found")
    if not a.image_topic:
        raise DatasetError(f"{bag}: a bag needs --image-topic")
    stats = BagStats()
    frames = bag_frames(bag, a.image_topic, a.pose_topic, a.trajectory, max_pose_age, stats, a.depth_topic,
                        max_gap=max_gap, tf=a.tf)
    ids = builder.add_many(frames, progress=True, total=count_messages(bag, a.image_topic))
    if stats.without_pose:
        print(f"vpr_ros_build_map: {stats.without_pose} of {stats.images} images had no pose within "
              f"{max_pose_age} s and were skipped")
    if stats.interpolated:
        print(f"vpr_ros_build_map: {stats.interpolated} of {stats.images} image poses interpolated between the poses "
              "around their stamps")
    if stats.gps_origin is not None:
        print(f"vpr_ros_build_map: GPS origin of the map frame: lat {stats.gps_origin[0]:.7f}, lon "
              f"{stats.gps_origin[1]:.7f}, alt {stats.gps_origin[2]:.1f}")
    if stats.poses_refused:
        print(f"vpr_ros_build_map: {stats.poses_refused} NavSatFix message(s) without a fix or off Earth skipped")
    if a.depth_topic:
        print(f"vpr_ros_build_map: {stats.with_depth} of {stats.images} images had an aligned depth image")
    return ids, stats.images


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(formatter_class=HelpWithDefaults, prog="vpr_ros_build_map", description=__doc__.splitlines()[0],
                                 epilog="--map-dir semantics: a new directory gets a new map; an existing map is "
                                        "replaced when the build succeeds (all or nothing), or extended with "
                                        "--append (one transaction: all or nothing); a map that cannot be read is "
                                        "never replaced; a map another process is writing is refused. --finish "
                                        "encodes the keyframes a stopped or killed map_builder node left pending.")
    ap.add_argument("source", nargs="?", default="", help="folder of images, or a rosbag2 directory (.db3 / .mcap)")
    ap.add_argument("--map-dir", required=True, help="output map directory")
    ap.add_argument("--poses", default="", help="poses CSV (default: coordinates in the file names)")
    ap.add_argument("--params-file", default="", help="map_builder params YAML (model, keyframes)")
    ap.add_argument("--append", action="store_true", help="extend an existing map in --map-dir")
    ap.add_argument("--memory-budget-mb", type=int, default=0,
                    help="memory (MiB) the map may take in a node: picks the index kind (overrides the params "
                         "file's index.memory_budget_mb; 0 = that, default 1024)")
    ap.add_argument("--finish", action="store_true",
                    help="encode the pending keyframes of --map-dir (left by a stopped map_builder node); no source. "
                         "Damaged pending rows are reported and skipped (exit status 1)")
    ap.add_argument("--drop-damaged", action="store_true",
                    help="with --finish: delete the damaged pending rows it reports (their images are lost)")
    ap.add_argument("--image-topic", default="", help="bag: image topic (Image or CompressedImage)")
    ap.add_argument("--pose-topic", default="", help="bag: Odometry / PoseStamped / PoseWithCovarianceStamped topic giving "
                    "poses, or a NavSatFix topic (east-north-up metres from the first good fix, GPS kept)")
    ap.add_argument("--trajectory", default="", help="bag: TUM or CSV trajectory file instead of a pose topic")
    ap.add_argument("--tf", default="", metavar="PARENT:CHILD",
                    help="bag: poses from the transform PARENT -> CHILD on /tf (e.g. map:base_link) instead")
    add_camera_args(ap, "sensor_msgs/CameraInfo of the camera (stored with the keyframes' local features, for "
                        "geometric verification)")
    ap.add_argument("--depth-topic", default="", help="bag: depth image aligned to the camera (16UC1 mm or 32FC1 m): "
                    "keyframes store 3-D points, verified loop closures get a metric relative pose")
    add_model_args(ap)
    a = ap.parse_args(argv)
    try:
        cfg = load_node_config(a.params_file or None, "map_builder", MAP_BUILDER_SECTIONS)
        cfg["model"] = model_with_args(cfg["model"], a)
        cfg[""] = dataclasses.replace(cfg[""], **{k: getattr(a, k) for k in ("backend", "device") if getattr(a, k)})
        if a.memory_budget_mb:
            cfg["index"] = dataclasses.replace(cfg["index"], memory_budget_mb=a.memory_budget_mb)
        if a.drop_damaged and not a.finish:
            raise DatasetError("--drop-damaged goes with --finish")
        if a.finish:
            if a.source or a.append:
                raise DatasetError("--finish takes only --map-dir (and --params-file for the model)")
            return _finish(cfg, Path(a.map_dir), a.drop_damaged)
        if not a.source:
            raise DatasetError("give a source folder or bag (or --finish)")
        return _build(cfg, a)
    except EXPECTED_ERRORS as exc:
        return report_error("vpr_ros_build_map", exc)


def _build(cfg: dict, a: argparse.Namespace) -> int:  # type: ignore[type-arg]
    from vpr_ros.mapping.map_store import MANIFEST, ModelIdentity, hold_writer_lock, is_temporary
    from vpr_ros.mapping.store.lock import LOCK_FILE
    from vpr_ros.runtime.factory import open_backend

    source, root = Path(a.source), Path(a.map_dir)
    from_bag = is_bag(source)
    if not source.exists():
        raise DatasetError(f"{source}: no such folder or bag")
    if root.exists() and not root.is_dir():
        raise DatasetError(f"--map-dir {root}: exists and is not a directory")
    had_map = (root / MANIFEST).is_file()
    if had_map and not a.append:
        VprMap.read_manifest(root)  # a map that cannot be read is refused here, never replaced
        print(f"vpr_ros_build_map: {root} holds a map; it is replaced only if this build succeeds "
              "(use --append to extend it)")
    created = not root.exists()
    lock = None
    base = None
    try:
        with open_backend(cfg[""].backend, cfg["model"], cfg[""].device, cfg[""].engine_cache_dir or None) as backend:
            warn_if_random("vpr_ros_build_map", backend)
            if a.append:  # the writer lock from now on; the additions are one transaction at the end
                base = VprMap.open_writer(root, ModelIdentity.of_backend(backend), durable=False)
            else:
                lock = hold_writer_lock(root)
            intrinsics = camera_model_of(a, from_bag, source, "vpr_ros_build_map")
            if a.depth_topic:
                if not from_bag:
                    raise DatasetError("--depth-topic applies to bags")
                if intrinsics is None:
                    raise DatasetError("--depth-topic needs --camera-info-topic or --camera-info (3-D points need "
                                       "the camera model)")
            if intrinsics is not None:
                print(f"vpr_ros_build_map: camera fx {intrinsics.fx:.1f} fy {intrinsics.fy:.1f} "
                      f"cx {intrinsics.cx:.1f} cy {intrinsics.cy:.1f} ({intrinsics.width}x{intrinsics.height})")
            map_frame = cfg[""].map_frame
            if from_bag and a.tf:
                map_frame = a.tf.partition(":")[0]
            if from_bag and a.pose_topic:  # the frame the poses are in, as the map_builder node takes it
                from vpr_ros.mapping.bag_source import bag_pose_frame

                map_frame = bag_pose_frame(source, a.pose_topic) or map_frame
                if base is not None and len(base) and base.manifest.map_frame != map_frame:
                    raise DatasetError(f"{source}: poses on {a.pose_topic} are in frame '{map_frame}', the map in "
                                       f"{root} is in '{base.manifest.map_frame}'; nothing added")
            builder = MapBuilder(backend, cfg["keyframes"], map_frame=map_frame,
                                 source=f"vpr_ros_build_map {a.source}", base=base,
                                 index=cfg["index"], verification=cfg["verification"], intrinsics=intrinsics)
            if from_bag:
                ids, n = _from_bag(builder, source, a, cfg[""].max_pose_age, cfg[""].max_interpolation_gap)
            else:
                frames = _from_folder(source, a.poses)
                n = len(frames)
                ids = builder.add_many(frames, progress=True)
            if not ids:
                kept = f"; the existing map in {root} is unchanged" if had_map else ""
                raise DatasetError(f"{a.source}: no keyframe was built from {n} images (no image had a pose, "
                                   f"or none passed the keyframe rules); nothing saved{kept}")
            builder.save(root, replace_existing=not a.append, lock=lock)
    finally:
        if base is not None:
            base.close()
        if lock is not None:
            lock.release()
        if created and root.is_dir() and not (root / MANIFEST).exists():
            for f in root.iterdir():  # a failed first build leaves no directory behind
                if f.name == LOCK_FILE or is_temporary(f.name):
                    f.unlink(missing_ok=True)
            if not any(root.iterdir()):
                root.rmdir()
    print(f"vpr_ros_build_map: {len(ids)} keyframes from {n} images -> {root}")
    return 0


def _finish(cfg: dict, root: Path, drop_damaged: bool = False) -> int:  # type: ignore[type-arg]
    """Encode a map's pending keyframes with the model of the params file; 1 when damaged pending
    rows were left in place."""
    from vpr_ros.mapping.map_store import ModelIdentity
    from vpr_ros.runtime.factory import open_backend

    VprMap.read_manifest(root)
    with open_backend(cfg[""].backend, cfg["model"], cfg[""].device, cfg[""].engine_cache_dir or None) as backend:
        warn_if_random("vpr_ros_build_map", backend)
        vmap = VprMap.open_writer(root, ModelIdentity.of_backend(backend), durable=True)
        try:
            builder = MapBuilder(backend, cfg["keyframes"], base=vmap, index=cfg["index"],
                                 verification=cfg["verification"])
            added, dropped, damaged = builder.finish_pending(progress=True, drop_damaged=drop_damaged)
            builder.save()
        finally:
            vmap.close()
    for reason in dropped:
        print(f"vpr_ros_build_map: dropped {reason}", file=sys.stderr)
    for reason in damaged:
        print(f"vpr_ros_build_map: skipped {reason}", file=sys.stderr)
    print(f"vpr_ros_build_map: {added} pending keyframe(s) encoded -> {root} ({len(vmap)} keyframes)"
          + (f"; {len(dropped)} dropped" if dropped else "")
          + (f"; {len(damaged)} damaged pending row(s) left in place: vpr_ros_build_map --finish --drop-damaged "
             f"--map-dir {root} deletes them" if damaged else ""))
    return 1 if damaged else 0


if __name__ == "__main__":
    raise SystemExit(main())

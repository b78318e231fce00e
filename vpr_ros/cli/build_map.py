"""``vpr_ros_build_map``: build a map offline from an image folder or a rosbag2 recording.

Folders: poses from gmberton-style names (``@utm_east@utm_north@...@.jpg``) or a poses CSV
(``image,x,y[,yaw][,stamp]``). Bags (.db3 or .mcap, no ROS needed): ``--image-topic`` and
either ``--pose-topic`` (Odometry / PoseStamped / PoseWithCovarianceStamped) or
``--trajectory`` (TUM or CSV). Same MapBuilder and keyframe selection as the map_builder node.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vpr_ros.config import MAP_BUILDER_SECTIONS, load_node_config
from vpr_ros.datasets import list_images, read_poses_csv, read_rgb, utm_from_name
from vpr_ros.errors import DatasetError, VprError
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


def _from_bag(builder: MapBuilder, bag: Path, a: argparse.Namespace, max_pose_age: float) -> tuple[list[int], int]:
    from vpr_ros.mapping.bag_source import BagStats, bag_frames, count_messages

    if not bag.exists():
        raise DatasetError(f"{bag}: bag not found")
    if not a.image_topic:
        raise DatasetError(f"{bag}: a bag needs --image-topic")
    stats = BagStats()
    frames = bag_frames(bag, a.image_topic, a.pose_topic, a.trajectory, max_pose_age, stats, a.depth_topic)
    ids = builder.add_many(frames, progress=True, total=count_messages(bag, a.image_topic))
    if stats.without_pose:
        print(f"vpr_ros_build_map: {stats.without_pose} of {stats.images} images had no pose within "
              f"{max_pose_age} s and were skipped")
    if a.depth_topic:
        print(f"vpr_ros_build_map: {stats.with_depth} of {stats.images} images had an aligned depth image")
    return ids, stats.images


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vpr_ros_build_map", description=__doc__.splitlines()[0])
    ap.add_argument("source", help="folder of images, or a rosbag2 directory (.db3 / .mcap)")
    ap.add_argument("--map-dir", required=True, help="output map directory")
    ap.add_argument("--poses", default="", help="poses CSV (default: coordinates in the file names)")
    ap.add_argument("--params-file", default="", help="map_builder params YAML (model, keyframes)")
    ap.add_argument("--append", action="store_true", help="extend an existing map in --map-dir")
    ap.add_argument("--image-topic", default="", help="bag: image topic (Image or CompressedImage)")
    ap.add_argument("--pose-topic", default="", help="bag: Odometry / PoseStamped topic giving poses")
    ap.add_argument("--trajectory", default="", help="bag: TUM or CSV trajectory file instead of a pose topic")
    ap.add_argument("--camera-info-topic", default="", help="bag: sensor_msgs/CameraInfo of the camera (stored "
                    "with the keyframes' local features, for geometric verification)")
    ap.add_argument("--depth-topic", default="", help="bag: depth image aligned to the camera (16UC1 mm or 32FC1 m): "
                    "keyframes store 3-D points, verified loop closures get a metric relative pose")
    a = ap.parse_args(argv)
    try:
        cfg = load_node_config(a.params_file or None, "map_builder", MAP_BUILDER_SECTIONS)
        source = Path(a.source)
        is_bag = (source / "metadata.yaml").is_file() or source.suffix in (".db3", ".mcap")
        if not source.exists():
            raise DatasetError(f"{source}: no such folder or bag")
        if Path(a.map_dir).exists() and not Path(a.map_dir).is_dir():
            raise DatasetError(f"--map-dir {a.map_dir}: exists and is not a directory")
        if not a.append and (Path(a.map_dir) / "manifest.yaml").is_file():
            print(f"vpr_ros_build_map: {a.map_dir} holds a map; it is replaced only if this build succeeds "
                  "(use --append to extend it)")
        from vpr_ros.runtime.factory import open_backend

        with open_backend(cfg[""].backend, cfg["model"], cfg[""].device,
                          cfg[""].engine_cache_dir or None) as backend:
            base = VprMap.load(a.map_dir) if a.append else None
            intrinsics = None
            if a.camera_info_topic or a.depth_topic:
                if not is_bag:
                    raise DatasetError("--camera-info-topic and --depth-topic apply to bags")
                if not a.camera_info_topic:
                    raise DatasetError("--depth-topic needs --camera-info-topic (3-D points need the camera model)")
                from vpr_ros.mapping.bag_source import bag_camera_info

                intrinsics = bag_camera_info(source, a.camera_info_topic)
                print(f"vpr_ros_build_map: camera fx {intrinsics.fx:.1f} fy {intrinsics.fy:.1f} "
                      f"cx {intrinsics.cx:.1f} cy {intrinsics.cy:.1f} ({intrinsics.width}x{intrinsics.height})")
            builder = MapBuilder(backend, cfg["keyframes"], map_frame=cfg[""].map_frame,
                                 source=f"vpr_ros_build_map {a.source}", base=base,
                                 index=cfg["index"], verification=cfg["verification"], intrinsics=intrinsics)
            if is_bag:
                ids, n = _from_bag(builder, source, a, cfg[""].max_pose_age)
            else:
                frames = _from_folder(source, a.poses)
                n = len(frames)
                ids = builder.add_many(frames, progress=True)
            if not ids:
                kept = (f"; the existing map in {a.map_dir} is unchanged"
                        if (Path(a.map_dir) / "manifest.yaml").is_file() else "")
                raise DatasetError(f"{a.source}: no keyframe was built from {n} images (no image had a pose, "
                                   f"or none passed the keyframe rules); nothing saved{kept}")
            builder.save(a.map_dir)
        print(f"vpr_ros_build_map: {len(ids)} keyframes from {n} images -> {a.map_dir}")
        return 0
    except VprError as exc:
        print(f"vpr_ros_build_map: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

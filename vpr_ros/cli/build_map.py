"""``vpr_ros_build_map``: build a map offline from an image folder.

Poses come from gmberton-style names (``@utm_east@utm_north@...@.jpg``) or from a poses
CSV (``image,x,y[,yaw][,stamp]``). Uses the same MapBuilder and keyframe selection as
the map_builder node.
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vpr_ros_build_map", description=__doc__.splitlines()[0])
    ap.add_argument("images", help="folder of images")
    ap.add_argument("--map-dir", required=True, help="output map directory")
    ap.add_argument("--poses", default="", help="poses CSV (default: coordinates in the file names)")
    ap.add_argument("--params-file", default="", help="map_builder params YAML (model, keyframes)")
    ap.add_argument("--append", action="store_true", help="extend an existing map in --map-dir")
    a = ap.parse_args(argv)
    try:
        cfg = load_node_config(a.params_file or None, "map_builder", MAP_BUILDER_SECTIONS)
        files = list_images(Path(a.images))
        poses = read_poses_csv(a.poses) if a.poses else None
        from vpr_ros.runtime.factory import open_backend

        with open_backend(cfg[""].backend, cfg["model"], cfg[""].device,
                          cfg[""].engine_cache_dir or None) as backend:
            base = VprMap.load(a.map_dir) if a.append else None
            builder = MapBuilder(backend, cfg["keyframes"], map_frame=cfg[""].map_frame,
                                 source=f"vpr_ros_build_map {a.images}", base=base,
                                 index=cfg["index"])
            frames = []
            for i, f in enumerate(files):
                if poses is not None:
                    if f.name not in poses:
                        raise DatasetError(f"{a.poses}: no pose for image '{f.name}'")
                    x, y, yaw, stamp = poses[f.name]
                else:
                    (x, y), yaw, stamp = utm_from_name(f), 0.0, float(i)
                frames.append((read_rgb(f), Keyframe(stamp=stamp, pose=planar_pose(x, y, yaw),
                                                     image_ref=str(f.resolve()))))
            ids = builder.add_many(frames, progress=True)
            builder.save(a.map_dir)
        print(f"vpr_ros_build_map: {len(ids)} keyframes from {len(files)} images -> {a.map_dir}")
        return 0
    except VprError as exc:
        print(f"vpr_ros_build_map: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

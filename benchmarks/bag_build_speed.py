"""Map building from a rosbag2 file vs the model alone, in images per second, side by side.

Writes a synthetic bag (procedural street, Image + Odometry, every frame a keyframe), builds a
map from it with the offline builder (read, decode, preprocess, infer in batches, index, save),
and runs the model alone on the same number of preprocessed images with the same batch size.

    python benchmarks/bag_build_speed.py [--frames 120] [--model-config models/d2vpr_student.yaml]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--model-config", default="models/d2vpr_student.yaml")
    ap.add_argument("--backend", default="auto")
    a = ap.parse_args(argv)
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    from vpr_ros.config import KeyframeConfig, model_config_from
    from vpr_ros.demo.synthetic import make_traversals
    from vpr_ros.mapping.bag_source import bag_frames
    from vpr_ros.mapping.builder import MapBuilder
    from vpr_ros.runtime.factory import open_backend
    from vpr_ros.runtime.preprocess import preprocess_batch

    ts = get_typestore(Stores.ROS2_HUMBLE)
    T = ts.types
    tmp = Path(tempfile.mkdtemp(prefix="vpr_bag_bench_"))
    first, _ = make_traversals(n_places=a.frames, size=(480, 640))
    with Writer(tmp / "bag", version=9) as w:
        cam = w.add_connection("/cam", "sensor_msgs/msg/Image", typestore=ts)
        od = w.add_connection("/odom", "nav_msgs/msg/Odometry", typestore=ts)
        for img, t, p in zip(first.images, first.stamps, first.poses):
            sec, ns = int(t), int((t - int(t)) * 1e9)
            hdr = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=sec, nanosec=ns), frame_id="cam")
            pose = T["geometry_msgs/msg/Pose"](position=T["geometry_msgs/msg/Point"](x=p[0], y=p[1], z=0.0),
                                               orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0))
            zero = T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0)
            odom = T["nav_msgs/msg/Odometry"](
                header=hdr, child_frame_id="base", pose=T["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=np.zeros(36)),
                twist=T["geometry_msgs/msg/TwistWithCovariance"](twist=T["geometry_msgs/msg/Twist"](linear=zero, angular=zero),
                                                                 covariance=np.zeros(36)))
            msg = T["sensor_msgs/msg/Image"](header=hdr, height=img.shape[0], width=img.shape[1], encoding="rgb8",
                                             is_bigendian=0, step=img.shape[1] * 3, data=img.reshape(-1))
            w.write(od, int(t * 1e9), ts.serialize_cdr(odom, "nav_msgs/msg/Odometry"))
            w.write(cam, int(t * 1e9) + 1, ts.serialize_cdr(msg, "sensor_msgs/msg/Image"))
    cfg = model_config_from(a.model_config)
    with open_backend(a.backend, cfg, "cpu", cache_dir=tmp / "cache") as backend:
        s = backend.input_size
        x = preprocess_batch(first.images[:8], s)
        backend.infer(x)  # warm-up
        t0 = time.perf_counter()
        for i in range(0, a.frames, 8):
            backend.infer(x[: min(8, a.frames - i)])
        model_only = a.frames / (time.perf_counter() - t0)
        builder = MapBuilder(backend, KeyframeConfig(min_distance=0.5))
        t0 = time.perf_counter()
        ids = builder.add_many(bag_frames(tmp / "bag", "/cam", "/odom"), batch_size=8)
        builder.save(tmp / "map")
        full = len(ids) / (time.perf_counter() - t0)
        print(f"backend {backend.name}, {a.frames} frames of 640x480 rgb8, all keyframes")
        print(f"model only: {model_only:.2f} img/s; map build from bag: {full:.2f} img/s "
              f"({full / model_only:.0%} of model-only)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

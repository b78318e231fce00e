"""Offline map building from rosbag2 files written by the tests with ``rosbags`` (.db3 and .mcap)."""
from __future__ import annotations

import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from vpr_ros.cli.build_map import main as build_map
from vpr_ros.mapping.map_store import VprMap

from conftest import TINY_MODEL

TS = get_typestore(Stores.ROS2_HUMBLE)
T = TS.types


def header(t: float, frame: str = "cam") -> object:
    sec = int(t)
    return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=sec, nanosec=int((t - sec) * 1e9)),
                                    frame_id=frame)


def image_msg(rgb: np.ndarray, t: float, encoding: str = "rgb8") -> object:
    h, w = rgb.shape[:2]
    return T["sensor_msgs/msg/Image"](header=header(t), height=h, width=w, encoding=encoding, is_bigendian=0,
                                      step=w * 3, data=np.ascontiguousarray(rgb, np.uint8).reshape(-1))


def odom_msg(t: float, x: float, y: float = 0.0) -> object:
    pose = T["geometry_msgs/msg/Pose"](position=T["geometry_msgs/msg/Point"](x=x, y=y, z=0.0),
                                       orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0))
    twist = T["geometry_msgs/msg/Twist"](linear=T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0),
                                         angular=T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0))
    return T["nav_msgs/msg/Odometry"](
        header=header(t, "odom"), child_frame_id="base_link",
        pose=T["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=np.zeros(36)),
        twist=T["geometry_msgs/msg/TwistWithCovariance"](twist=twist, covariance=np.zeros(36)))


def write_bag(path, traversal, storage=StoragePlugin.SQLITE3, encoding="rgb8", odom=True, nan_at=None):
    with Writer(path, version=9, storage_plugin=storage) as w:
        cam = w.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=TS)
        od = w.add_connection("/odom", "nav_msgs/msg/Odometry", typestore=TS) if odom else None
        for i, (img, t, pose) in enumerate(zip(traversal.images, traversal.stamps, traversal.poses)):
            ns = int(t * 1e9) + 1
            if od is not None:
                x = float("nan") if i == nan_at else pose[0]
                w.write(od, ns, TS.serialize_cdr(odom_msg(t, x), "nav_msgs/msg/Odometry"))
            w.write(cam, ns + 10, TS.serialize_cdr(image_msg(img, t, encoding), "sensor_msgs/msg/Image"))
    return path


@pytest.fixture()
def params(tmp_path):
    p = tmp_path / "mb.yaml"
    p.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        **{f"model.{k}": v for k, v in TINY_MODEL.items()}, "keyframes.min_distance": 1.5}}}))
    return str(p)


@pytest.mark.parametrize("storage", [StoragePlugin.SQLITE3, StoragePlugin.MCAP])
def test_build_map_from_bag_with_odometry(tmp_path, traversals, params, storage, capsys):
    bag = write_bag(tmp_path / "run1", traversals[0], storage)
    assert build_map([str(bag), "--map-dir", str(tmp_path / "map"), "--image-topic", "/camera/image_raw",
                      "--pose-topic", "/odom", "--params-file", params]) == 0
    vmap = VprMap.load(tmp_path / "map")
    xs = [k.pose[0] for k in vmap.keyframes]
    assert xs == [float(x) for x in range(0, 24, 2)]  # every >= 1.5 m along 0..23 m
    assert vmap.keyframes[1].stamp == pytest.approx(traversals[0].stamps[2], abs=1e-6)
    assert vmap.keyframes[0].image_ref.startswith("run1:/camera/image_raw@")
    assert "12 keyframes from 24 images" in capsys.readouterr().out


def test_build_map_from_bag_with_tum_trajectory(tmp_path, traversals, params):
    first = traversals[0]
    bag = write_bag(tmp_path / "cam_only", first, odom=False)
    tum = tmp_path / "traj.tum"
    tum.write_text("# t x y z qx qy qz qw\n" + "".join(
        f"{t:.6f} {p[0]} {p[1]} 0 0 0 0 1\n" for t, p in zip(first.stamps, first.poses)))
    assert build_map([str(bag), "--map-dir", str(tmp_path / "map"), "--image-topic", "/camera/image_raw",
                      "--trajectory", str(tum), "--params-file", params]) == 0
    assert len(VprMap.load(tmp_path / "map")) == 12


def test_bad_bags_give_clear_errors_and_keep_the_old_map(tmp_path, traversals, params, capsys):
    good = write_bag(tmp_path / "good", traversals[0])
    out = str(tmp_path / "map")
    common = ["--map-dir", out, "--params-file", params, "--pose-topic", "/odom"]
    assert build_map([str(good), "--image-topic", "/camera/image_raw", *common]) == 0
    before = VprMap.load(out)
    capsys.readouterr()
    assert build_map([str(good), "--image-topic", "/front/image", *common]) == 2
    err = capsys.readouterr().err
    assert "no image topic '/front/image'" in err and "/camera/image_raw (sensor_msgs/msg/Image)" in err
    weird = write_bag(tmp_path / "weird", traversals[0], encoding="yuv_weird")
    assert build_map([str(weird), "--image-topic", "/camera/image_raw", *common]) == 2
    assert "unsupported image encoding 'yuv_weird'" in capsys.readouterr().err
    nan = write_bag(tmp_path / "nan", traversals[0], nan_at=5)
    assert build_map([str(nan), "--image-topic", "/camera/image_raw", *common]) == 2
    assert "NaN" in capsys.readouterr().err
    assert build_map([str(tmp_path / "nope.mcap"), "--image-topic", "/x", *common]) == 2
    after = VprMap.load(out)  # failed builds lost nothing
    assert after.manifest.generation == before.manifest.generation and len(after) == len(before)

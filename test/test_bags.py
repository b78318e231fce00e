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
    assert "non-finite values" in capsys.readouterr().err
    assert build_map([str(tmp_path / "nope.mcap"), "--image-topic", "/x", *common]) == 2
    after = VprMap.load(out)  # failed builds lost nothing
    assert after.manifest.generation == before.manifest.generation and len(after) == len(before)


def test_bag_with_camera_info_and_depth_stores_3d_points(tmp_path, params, capsys):
    """A rendered drive recorded with CameraInfo and aligned 32FC1 depth: every keyframe keeps its
    local features' 3-D points and the camera model, so loop closures against it can be metric."""
    from vpr_ros.demo.scene3d import corridor_traversals

    first, _ = corridor_traversals(6)
    c = first.intrinsics
    path = tmp_path / "rgbd"
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        cam = w.add_connection("/cam/image", "sensor_msgs/msg/Image", typestore=TS)
        dep = w.add_connection("/cam/depth", "sensor_msgs/msg/Image", typestore=TS)
        inf = w.add_connection("/cam/camera_info", "sensor_msgs/msg/CameraInfo", typestore=TS)
        od = w.add_connection("/odom", "nav_msgs/msg/Odometry", typestore=TS)
        info = T["sensor_msgs/msg/CameraInfo"](
            header=header(0.0), height=c.height, width=c.width, distortion_model="plumb_bob", d=np.zeros(5),
            k=np.array([c.fx, 0, c.cx, 0, c.fy, c.cy, 0, 0, 1.0]), r=np.eye(3).ravel(), p=np.zeros(12),
            binning_x=0, binning_y=0, roi=T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0,
                                                                               width=0, do_rectify=False))
        w.write(inf, 1, TS.serialize_cdr(info, "sensor_msgs/msg/CameraInfo"))
        for img, d, t, pose in zip(first.images, first.depths, first.stamps, first.poses):
            ns = int(t * 1e9) + 10
            w.write(od, ns, TS.serialize_cdr(odom_msg(t, pose[0], pose[1]), "nav_msgs/msg/Odometry"))
            h, wd = d.shape
            depth = T["sensor_msgs/msg/Image"](header=header(t), height=h, width=wd, encoding="32FC1", is_bigendian=0,
                                              step=wd * 4, data=np.frombuffer(d.astype(np.float32).tobytes(), np.uint8))
            w.write(dep, ns + 1, TS.serialize_cdr(depth, "sensor_msgs/msg/Image"))
            w.write(cam, ns + 2, TS.serialize_cdr(image_msg(img, t), "sensor_msgs/msg/Image"))
    assert build_map([str(path), "--map-dir", str(tmp_path / "map"), "--image-topic", "/cam/image",
                      "--pose-topic", "/odom", "--camera-info-topic", "/cam/camera_info", "--depth-topic", "/cam/depth",
                      "--params-file", params]) == 0
    assert "6 of 6 images had an aligned depth image" in capsys.readouterr().out
    vmap = VprMap.load(tmp_path / "map")
    f = vmap.local_features(0)
    assert f.intrinsics is not None and f.intrinsics.fx == c.fx and f.points3d is not None
    assert build_map([str(path), "--map-dir", str(tmp_path / "m2"), "--image-topic", "/cam/image",
                      "--pose-topic", "/odom", "--depth-topic", "/cam/depth", "--params-file", params]) == 2
    assert "--depth-topic needs --camera-info-topic" in capsys.readouterr().err


@pytest.mark.torch
def test_build_map_takes_the_model_flags_of_every_command_and_warns_about_random_weights(tmp_path, capsys):
    """--model-config / --backbone / --backend as on vpr_ros_eval (one set of flags), overriding
    the params file; a random network says so."""
    import yaml

    from test_evaluation import make_gmberton

    data = make_gmberton(tmp_path / "city", n=3)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({"model": dict(TINY_MODEL)}))
    assert build_map([str(data / "database"), "--map-dir", str(tmp_path / "map"), "--model-config",
                      str(tmp_path / "tiny.yaml"), "--backend", "torch"]) == 0
    assert "WARNING: random weights" in capsys.readouterr().err
    model = VprMap.load(tmp_path / "map").manifest.model
    assert model.model_id.startswith(f"d2vpr-{TINY_MODEL['backbone']}-{TINY_MODEL['input_size']}-")


@pytest.mark.torch
@pytest.mark.ros
def test_offline_and_node_builders_make_the_same_map_from_one_bag(tmp_path, traversals, rclpy_context):
    """The bag's messages fed to a map_builder node and the bag given to vpr_ros_build_map give the
    same map: same frame (the odometry's 'odom'), same keyframes (choice and stamps), same poses."""
    from nav_msgs.msg import Odometry
    from rosbags.highlevel import AnyReader

    from test_nodes import feeding_map_builder, odometry, until
    from vpr_ros.ros.conversions import rgb_to_image

    first = traversals[0]
    bag = write_bag(tmp_path / "bag", first)
    p = tmp_path / "p.yaml"
    keyframes = {"keyframes.min_distance": 1.5}  # not every frame: the choice itself is compared
    p.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"backend": "torch", **keyframes,
                                                             **{f"model.{k}": v for k, v in TINY_MODEL.items()}}}}))
    assert build_map([str(bag), "--map-dir", str(tmp_path / "offline"), "--image-topic", "/camera/image_raw",
                      "--pose-topic", "/odom", "--params-file", str(p)]) == 0
    with AnyReader([bag]) as reader:  # the bag's own messages, in bag order
        msgs = [(c.topic, reader.deserialize(raw, c.msgtype)) for c, _, raw in reader.messages()]
    with feeding_map_builder(tmp_path / "online", "bag_feeder", Odometry, "odom", max_pose_wait=30.0,
                             backend="torch", **keyframes) as (node, _, pub_img, pub_odom):
        for topic, m in msgs:
            t = m.header.stamp.sec + m.header.stamp.nanosec * 1e-9
            if topic == "/odom":
                p_ = m.pose.pose
                pub_odom.publish(odometry(t, (p_.position.x, p_.position.y, p_.position.z, p_.orientation.x,
                                              p_.orientation.y, p_.orientation.z, p_.orientation.w), m.header.frame_id))
            else:
                pub_img.publish(rgb_to_image(np.asarray(m.data, np.uint8).reshape(m.height, m.width, 3), t,
                                             m.header.frame_id))
        n_images = sum(topic != "/odom" for topic, _ in msgs)
        assert until(lambda: node.images == n_images and not node._waiting and node._queue.unfinished_tasks == 0,
                     timeout=120)
    offline, online = VprMap.load(tmp_path / "offline"), VprMap.load(tmp_path / "online")
    assert offline.manifest.map_frame == online.manifest.map_frame == "odom"
    assert 1 < len(offline) < len(first.images) and len(online) == len(offline)
    assert [k.stamp for k in online.keyframes] == pytest.approx([k.stamp for k in offline.keyframes], abs=1e-6)
    assert np.abs(online.poses() - offline.poses()).max() < 1e-6
    assert [k.frame_id for k in online.keyframes] == [k.frame_id for k in offline.keyframes]  # the camera's frame


def _fix_msg(t: float, lat: float, lon: float, status: int = 0) -> object:
    st = T["sensor_msgs/msg/NavSatStatus"](status=status, service=1)
    return T["sensor_msgs/msg/NavSatFix"](header=header(t, "gps"), status=st, latitude=lat, longitude=lon,
                                          altitude=500.0, position_covariance=np.zeros(9),
                                          position_covariance_type=0)


def _tf_msg(t: float, x: float) -> object:
    tr = T["geometry_msgs/msg/TransformStamped"](
        header=header(t, "map"), child_frame_id="base_link",
        transform=T["geometry_msgs/msg/Transform"](translation=T["geometry_msgs/msg/Vector3"](x=x, y=0.0, z=0.0),
                                                   rotation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)))
    return T["tf2_msgs/msg/TFMessage"](transforms=[tr])


def test_offline_builder_takes_navsatfix_and_tf_and_interpolates_like_the_node(tmp_path, traversals, params, capsys):
    """The pose sources the node has, offline: a NavSatFix topic (ENU from the first good fix, a
    NO_FIX message skipped, GPS kept on the keyframes), a /tf edge, and poses at 1/4 of the image
    rate interpolated between the poses around each image."""
    first = traversals[0]
    bag = tmp_path / "gps_tf"
    with Writer(bag, version=9, storage_plugin=StoragePlugin.SQLITE3) as w:
        cam = w.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=TS)
        fix = w.add_connection("/fix", "sensor_msgs/msg/NavSatFix", typestore=TS)
        tf = w.add_connection("/tf", "tf2_msgs/msg/TFMessage", typestore=TS)
        w.write(fix, 1, TS.serialize_cdr(_fix_msg(first.stamps[0] + 0.01, 48.0, 11.0, status=-1), "sensor_msgs/msg/NavSatFix"))
        for i, (img, t) in enumerate(zip(first.images, first.stamps)):
            ns = int(t * 1e9) + 5
            if i % 4 == 0 or i == len(first.images) - 1:  # sparse poses: the images between are interpolated
                w.write(fix, ns, TS.serialize_cdr(_fix_msg(t, 48.0 + i / 111_199.0, 11.0), "sensor_msgs/msg/NavSatFix"))
                w.write(tf, ns, TS.serialize_cdr(_tf_msg(t, float(i)), "tf2_msgs/msg/TFMessage"))
            w.write(cam, ns + 10, TS.serialize_cdr(image_msg(img, t + 0.25), "sensor_msgs/msg/Image"))
    common = ["--image-topic", "/camera/image_raw", "--params-file", params]
    assert build_map([str(bag), "--map-dir", str(tmp_path / "gps"), "--pose-topic", "/fix", *common]) == 0
    out = capsys.readouterr().out
    assert "1 NavSatFix message(s) without a fix or off Earth skipped" in out and "interpolated" in out
    pose_t = [t for i, t in enumerate(first.stamps) if i % 4 == 0 or i == len(first.images) - 1]
    pose_x = [float(i) for i in range(len(first.images)) if i % 4 == 0 or i == len(first.images) - 1]
    gps_map = VprMap.load(tmp_path / "gps")
    assert gps_map.manifest.map_frame == "map" and all(k.gps is not None for k in gps_map.keyframes)
    stamps = np.array([k.stamp for k in gps_map.keyframes])
    want = np.interp(stamps, pose_t, pose_x)  # between the poses around each image; the last: the nearest
    assert np.abs(gps_map.poses()[:, 1] - want).max() < 0.02  # north: 1 m per frame (ENU from the first fix)
    assert build_map([str(bag), "--map-dir", str(tmp_path / "tf"), "--tf", "map:base_link", *common]) == 0
    tf_map = VprMap.load(tmp_path / "tf")
    assert tf_map.manifest.map_frame == "map" and len(tf_map) == len(gps_map)
    assert np.abs(tf_map.poses()[:, 0] - np.interp([k.stamp for k in tf_map.keyframes], pose_t, pose_x)).max() < 1e-6

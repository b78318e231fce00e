"""Frames for map building from rosbag2 recordings (.db3 and .mcap), read with ``rosbags``.

No ROS installation is needed. Poses come from an odometry-like topic
(``nav_msgs/msg/Odometry``, ``geometry_msgs/msg/PoseStamped`` or ``PoseWithCovarianceStamped``)
or from a trajectory file (TUM: ``t x y z qx qy qz qw`` per line; or CSV with a header
``stamp,x,y,z,qx,qy,qz,qw``). Each image is paired with the pose nearest in time (within
``max_pose_age`` seconds). Images are decoded lazily: only frames that become keyframes are.
"""
from __future__ import annotations

import bisect
import csv
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from vpr_ros.errors import DatasetError, ImageError, MapError, VprError
from vpr_ros.files import read_text
from vpr_ros.geometry import pose_problem
from vpr_ros.images import compressed_to_rgb, depth_to_metres, raw_to_rgb
from vpr_ros.mapping.map_store import Keyframe

if TYPE_CHECKING:
    from vpr_ros.verification.features import CameraIntrinsics

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
POSE_TYPES = ("nav_msgs/msg/Odometry", "geometry_msgs/msg/PoseStamped", "geometry_msgs/msg/PoseWithCovarianceStamped",
              "sensor_msgs/msg/NavSatFix")
TF_TYPES = ("tf2_msgs/msg/TFMessage",)

Pose7 = tuple[float, float, float, float, float, float, float]


@dataclass
class BagStats:
    """Counts of what was read (for the report at the end of a build)."""

    images: int = 0
    without_pose: int = 0
    with_depth: int = 0
    poses: int = 0
    interpolated: int = 0
    poses_refused: int = 0        # NavSatFix without a fix or not a position on Earth
    gps_origin: tuple[float, float, float] | None = None
    cameras: set[str] = field(default_factory=set)


class PoseTrack:
    """Time-sorted poses; lookups interpolate between the two poses around a stamp (as the
    map_builder node does), else take the nearest within ``max_age``."""

    def __init__(self, stamps: list[float], poses: list[Pose7], source: str,
                 gps: list[tuple[float, float, float] | None] | None = None) -> None:
        order = np.argsort(stamps, kind="stable")
        self.stamps = [float(stamps[i]) for i in order]
        self.poses = [poses[i] for i in order]
        self.gps = [gps[i] for i in order] if gps is not None else [None] * len(order)
        self.source = source
        for t, p in zip(self.stamps, self.poses):
            problem = pose_problem(t, p)
            if problem:
                raise MapError(f"{source}: pose at stamp {t} has {problem}")

    def __len__(self) -> int:
        return len(self.stamps)

    def at(self, t: float, max_age: float, max_gap: float = 0.0) -> Pose7 | None:
        """The pose at ``t`` (see :meth:`sample`), or None."""
        s = self.sample(t, max_age, max_gap)
        return s[0] if s is not None else None

    def sample(self, t: float, max_age: float, max_gap: float = 0.0
               ) -> tuple[Pose7, tuple[float, float, float] | None, str] | None:
        """(pose, GPS fix, how: 'exact' / 'interpolated' / 'nearest') at ``t``: interpolated (slerp)
        between the poses around ``t`` when they are at most ``max_gap`` s apart, else the nearest
        one within ``max_age`` s, else None."""
        from vpr_ros.mapping.pose_pairing import StampedPose, interpolate

        i = bisect.bisect_left(self.stamps, t)
        if i < len(self.stamps) and self.stamps[i] == t:
            return self.poses[i], self.gps[i], "exact"
        if 0 < i < len(self.stamps) and self.stamps[i] - self.stamps[i - 1] <= max_gap:
            a = StampedPose(self.stamps[i - 1], self.poses[i - 1], self.gps[i - 1], "")
            b = StampedPose(self.stamps[i], self.poses[i], self.gps[i], "")
            m = interpolate(a, b, t)
            return m.pose, m.gps, "interpolated"  # type: ignore[return-value]
        best = min((j for j in (i - 1, i) if 0 <= j < len(self.stamps)),
                   key=lambda j: abs(self.stamps[j] - t), default=None)
        if best is None or abs(self.stamps[best] - t) > max_age:
            return None
        return self.poses[best], self.gps[best], "nearest"


def read_trajectory(path: str | Path) -> PoseTrack:
    """TUM (``t x y z qx qy qz qw``, '#' comments) or CSV (header stamp,x,y,z,qx,qy,qz,qw)."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: trajectory file not found")
    stamps: list[float] = []
    poses: list[Pose7] = []
    text = read_text(p, "trajectory file", DatasetError).splitlines()
    is_csv = bool(text) and text[0].replace(" ", "").lower().startswith(("stamp,", "t,", "time,"))
    rows = list(csv.reader(text[1:])) if is_csv else [ln.split() for ln in text if ln.strip() and not ln.startswith("#")]
    for row_no, row in enumerate(rows, start=2 if is_csv else 1):
        try:
            vals = [float(v) for v in row]
        except ValueError:
            raise DatasetError(f"{p}: line {row_no} is not numeric: {row}") from None
        if len(vals) != 8:
            raise DatasetError(f"{p}: line {row_no} has {len(vals)} values, expected 8 (t x y z qx qy qz qw)")
        problem = pose_problem(vals[0], vals[1:])
        if problem:
            raise DatasetError(f"{p}: line {row_no} has {problem}")
        if stamps and vals[0] <= stamps[-1]:
            raise DatasetError(f"{p}: line {row_no} has stamp {vals[0]!r}, not after the previous one "
                               f"({stamps[-1]!r}): a trajectory lists each stamp once, in time order")
        stamps.append(vals[0])
        poses.append(tuple(vals[1:]))  # type: ignore[arg-type]
    if not stamps:
        raise DatasetError(f"{p}: no poses")
    return PoseTrack(stamps, poses, str(p))


def _topic_track(reader: Any, bag: Path, topic: str, stats: BagStats) -> PoseTrack:
    """Poses of an Odometry / PoseStamped / PoseWithCovarianceStamped topic, or of a NavSatFix topic
    as the map_builder node makes them: east-north-up metres from the first good fix, which (with
    every fix) is kept as the keyframes' GPS; fixes without a fix or off Earth are skipped, counted."""
    from vpr_ros.geometry import enu_from_geodetic

    stamps: list[float] = []
    poses: list[Pose7] = []
    fixes: list[tuple[float, float, float] | None] = []
    for conn, _, raw in reader.messages(connections=_connections(reader, topic, POSE_TYPES, bag, "pose")):
        msg = reader.deserialize(raw, conn.msgtype)
        if conn.msgtype == "sensor_msgs/msg/NavSatFix":
            gps = (float(msg.latitude), float(msg.longitude), float(msg.altitude))
            if msg.status.status < 0 or not all(math.isfinite(v) for v in gps) \
                    or not (-90.0 <= gps[0] <= 90.0 and -180.0 <= gps[1] <= 180.0):
                stats.poses_refused += 1
                continue
            if stats.gps_origin is None:
                stats.gps_origin = gps
            e, n, u = enu_from_geodetic(*gps, stats.gps_origin)
            stamps.append(_stamp(msg))
            poses.append((e, n, u, 0.0, 0.0, 0.0, 1.0))
            fixes.append(gps)
            continue
        stamps.append(_stamp(msg))
        poses.append(_pose_of(msg))
        fixes.append(None)
    return PoseTrack(stamps, poses, f"{bag}:{topic}", fixes)


def _tf_track(reader: Any, bag: Path, pair: str) -> PoseTrack:
    """Poses of the transform PARENT:CHILD (e.g. 'map:base_link') as published on /tf and
    /tf_static (one direct edge of the tree, not a chain)."""
    parent, sep, child = pair.partition(":")
    if not sep or not parent or not child:
        raise DatasetError(f"--tf {pair!r}: expected PARENT:CHILD, e.g. map:base_link")
    conns = [c for c in reader.connections if c.topic in ("/tf", "/tf_static") and c.msgtype in TF_TYPES]
    if not conns:
        raise DatasetError(f"{bag}: no /tf or /tf_static topic (tf2_msgs/TFMessage)")
    stamps: list[float] = []
    poses: list[Pose7] = []
    for conn, _, raw in reader.messages(connections=conns):
        for tr in reader.deserialize(raw, conn.msgtype).transforms:
            if tr.header.frame_id.lstrip("/") == parent.lstrip("/") and tr.child_frame_id.lstrip("/") == child.lstrip("/"):
                p, q = tr.transform.translation, tr.transform.rotation
                stamps.append(_stamp(tr))
                poses.append((p.x, p.y, p.z, q.x, q.y, q.z, q.w))
    if not stamps:
        raise DatasetError(f"{bag}: no transform {parent} -> {child} on /tf or /tf_static")
    return PoseTrack(stamps, poses, f"{bag}:/tf {parent}->{child}")


def _stamp(msg: Any) -> float:
    return float(msg.header.stamp.sec) + float(msg.header.stamp.nanosec) * 1e-9


def _pose_of(msg: Any) -> Pose7:
    pose = msg.pose.pose if hasattr(msg.pose, "pose") else msg.pose
    p, q = pose.position, pose.orientation
    return (p.x, p.y, p.z, q.x, q.y, q.z, q.w)


def _connections(reader: Any, topic: str, types: tuple[str, ...], bag: Path, what: str) -> list[Any]:
    conns = [c for c in reader.connections if c.topic == topic]
    if not conns:
        available = ", ".join(sorted(f"{c.topic} ({c.msgtype})" for c in reader.connections))
        raise DatasetError(f"{bag}: no {what} topic '{topic}'; the bag has: {available}")
    bad = [c.msgtype for c in conns if c.msgtype not in types]
    if bad:
        raise DatasetError(f"{bag}: topic '{topic}' has type {bad[0]}, expected one of {', '.join(types)}")
    return conns


def _decoder(msg: Any, bag: Path, topic: str, t: float) -> Callable[[], np.ndarray]:
    def decode() -> np.ndarray:
        try:
            if hasattr(msg, "format"):
                return compressed_to_rgb(msg.format, msg.data)
            return raw_to_rgb(msg.encoding, msg.height, msg.width, msg.step, bool(msg.is_bigendian), msg.data)
        except ImageError as exc:
            raise ImageError(f"{bag}: topic '{topic}' at stamp {t:.6f}: {exc}") from None
    return decode


@contextmanager
def _reading(bag: Path) -> Iterator[None]:
    """Whatever a damaged bag makes the reader raise (truncated or garbage files, a broken
    metadata.yaml, bad compression, undecodable messages) becomes one DatasetError naming it."""
    meta = bag / "metadata.yaml"
    if bag.is_dir() and (meta.exists() or meta.is_symlink()):  # the reader's own UnicodeDecodeError names nothing
        read_text(meta, "the bag's metadata.yaml", DatasetError)
    try:
        yield
    except VprError:
        raise
    except Exception as exc:  # noqa: BLE001 - rosbags, sqlite3, yaml, zstd and struct raise their own types
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise DatasetError(f"{bag}: cannot read the bag ({type(exc).__name__}: {first})") from None


def bag_camera_info(bag: str | Path, topic: str) -> "CameraIntrinsics":
    """The intrinsics of the first sensor_msgs/CameraInfo message on ``topic`` (a static camera)."""
    from rosbags.highlevel import AnyReader

    from vpr_ros.verification.features import CameraIntrinsics

    bag = Path(bag)
    with _reading(bag):
        with AnyReader([bag]) as reader:
            conns = _connections(reader, topic, ("sensor_msgs/msg/CameraInfo",), bag, "camera info")
            for conn, _, raw in reader.messages(connections=conns):
                msg = reader.deserialize(raw, conn.msgtype)
                try:
                    return CameraIntrinsics.from_k(list(msg.k), int(msg.width), int(msg.height))
                except VprError as exc:
                    raise DatasetError(f"{bag}: {topic}: {exc}") from None
    raise DatasetError(f"{bag}: no message on camera info topic '{topic}'")


def _depth_decoder(msg: Any, bag: Path, topic: str) -> Callable[[], np.ndarray]:
    def decode() -> np.ndarray:
        try:
            return depth_to_metres(msg.encoding, msg.height, msg.width, msg.step, bool(msg.is_bigendian), msg.data)
        except ImageError as exc:
            raise ImageError(f"{bag}: topic '{topic}' at stamp {_stamp(msg):.6f}: {exc}") from None
    return decode


def bag_frames(bag: str | Path, image_topic: str, pose_topic: str = "", trajectory: str = "",
               max_pose_age: float = 0.5, stats: BagStats | None = None, depth_topic: str = "",
               max_depth_age: float = 0.05, max_gap: float = 2.0, tf: str = "") -> Iterator[tuple]:
    """Yield (lazy image decoder, Keyframe[, lazy depth decoder or None]) for every image that has a
    pose, in bag order; with ``depth_topic``, the third element is the aligned depth image nearest in
    time (within ``max_depth_age`` s), decoded to metres only if the frame becomes a keyframe."""
    from rosbags.highlevel import AnyReader

    bag = Path(bag)
    stats = stats if stats is not None else BagStats()
    if sum(map(bool, (pose_topic, trajectory, tf))) != 1:
        raise DatasetError("give exactly one pose source: a pose topic, a trajectory file or a TF pair")
    if not bag.exists():
        raise DatasetError(f"{bag}: bag not found")
    with _reading(bag):
        with AnyReader([bag]) as reader:
            img_conns = _connections(reader, image_topic, IMAGE_TYPES, bag, "image")
            if trajectory:
                track = read_trajectory(trajectory)
            elif tf:
                track = _tf_track(reader, bag, tf)
            else:
                track = _topic_track(reader, bag, pose_topic, stats)
            stats.poses = len(track)
            depth_stamps: list[float] = []
            depth_msgs: list[Any] = []
            if depth_topic:
                depth_conns = _connections(reader, depth_topic, ("sensor_msgs/msg/Image",), bag, "depth")
                for conn, _, raw in reader.messages(connections=depth_conns):
                    dmsg = reader.deserialize(raw, conn.msgtype)
                    depth_stamps.append(_stamp(dmsg))
                    depth_msgs.append(dmsg)
                order = np.argsort(depth_stamps, kind="stable")
                depth_stamps = [depth_stamps[i] for i in order]
                depth_msgs = [depth_msgs[i] for i in order]
            for conn, _, raw in reader.messages(connections=img_conns):
                msg = reader.deserialize(raw, conn.msgtype)
                t = _stamp(msg)
                stats.images += 1
                found = track.sample(t, max_pose_age, max_gap)
                if found is None:
                    stats.without_pose += 1
                    continue
                pose, gps, how = found
                stats.interpolated += how == "interpolated"
                stats.cameras.add(msg.header.frame_id or image_topic)
                kf = Keyframe(stamp=t, pose=pose, camera=image_topic, frame_id=msg.header.frame_id,
                              gps=gps, image_ref=f"{bag.name}:{image_topic}@{t:.6f}")
                if not depth_topic:
                    yield _decoder(msg, bag, image_topic, t), kf
                    continue
                j = bisect.bisect_left(depth_stamps, t)
                near = min((k for k in (j - 1, j) if 0 <= k < len(depth_stamps)),
                           key=lambda k: abs(depth_stamps[k] - t), default=None)
                depth = (_depth_decoder(depth_msgs[near], bag, depth_topic)
                         if near is not None and abs(depth_stamps[near] - t) <= max_depth_age else None)
                stats.with_depth += depth is not None
                yield _decoder(msg, bag, image_topic, t), kf, depth


def is_bag(path: str | Path) -> bool:
    """Whether ``path`` is a rosbag2 recording (a folder with metadata.yaml, or a .db3 / .mcap file)."""
    p = Path(path)
    return (p / "metadata.yaml").is_file() or p.suffix in (".db3", ".mcap")


def count_messages(bag: str | Path, topic: str) -> int:
    """Number of messages on ``topic`` (for progress bars)."""
    from rosbags.highlevel import AnyReader

    with _reading(Path(bag)), AnyReader([Path(bag)]) as reader:
        return sum(c.msgcount for c in reader.connections if c.topic == topic)


def bag_images(bag: str | Path, image_topic: str) -> Iterator[tuple[Callable[[], np.ndarray], float, str]]:
    """Yield (lazy RGB decoder, stamp s, frame_id) of every image on ``image_topic``, in bag order
    (no pose needed: offline localisation)."""
    from rosbags.highlevel import AnyReader

    bag = Path(bag)
    if not bag.exists():
        raise DatasetError(f"{bag}: bag not found")
    with _reading(bag):
        with AnyReader([bag]) as reader:
            for conn, _, raw in reader.messages(connections=_connections(reader, image_topic, IMAGE_TYPES, bag, "image")):
                msg = reader.deserialize(raw, conn.msgtype)
                t = _stamp(msg)
                yield _decoder(msg, bag, image_topic, t), t, msg.header.frame_id


def bag_pose_frame(bag: str | Path, pose_topic: str) -> str:
    """``header.frame_id`` of the first message on ``pose_topic`` ('' if none says one): the frame of
    a map built from it, as the map_builder node takes it from the same messages."""
    from rosbags.highlevel import AnyReader

    bag = Path(bag)
    with _reading(bag):
        with AnyReader([bag]) as reader:
            for conn, _, raw in reader.messages(connections=_connections(reader, pose_topic, POSE_TYPES, bag, "pose")):
                if conn.msgtype == "sensor_msgs/msg/NavSatFix":
                    return ""  # the receiver's frame: positions are in map_frame (ENU from the first fix)
                return str(reader.deserialize(raw, conn.msgtype).header.frame_id)
    return ""

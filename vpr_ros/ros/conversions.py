"""Message <-> core conversions (images, stamps, poses, tables)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float64MultiArray, MultiArrayDimension

from vpr_ros.images import CAMERA_ENCODINGS, compressed_to_rgb, raw_to_rgb

try:  # a ROS 2 installation provides cv_bridge; pip environments use rosbags-image
    from cv_bridge import CvBridge as _CvBridge  # type: ignore[import-not-found]

    _BRIDGE = _CvBridge()
    if not hasattr(_BRIDGE, "imgmsg_to_cv2"):  # the broken PyPI copy
        _BRIDGE = None
except Exception:  # noqa: BLE001 - any import failure means "no usable cv_bridge"
    _BRIDGE = None


def stamp_to_sec(t: Time) -> float:
    """builtin_interfaces/Time -> float seconds."""
    return float(t.sec) + float(t.nanosec) * 1e-9


def sec_to_stamp(s: float) -> Time:
    """float seconds -> builtin_interfaces/Time."""
    sec = int(np.floor(s))
    return Time(sec=sec, nanosec=min(int(round((s - sec) * 1e9)), 999_999_999))


def image_to_rgb(msg: Image | CompressedImage) -> np.ndarray:
    """Any supported Image/CompressedImage -> RGB uint8 [H, W, 3]; raises ImageError."""
    if isinstance(msg, CompressedImage):
        return compressed_to_rgb(msg.format, msg.data)
    if _BRIDGE is not None and msg.width > 0 and msg.height > 0 and msg.encoding in CAMERA_ENCODINGS:
        try:
            return np.ascontiguousarray(_BRIDGE.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
        except Exception:  # noqa: BLE001 - fall back to the validated path for a clear error
            pass
    return raw_to_rgb(msg.encoding, msg.height, msg.width, msg.step, bool(msg.is_bigendian), msg.data)


def rgb_to_image(rgb: np.ndarray, stamp: float, frame_id: str = "camera") -> Image:
    """RGB uint8 [H, W, 3] -> sensor_msgs/Image ('rgb8')."""
    h, w = rgb.shape[:2]
    msg = Image(height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3)
    msg.header.stamp = sec_to_stamp(stamp)
    msg.header.frame_id = frame_id
    msg.data = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    return msg


def pose_msg(p: Sequence[float]) -> Pose:
    """(x, y, z, qx, qy, qz, qw) -> geometry_msgs/Pose."""
    m = Pose()
    m.position.x, m.position.y, m.position.z = (float(v) for v in p[:3])
    m.orientation.x, m.orientation.y, m.orientation.z, m.orientation.w = (float(v) for v in p[3:7])
    return m


def pose_tuple(m: Pose) -> tuple[float, float, float, float, float, float, float]:
    """geometry_msgs/Pose -> (x, y, z, qx, qy, qz, qw)."""
    return (m.position.x, m.position.y, m.position.z,
            m.orientation.x, m.orientation.y, m.orientation.z, m.orientation.w)


def table(columns: Sequence[str], rows: Sequence[Sequence[float]]) -> Float64MultiArray:
    """Row-major table whose layout labels name the columns.

    dim[0]: label 'rows', size = number of rows; dim[1]: label = comma-separated column
    names, size = number of columns.
    """
    msg = Float64MultiArray()
    n, c = len(rows), len(columns)
    msg.layout.dim = [MultiArrayDimension(label="rows", size=n, stride=n * c),
                      MultiArrayDimension(label=",".join(columns), size=c, stride=c)]
    msg.data = [float(v) for r in rows for v in r]
    return msg


def read_table(msg: Float64MultiArray) -> list[dict[str, float]]:
    """Inverse of :func:`table`: list of {column: value} rows."""
    cols = msg.layout.dim[1].label.split(",")
    data = list(msg.data)
    return [dict(zip(cols, data[i:i + len(cols)])) for i in range(0, len(data), len(cols))]


def depth_to_image(depth: np.ndarray, stamp: float) -> Image:
    """Depth in metres float32 [H, W] -> sensor_msgs/Image ('32FC1')."""
    h, w = depth.shape
    msg = Image(height=h, width=w, encoding="32FC1", is_bigendian=0, step=w * 4)
    msg.header.stamp = sec_to_stamp(stamp)
    msg.data = np.ascontiguousarray(depth, np.float32).tobytes()
    return msg

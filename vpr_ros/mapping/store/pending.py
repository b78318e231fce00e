"""Accepted keyframes waiting for the encoder: their raw image fields (and depth, camera model)
are stored with the keyframe at acceptance, so a kill before encoding loses nothing; the
encoder turns each into a keyframe row and deletes it in one transaction."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vpr_ros.errors import MapError
from vpr_ros.mapping.store.map_types import Keyframe

if TYPE_CHECKING:
    from vpr_ros.verification.features import CameraIntrinsics


@dataclass(frozen=True)
class RawImage:
    """The fields of a ``sensor_msgs/Image`` (``format`` '') or a ``CompressedImage``
    (``format`` set, ``encoding`` ''), as received: decoding is the encoder's job."""

    data: bytes
    encoding: str = ""
    height: int = 0
    width: int = 0
    step: int = 0
    bigendian: bool = False
    format: str = ""

    @classmethod
    def of_message(cls, msg: Any) -> "RawImage":
        """From an Image or CompressedImage message (ROS or rosbags): its fields, copied."""
        if hasattr(msg, "format") and not hasattr(msg, "encoding"):
            return cls(bytes(msg.data), format=str(msg.format) or "jpeg")
        return cls(bytes(msg.data), str(msg.encoding), int(msg.height), int(msg.width), int(msg.step),
                   bool(msg.is_bigendian))

    def rgb(self) -> np.ndarray:
        """Decoded RGB uint8 [H, W, 3] (the decoder of the nodes; ImageError if unusable)."""
        from vpr_ros.images import compressed_to_rgb, raw_to_rgb

        if self.format:
            return compressed_to_rgb(self.format, self.data)
        return raw_to_rgb(self.encoding, self.height, self.width, self.step, self.bigendian, self.data)

    def depth_metres(self) -> np.ndarray:
        """A depth image in metres [H, W] float32 (ImageError if not a depth encoding)."""
        from vpr_ros.images import depth_to_metres

        return depth_to_metres(self.encoding, self.height, self.width, self.step, self.bigendian, self.data)

    def header(self) -> dict:
        return {"encoding": self.encoding, "height": self.height, "width": self.width, "step": self.step,
                "bigendian": self.bigendian, "format": self.format}


@dataclass(frozen=True)
class PendingFrame:
    """One accepted keyframe before encoding. ``seq`` is its place in the queue (0 until stored)."""

    keyframe: "Keyframe"
    image: RawImage
    depth: RawImage | None = None
    intrinsics: "CameraIntrinsics | None" = None
    seq: int = 0

    def header_json(self) -> str:
        kf = self.keyframe
        return json.dumps({"keyframe": {"stamp": kf.stamp, "pose": list(kf.pose), "camera": kf.camera,
                                        "frame_id": kf.frame_id, "gps": list(kf.gps) if kf.gps else None,
                                        "image_ref": kf.image_ref, "session": kf.session},
                           "image": self.image.header(),
                           "depth": self.depth.header() if self.depth is not None else None,
                           "intrinsics": self.intrinsics.as_array().tolist() if self.intrinsics is not None else None},
                          allow_nan=False)

    @classmethod
    def from_row(cls, seq: int, header: str, image: bytes, depth: bytes | None, where: str) -> "PendingFrame":
        """Rebuild from a stored row (its CRC already checked); MapError names ``where``."""
        from vpr_ros.verification.features import CameraIntrinsics

        try:
            h = json.loads(header)
            k = h["keyframe"]
            kf = Keyframe(stamp=float(k["stamp"]), pose=tuple(float(v) for v in k["pose"]),  # type: ignore[arg-type]
                          camera=str(k["camera"]), frame_id=str(k["frame_id"]),
                          gps=tuple(float(v) for v in k["gps"]) if k["gps"] else None,  # type: ignore[arg-type]
                          image_ref=str(k["image_ref"]), session=int(k["session"]))
            img = RawImage(bytes(image), **h["image"])
            dep = RawImage(bytes(depth), **h["depth"]) if h["depth"] is not None and depth is not None else None
            intr = CameraIntrinsics.from_array(np.asarray(h["intrinsics"], np.float64)) if h["intrinsics"] else None
        except (ValueError, KeyError, TypeError) as exc:
            raise MapError(f"{where}: pending keyframe {seq} is malformed ({type(exc).__name__}: {exc})") from None
        return cls(kf, img, dep, intr, seq)

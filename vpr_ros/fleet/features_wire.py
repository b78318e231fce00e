"""Local features between robots: a candidate's request and the features sent in reply.

Only candidates that pass the receiver's threshold cost this traffic (11.6 KB for the default 85
SIFT features with their 3-D points, against a descriptor packet's 993 bytes a keyframe).
Both packets share the descriptor packet's head (magic, version, kind, model fingerprint, sender's
id and name) and end with a CRC32; every count and size is checked against the bytes before anything is
allocated, so a hostile packet is refused by name, not trusted::

    request (kind 2):  to robot (u16 id, u8 length + UTF-8 name), seq u32, count u16,
                       count x (their keyframe id u32, the requester's keyframe id u32, code cosine f32)
    features (kind 3): to robot, seq u32, keyframe id u32, stamp f64, requester's keyframe id u32,
                       the sender's camera pose in its base frame f64 [7] (x y z qx qy qz qw),
                       the keyframe's base pose in the sender's map frame f64 [7],
                       kind (u8 length + ASCII), width u16, height u16, n u32, dim u16,
                       dtype u8 (0 uint8, 1 float32, 2 float16), flags u8 (1: 3-D points, 2: intrinsics),
                       keypoints f32 [n, 2], descriptors [n, dim], 3-D points f32 [n, 3], intrinsics f64 [6]
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from vpr_ros.errors import FleetError
from vpr_ros.fleet.codec import MAGIC, VERSION, FleetCodec, Robot
from vpr_ros.verification.features import CameraIntrinsics, LocalFeatures

KIND_REQUEST = 2
KIND_FEATURES = 3
MAX_REQUEST = 64
MAX_FEATURES = 20000   # keypoints in one reply
MAX_FEATURE_DIM = 1024
_DTYPES = {0: np.uint8, 1: np.float32, 2: np.float16}
_HEAD = struct.Struct("<4sBB8s")


@dataclass(frozen=True)
class FeatureRequest:
    """``sender`` asks ``to`` for the features of ``pairs`` [(to's keyframe, sender's keyframe, the
    codes' cosine)]: the receiver learns of the candidate too (it may never have heard the sender's
    descriptors: a robot that joined later) and asks for the sender's features in turn."""

    sender: Robot
    to: Robot
    seq: int
    pairs: list[tuple[int, int, float]]


@dataclass(frozen=True)
class FeatureReply:
    """``sender``'s features of its keyframe ``keyframe`` for ``to``'s candidate ``for_keyframe``."""

    sender: Robot
    to: Robot
    seq: int
    keyframe: int
    stamp: float
    for_keyframe: int
    features: LocalFeatures
    camera_in_base: tuple[float, ...]  # the sender's camera optical frame in its base frame
    pose: tuple[float, ...]            # the keyframe's base pose in the sender's map frame


def _sealed(codec: FleetCodec, kind: int, sender: Robot, to: Robot, body: bytes) -> bytes:
    data = _HEAD.pack(MAGIC, VERSION, kind, codec.fingerprint) + sender.wire() + to.wire() + body
    return data + struct.pack("<I", zlib.crc32(data))


class _Reader:
    """Reads a packet field by field; every read past the end is a FleetError naming the packet."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.at, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if n < 0 or self.at + n > len(self.data):
            raise FleetError(f"{self.what}: truncated (needs {n} more bytes at offset {self.at} of {len(self.data)})")
        out = self.data[self.at:self.at + n]
        self.at += n
        return out

    def unpack(self, fmt: str) -> tuple:
        s = struct.Struct("<" + fmt)
        return s.unpack(self.take(s.size))

    def robot(self) -> Robot:
        rid, size = self.unpack("HB")
        try:
            return Robot(self.take(size).decode(), rid)
        except UnicodeDecodeError:
            raise FleetError(f"{self.what}: a robot name is not UTF-8") from None


def _open(codec: FleetCodec, data: bytes, kind: int, what: str) -> tuple[_Reader, Robot, Robot]:
    data = bytes(data)
    if len(data) < _HEAD.size + 4 + 4:
        raise FleetError(f"{what} of {len(data)} bytes is too short")
    if zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
        raise FleetError(f"{what} fails its checksum (damaged in transit)")
    r = _Reader(data[:-4], what)
    magic, version, got, fingerprint = r.unpack("4sBB8s")
    if magic != MAGIC or version != VERSION or got != kind:
        raise FleetError(f"{what}: not a version-{VERSION} packet of kind {kind} (magic {magic!r}, version "
                         f"{version}, kind {got})")
    sender, to = r.robot(), r.robot()
    if fingerprint != codec.fingerprint:
        from vpr_ros.errors import ForeignModel

        raise ForeignModel(sender, f"robot {sender} runs another model (fingerprint {fingerprint.hex()}, this "
                                   f"robot {codec.fingerprint.hex()}): its features are not used")
    return r, sender, to


def encode_request(codec: FleetCodec, sender: Robot, to: Robot, seq: int,
                   pairs: list[tuple[int, int, float]]) -> bytes:
    if not 1 <= len(pairs) <= MAX_REQUEST:
        raise FleetError(f"a feature request asks for 1..{MAX_REQUEST} keyframes (got {len(pairs)})")
    body = struct.pack("<IH", int(seq) & 0xFFFFFFFF, len(pairs)) + b"".join(
        struct.pack("<IIf", int(a), int(b), float(c)) for a, b, c in pairs)
    return _sealed(codec, KIND_REQUEST, sender, to, body)


def decode_request(codec: FleetCodec, data: bytes) -> FeatureRequest:
    r, sender, to = _open(codec, data, KIND_REQUEST, "feature request")
    seq, n = r.unpack("IH")
    if not 1 <= n <= MAX_REQUEST:
        raise FleetError(f"feature request from robot {sender}: {n} keyframes (1..{MAX_REQUEST})")
    pairs = [r.unpack("IIf") for _ in range(n)]
    if r.at != len(r.data):
        raise FleetError(f"feature request from robot {sender}: {len(r.data) - r.at} bytes after its keyframes")
    if not all(np.isfinite(c) and -1.01 <= c <= 1.01 for _, _, c in pairs):
        raise FleetError(f"feature request from robot {sender}: a cosine outside [-1, 1]")
    return FeatureRequest(sender, to, int(seq), [(int(a), int(b), float(c)) for a, b, c in pairs])


def encode_features(codec: FleetCodec, sender: Robot, to: Robot, seq: int, keyframe: int, stamp: float,
                    for_keyframe: int, f: LocalFeatures, camera_in_base: tuple[float, ...],
                    pose: tuple[float, ...]) -> bytes:
    code = {np.dtype(v): k for k, v in _DTYPES.items()}.get(f.descriptors.dtype)
    n, dim = f.descriptors.shape if f.descriptors.ndim == 2 else (-1, -1)
    if code is None or not (0 < n <= MAX_FEATURES and 0 < dim <= MAX_FEATURE_DIM) or f.keypoints.shape != (n, 2):
        raise FleetError(f"local features of keyframe {keyframe} cannot be sent: {f.descriptors.dtype} "
                         f"descriptors {list(f.descriptors.shape)}, keypoints {list(f.keypoints.shape)}")
    kind = f.kind.encode("ascii")
    flags = (1 if f.points3d is not None else 0) | (2 if f.intrinsics is not None else 0)
    body = [struct.pack("<IIdI", int(seq) & 0xFFFFFFFF, int(keyframe), float(stamp), int(for_keyframe)),
            struct.pack("<7d", *(float(v) for v in camera_in_base)), struct.pack("<7d", *(float(v) for v in pose)),
            bytes([len(kind)]), kind,
            struct.pack("<HHIHBB", int(f.image_size[0]), int(f.image_size[1]), n, dim, code, flags),
            np.ascontiguousarray(f.keypoints, "<f4").tobytes(), np.ascontiguousarray(f.descriptors).tobytes()]
    if f.points3d is not None:
        body.append(np.ascontiguousarray(f.points3d, "<f4").tobytes())
    if f.intrinsics is not None:
        body.append(f.intrinsics.as_array().astype("<f8").tobytes())
    return _sealed(codec, KIND_FEATURES, sender, to, b"".join(body))


def decode_features(codec: FleetCodec, data: bytes) -> FeatureReply:
    r, sender, to = _open(codec, data, KIND_FEATURES, "features packet")
    seq, keyframe, stamp, for_keyframe = r.unpack("IIdI")
    camera, pose = r.unpack("7d"), r.unpack("7d")
    kind = r.take(r.unpack("B")[0]).decode("ascii", "replace")
    w, h, n, dim, code, flags = r.unpack("HHIHBB")
    where = f"features packet from robot {sender} (keyframe {keyframe})"
    if code not in _DTYPES or not (0 < n <= MAX_FEATURES and 0 < dim <= MAX_FEATURE_DIM) or flags > 3:
        raise FleetError(f"{where}: {n} features of {dim} values, dtype code {code}, flags {flags}: out of range")
    dt = np.dtype(_DTYPES[code]).newbyteorder("<")
    keypoints = np.frombuffer(r.take(8 * n), "<f4").reshape(n, 2).astype(np.float32)
    descriptors = np.frombuffer(r.take(n * dim * dt.itemsize), dt).reshape(n, dim).astype(_DTYPES[code])
    points = np.frombuffer(r.take(12 * n), "<f4").reshape(n, 3).astype(np.float32) if flags & 1 else None
    intr = None
    if flags & 2:
        a = np.frombuffer(r.take(48), "<f8")
        if not (np.isfinite(a).all() and a[0] > 0 and a[1] > 0 and 0 < a[4] < 65536 and 0 < a[5] < 65536):
            raise FleetError(f"{where}: camera intrinsics unusable ({a.tolist()})")
        intr = CameraIntrinsics.from_array(a)
    if r.at != len(r.data):
        raise FleetError(f"{where}: {len(r.data) - r.at} bytes after its features")
    if not np.isfinite(keypoints).all() or not np.isfinite(stamp):
        raise FleetError(f"{where}: keypoints or stamp not finite")
    for what, p in (("camera pose in base", camera), ("keyframe pose", pose)):
        if not np.isfinite(p).all() or abs(float(np.linalg.norm(p[3:])) - 1.0) > 1e-3:
            raise FleetError(f"{where}: {what} {list(p)} is not a pose (finite, unit quaternion)")
    return FeatureReply(sender, to, int(seq), int(keyframe), float(stamp), int(for_keyframe),
                        LocalFeatures(kind, keypoints, descriptors, (int(w), int(h)), points, intr),
                        tuple(float(v) for v in camera), tuple(float(v) for v in pose))

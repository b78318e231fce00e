"""Canonical bytes of stored rows and their CRC32 checksums.

Every row the store writes (map metadata, keyframes with their descriptor, local features,
pending frames) carries ``crc = row_crc(values)``; readers recompute it. Each value is encoded
with a type tag, so a flipped bit that turns a number into text (or changes a length) is caught
as surely as one inside a descriptor. CRC32 detects every single-bit error and every burst up to
32 bits.
"""
from __future__ import annotations

import struct
import zlib
from typing import Iterable

_INT, _REAL, _TEXT, _BLOB, _NULL = b"i", b"r", b"t", b"b", b"n"


def row_crc(values: Iterable[object]) -> int:
    """CRC32 (unsigned) of ``values`` (int, float, str, bytes or None) in canonical form."""
    parts: list[bytes] = []
    for v in values:
        t = type(v)
        if t is float:
            parts += (_REAL, _pack_d(v))  # type: ignore[arg-type]
        elif t is int:
            parts += (_INT, _pack_q(v))  # type: ignore[arg-type]
        elif t is str:
            b = v.encode("utf-8", "surrogatepass")  # type: ignore[union-attr,attr-defined]
            parts += (_TEXT, _pack_Q(len(b)), b)
        elif t is bytes or t is bytearray or t is memoryview:
            b = bytes(v)  # type: ignore[arg-type,call-overload]
            parts += (_BLOB, _pack_Q(len(b)), b)
        elif v is None:
            parts.append(_NULL)
        else:
            raise TypeError(f"row_crc: unsupported value type {t.__name__}")
    return zlib.crc32(b"".join(parts))


_pack_d = struct.Struct("<d").pack
_pack_q = struct.Struct("<q").pack
_pack_Q = struct.Struct("<Q").pack


_KF_HEAD = struct.Struct("<cqcd")             # id, stamp
_KF_POSE = struct.Struct("<" + "cd" * 7)      # x y z qx qy qz qw
_KF_GPS = struct.Struct("<" + "cd" * 3)
_R = _REAL


def keyframe_crc(v: tuple) -> int:
    """:func:`row_crc` of a keyframe row (id, stamp, camera, frame_id, 7 pose values, 3 GPS values
    or None, image_ref, session) with one struct call per group: the same value, ~3x faster (a map
    of a million keyframes is checked row by row at every start). Values of other types than the
    stored ones give another CRC; the caller then falls back to :func:`row_crc`."""
    try:
        cam = v[2].encode("utf-8", "surrogatepass")
        frame = v[3].encode("utf-8", "surrogatepass")
        ref = v[14].encode("utf-8", "surrogatepass")
        gps = _NULL * 3 if v[11] is None and v[12] is None and v[13] is None else \
            _KF_GPS.pack(_R, v[11], _R, v[12], _R, v[13])
        data = b"".join((_KF_HEAD.pack(_INT, v[0], _R, v[1]), _TEXT, _pack_Q(len(cam)), cam, _TEXT,
                         _pack_Q(len(frame)), frame,
                         _KF_POSE.pack(_R, v[4], _R, v[5], _R, v[6], _R, v[7], _R, v[8], _R, v[9], _R, v[10]),
                         gps, _TEXT, _pack_Q(len(ref)), ref, _INT, _pack_q(v[15])))
    except (AttributeError, struct.error, TypeError, UnicodeEncodeError):
        return -1
    return zlib.crc32(data)


def vector_crc(i: int, blob: bytes) -> int:
    """:func:`row_crc` of a vector row (id, blob) without copying the blob (CRC32 runs on)."""
    return zlib.crc32(blob, zlib.crc32(_INT + _pack_q(i) + _BLOB + _pack_Q(len(blob))))

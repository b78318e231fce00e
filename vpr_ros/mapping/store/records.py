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

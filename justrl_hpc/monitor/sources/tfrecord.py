"""TFRecord framing, as TensorBoard's event files use it, and its masked CRC-32C.

A record is: uint64 length, masked crc32c of those 8 bytes, `length` bytes of data, masked crc32c of the
data (all little-endian). The length CRC is what lets a reader find its place again after corrupt bytes:
`RESYNC_CANDIDATE` lists the offsets whose length fits in 32 bits, and a candidate whose 12 header bytes
carry a valid length CRC is a record start (a false match has odds 2**-32).

CRC-32C comes from `google-crc32c` when its C implementation is importable (`fast_crc`); `crc32c_py` is the
pure-Python fallback (far slower: the reader skips data CRCs rather than use it, unless told otherwise).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable

MAX_RECORD = 1 << 30  # a header claiming more than this is taken as corrupt even with a matching CRC
MASK_DELTA = 0xA282EAD8

HEADER = struct.Struct("<QI")  # length, masked crc32c of the length
U32 = struct.Struct("<I")  # the data CRC after the data
# Offsets p where bytes p+4..p+8 are zero, i.e. a uint64 length below 2**32: the resync candidates.
RESYNC_CANDIDATE = re.compile(rb"(?s)(?=.{4}\x00\x00\x00\x00)")


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE: list[int] | None = None


def crc32c_py(data: bytes) -> int:
    """Plain CRC-32C (Castagnoli); the fallback when google-crc32c is missing."""
    global _TABLE
    if _TABLE is None:
        _TABLE = _crc32c_table()
    table, crc = _TABLE, 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def fast_crc() -> Callable[[bytes], int] | None:
    try:
        import google_crc32c
    except ImportError:
        return None
    if getattr(google_crc32c, "implementation", "c") != "c":
        return None  # its pure-Python fallback is as slow as ours
    return google_crc32c.value


def masked(crc: int) -> int:
    """TFRecord's masked CRC: rotate right by 15 and add a constant (so a CRC of CRCs is not trivial)."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + MASK_DELTA) & 0xFFFFFFFF

"""The image size (and sample format) a compressed DICOM frame declares, before decoding.

A JPEG, JPEG-LS or JPEG 2000 codestream carries its own image size (JPEG SOF, JPEG-LS
SOF55, JPEG 2000 SIZ marker), which the decoder allocates for whatever the DICOM header
says. One flipped bit in a JPEG 2000 SIZ turned a 256 x 1024 frame into 6,947,072 x 1024:
the decoder took 40 s and 14 GB before failing. :func:`frame_size` reads that size from
the first bytes of a frame, so the reader can refuse such a frame in microseconds.
"""

from __future__ import annotations

import struct

#: JPEG start-of-frame markers (baseline, extended, progressive, lossless; arithmetic
#: variants) and JPEG-LS SOF55. Not DHT (C4), JPG (C8) or DAC (CC).
_SOF_MARKERS = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
)
#: JPEG markers without a length field (SOI, TEM, RST0-7).
_STANDALONE = frozenset({0xD8, 0x01, *range(0xD0, 0xD8)})
#: JPEG 2000 codestream start: SOC followed by the SIZ marker.
_J2K_START = b"\xff\x4f\xff\x51"
#: How far into a frame the JPEG 2000 codestream may start (a JP2 file has boxes first).
_J2K_SEARCH = 4096


def frame_size(frame: bytes) -> tuple[int, int, int] | None:
    """``(rows, columns, components)`` declared by a frame's codestream header.

    Args:
        frame: The first bytes of one encapsulated frame (its first fragment is enough).

    Returns:
        The declared size, or None when the frame is not a JPEG, JPEG-LS or JPEG 2000
        codestream, its header is cut short, or the height is left to a DNL marker.
    """
    start = frame.find(_J2K_START, 0, _J2K_SEARCH)
    if start >= 0:
        siz = frame[start + 4:start + 42]
        if len(siz) < 38:
            return None
        xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", siz[4:20])
        (csiz,) = struct.unpack(">H", siz[36:38])
        return max(0, ysiz - yosiz), max(0, xsiz - xosiz), csiz
    if frame[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(frame):
        if frame[i] != 0xFF:
            return None
        marker = frame[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker in _SOF_MARKERS:
            if i + 10 > len(frame):
                return None
            rows, cols = struct.unpack(">HH", frame[i + 5:i + 9])
            return (rows, cols, frame[i + 9]) if rows else None
        (length,) = struct.unpack(">H", frame[i + 2:i + 4])
        if length < 2:
            return None
        i += 2 + length
    return None


def j2k_sample_format(frame: bytes) -> tuple[bool, int] | None:
    """``(signed, bits)`` of the first component a JPEG 2000 codestream declares (SIZ).

    Args:
        frame: The first bytes of one encapsulated frame.

    Returns:
        Whether the samples are signed and their precision in bits, or None when the frame
        is not a JPEG 2000 codestream or its SIZ marker is cut short.
    """
    start = frame.find(_J2K_START, 0, _J2K_SEARCH)
    if start < 0:
        return None
    siz = frame[start + 4:start + 43]
    if len(siz) < 39:
        return None
    ssiz = siz[38]  # after Lsiz, Rsiz, the eight sizes and offsets, and Csiz
    return bool(ssiz & 0x80), (ssiz & 0x7F) + 1

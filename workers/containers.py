"""What a container's own structure says about its bytes: cut short, or carrying more.

A decoder given a cut-off file often says nothing: ffprobe reads the duration an MP4's `moov`
box or a WAV's header promises and returns it as if the samples were there, and players play
what there is. An analyst, and a court, must know that the file ends before its own header
says it does (an upload cut off, a phone that died while recording, a file someone cut on
purpose) and that what a stage saw is only part of it. So each format's length fields are
walked here, from the bytes alone, and compared with the bytes there are:

- `truncated`: a box, chunk, page, frame or element the file declares runs past its end, or
  the structure that must close it (PNG's IEND, Ogg's end-of-stream page, JPEG's EOI) is
  missing;
- `trailing_data`: bytes after the structure's declared end that are not padding, the shape
  of a file with something appended (a ZIP after a JPEG's EOI, a polyglot);
- `appended_archive`: those trailing bytes start like a zip or tar: content hidden behind the
  picture, for the analyst to open.

Walkers read length fields only, never payloads, through a read-only memory map, so a walk
costs a few reads per box or page whatever the file's size, and a lying length can only end
the walk, never make it allocate or loop: every step moves forward or stops.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable
from pathlib import Path

from workers.archives import archive_format

TRUNCATED = "truncated"
TRAILING_DATA = "trailing_data"
APPENDED_ARCHIVE = "appended_archive"

#: Padding writers leave after a structure's end: not appended content.
_PADDING = b"\x00\xff\r\n \t"
#: Stray bytes after the end fewer than this are a writer's slip (one camera in the corpus
#: leaves one byte after EOI), not content: the smallest zip is 22 bytes.
_TRAILING_SLACK = 16
#: An Ogg page header before its segment table; the table holds at most 255 lacing values.
_OGG_HEADER = 27
_OGG_EOS = 0x04
#: Bytes per AMR frame, header byte included, by frame type (RFC 4867, section 5.1), as the
#: AMR storage format packs them; types 9-15 (reserved, lost, no data) are the header alone.
_AMR_NB_FRAME = (13, 14, 16, 18, 20, 21, 27, 32, 6, 1, 1, 1, 1, 1, 1, 1)
_AMR_WB_FRAME = (18, 24, 33, 37, 41, 47, 51, 59, 61, 6, 1, 1, 1, 1, 1, 1)
_AMR_NB_MAGIC = b"#!AMR\n"
_AMR_WB_MAGIC = b"#!AMR-WB\n"
#: MPEG audio bitrates in kbit/s by (MPEG-1?, layer) and index; 0 is "free", 15 invalid.
_MP3_BITRATES = {
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
#: Tags MP3 files end with: ID3v1 (128 bytes, `TAG`), APEv2 and Lyrics3 footers.
_MP3_END_TAGS = (b"TAG", b"APETAGEX", b"LYRICS")
#: EBML IDs (with their length marker bits, as written) of Matroska's top elements.
_EBML_HEADER = 0x1A45DFA3
_MKV_SEGMENT = 0x18538067
#: JPEG markers that stand alone (no length field): TEM, RST0-7, SOI, EOI.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8), 0xD8, 0xD9})


def structure_flags(family: str, path: Path) -> list[str]:
    """The flags the container's structure earns, for a probe family name (see
    `workers.probe.detect_family`); [] for formats with no walker here, or nothing to say."""
    walker = _WALKERS.get(family)
    if walker is None:
        return []
    with path.open("rb") as handle:
        size = handle.seek(0, 2)
        if size == 0:
            return []
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return walker(data, size)


def _after_end(data: mmap.mmap | bytes, end: int, size: int) -> list[str]:
    """Flags for what lies between a structure's end and the file's end."""
    if end > size:
        return [TRUNCATED]
    if size - end < _TRAILING_SLACK or not _has_content(data, end, size):
        return []
    flags = [TRAILING_DATA]
    if archive_format(bytes(data[end : end + 4096])) is not None:
        flags.append(APPENDED_ARCHIVE)
    return flags


def _has_content(data: mmap.mmap | bytes, start: int, size: int) -> bool:
    """Whether anything but padding lies in data[start:size], read in blocks."""
    for offset in range(start, size, 1 << 20):
        if data[offset : min(size, offset + (1 << 20))].strip(_PADDING):
            return True
    return False


def _iso_bmff(data: mmap.mmap, size: int) -> list[str]:
    """MP4, MOV, 3GP, M4A: top-level boxes, each `size, type` (size 1: a 64-bit size follows;
    size 0: the box runs to the end of the file)."""
    offset = 0
    while offset + 8 <= size:
        if offset and not all(0x20 <= byte <= 0x7E for byte in data[offset + 4 : offset + 8]):
            break  # no box type (four printable characters): something appended
        (box_size,) = struct.unpack_from(">I", data, offset)
        header = 8
        if box_size == 1:
            if offset + 16 > size:
                return [TRUNCATED]
            (box_size,) = struct.unpack_from(">Q", data, offset + 8)
            header = 16
        elif box_size == 0:
            return []
        if box_size < header:
            return [TRUNCATED] if offset == 0 else _after_end(data, offset, size)
        offset += box_size
    return [TRUNCATED] if offset > size else _after_end(data, offset, size)


def _riff(data: mmap.mmap, size: int) -> list[str]:
    """WAV and AVI: the RIFF size, then each chunk's `id, size` (odd sizes pad to even).

    Streaming writers that cannot seek back leave a size of 0 or 0xFFFFFFFF: unknown, not a
    lie, so such a size ends the check rather than flagging the file."""
    if size < 12:
        return [TRUNCATED]
    (riff_size,) = struct.unpack_from("<I", data, 4)
    if riff_size in (0, 0xFFFFFFFF):
        return []
    end = 8 + riff_size
    offset = 12
    while offset + 8 <= min(end, size):
        (chunk_size,) = struct.unpack_from("<I", data, offset + 4)
        if chunk_size == 0xFFFFFFFF and data[offset : offset + 4] == b"data":
            return []
        body_end = offset + 8 + chunk_size
        if body_end > size:
            return [TRUNCATED]
        offset = body_end + (chunk_size & 1)
    # A last chunk of odd size may lack its pad byte: one byte short is not a cut.
    if end > size + (offset == size + 1):
        return [TRUNCATED]
    return _after_end(data, min(end, size), size)


def _ogg(data: mmap.mmap, size: int) -> list[str]:
    """Ogg (Opus, Vorbis, Theora): pages of 27 header bytes, a segment table and the segments
    it sums to; every logical stream ends with a page flagged end-of-stream. A page whose
    capture pattern is missing is skipped to the next one (a damaged page), not trusted."""
    offset = 0
    open_streams: set[int] = set()
    while offset < size:
        if data[offset : offset + 4] != b"OggS":
            found = data.find(b"OggS", offset + 1)
            if found < 0:
                return [TRUNCATED] if open_streams else _after_end(data, offset, size)
            offset = found
            continue
        if offset + _OGG_HEADER > size:
            return [TRUNCATED]
        header_type = data[offset + 5]
        (serial,) = struct.unpack_from("<I", data, offset + 14)
        segments = data[offset + 26]
        table_end = offset + _OGG_HEADER + segments
        if table_end > size:
            return [TRUNCATED]
        offset = table_end + sum(data[offset + _OGG_HEADER : table_end])
        if offset > size:
            return [TRUNCATED]
        if header_type & _OGG_EOS:
            open_streams.discard(serial)
        else:
            open_streams.add(serial)
    return [TRUNCATED] if open_streams else []


def _mp3_frame_length(header: bytes) -> int | None:
    """The length in bytes of the MPEG audio frame this 4-byte header starts, or None."""
    if len(header) < 4 or header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return None
    version = (header[1] >> 3) & 0x03  # 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5, 1: reserved
    layer = 4 - ((header[1] >> 1) & 0x03)  # bits 11, 10, 01 are layers I, II, III
    bitrate_index = header[2] >> 4
    rate_index = (header[2] >> 2) & 0x03
    if version == 1 or layer == 4 or bitrate_index in (0, 15) or rate_index == 3:
        return None
    mpeg1 = version == 3
    bitrate = _MP3_BITRATES[mpeg1, layer][bitrate_index] * 1000
    rate = _MP3_RATES[version][rate_index]
    padding = (header[2] >> 1) & 0x01
    if layer == 1:
        return (12 * bitrate // rate + padding) * 4
    per_frame = 144 if layer == 2 or mpeg1 else 72
    return per_frame * bitrate // rate + padding


def _mp3(data: mmap.mmap, size: int) -> list[str]:
    """MP3: an optional ID3v2 tag (a syncsafe size), then frames whose headers give their
    length, then optional end tags. A Xing or Info header in the first frame gives the
    stream's bytes, which catches a file cut exactly between two frames."""
    offset = 0
    if data[:3] == b"ID3":
        if size < 10:
            return [TRUNCATED]
        tag = data[6:10]
        offset = 10 + ((tag[0] & 0x7F) << 21 | (tag[1] & 0x7F) << 14 | (tag[2] & 0x7F) << 7)
        offset += (tag[3] & 0x7F) + (10 if data[5] & 0x10 else 0)
        if offset > size:
            return [TRUNCATED]
    first = offset
    declared = _xing_bytes(data, first, size)
    while offset + 4 <= size:
        length = _mp3_frame_length(data[offset : offset + 4])
        if length is None:
            if data[offset : offset + 8].startswith(_MP3_END_TAGS):
                break
            found = data.find(b"\xff", offset + 1)  # resynchronise past damage
            if found < 0:
                break
            offset = found
            continue
        if offset + length > size:
            return [TRUNCATED]
        offset += length
    else:
        if 0 < size - offset < 4 and data[offset] == 0xFF:
            return [TRUNCATED]  # cut inside the last frame's header
    if declared is not None and first + declared > size:
        return [TRUNCATED]
    return []


def _xing_bytes(data: mmap.mmap, first: int, size: int) -> int | None:
    """The stream size a Xing/Info header in the first frame declares, if it declares one."""
    length = _mp3_frame_length(data[first : first + 4])
    if length is None:
        return None
    frame = data[first : min(size, first + length)]
    for tag in (b"Xing", b"Info"):
        at = frame.find(tag)
        if at >= 0 and at + 8 <= len(frame):
            (fields,) = struct.unpack_from(">I", frame, at + 4)
            if fields & 0x02:  # bytes present, after frames when those are present too
                where = at + 8 + (4 if fields & 0x01 else 0)
                if where + 4 <= len(frame):
                    (stream_bytes,) = struct.unpack_from(">I", frame, where)
                    return int(stream_bytes)
    return None


def _amr(data: mmap.mmap, size: int) -> list[str]:
    """AMR and AMR-WB storage format: a magic line, then frames sized by their header byte."""
    if data[: len(_AMR_WB_MAGIC)] == _AMR_WB_MAGIC:
        offset, sizes = len(_AMR_WB_MAGIC), _AMR_WB_FRAME
    else:
        offset, sizes = len(_AMR_NB_MAGIC), _AMR_NB_FRAME
    while offset < size:
        offset += sizes[(data[offset] >> 3) & 0x0F]
    return [TRUNCATED] if offset > size else []


def _ebml_number(data: mmap.mmap, offset: int, size: int, keep_marker: bool) -> tuple[int, int]:
    """An EBML variable-length number at offset: (value, bytes it took). Raises ValueError
    past the end or for a first byte of zero (no length marker in eight bytes)."""
    if offset >= size or data[offset] == 0:
        raise ValueError("no EBML number")
    first = data[offset]
    length = 9 - first.bit_length()
    if offset + length > size:
        raise ValueError("EBML number past the end")
    value = first if keep_marker else first & (0xFF >> length)
    for index in range(1, length):
        value = value << 8 | data[offset + index]
    return value, length


def _matroska(data: mmap.mmap, size: int) -> list[str]:
    """Matroska and WebM: the EBML header, then the Segment's declared size and its top-level
    children (Clusters, Cues, ...). A size of all ones is "unknown" (a live recording): the
    walk stops there without a verdict, as such a file cannot say where it ends."""
    offset = 0
    try:
        element, taken = _ebml_number(data, offset, size, keep_marker=True)
        if element != _EBML_HEADER:
            return []
        length, length_size = _ebml_number(data, offset + taken, size, keep_marker=False)
        offset += taken + length_size + length
        element, taken = _ebml_number(data, offset, size, keep_marker=True)
        if element != _MKV_SEGMENT:
            return [TRUNCATED] if offset >= size else []
        length, length_size = _ebml_number(data, offset + taken, size, keep_marker=False)
        start = offset + taken + length_size
        unknown = length == (1 << (7 * length_size)) - 1
        end = size if unknown else start + length
        offset = start
        while offset < min(end, size):
            _, taken = _ebml_number(data, offset, size, keep_marker=True)
            length, length_size = _ebml_number(data, offset + taken, size, keep_marker=False)
            if length == (1 << (7 * length_size)) - 1:
                return []  # an element of unknown size: nothing more can be told
            offset += taken + length_size + length
    except ValueError:
        return [TRUNCATED]
    if offset > size or end > size:
        return [TRUNCATED]
    return [] if unknown else _after_end(data, end, size)


def _png(data: mmap.mmap, size: int) -> list[str]:
    """PNG: chunks of `length, type, data, CRC` after the signature, closed by IEND."""
    offset = 8
    while offset + 8 <= size:
        (length,) = struct.unpack_from(">I", data, offset)
        chunk = data[offset + 4 : offset + 8]
        offset += 12 + length
        if offset > size:
            return [TRUNCATED]
        if chunk == b"IEND":
            return _after_end(data, offset, size)
    return [TRUNCATED]


def _jpeg(data: mmap.mmap, size: int) -> list[str]:
    """JPEG: where its End Of Image marker really is, and what follows it.

    Most files end in EOI or EOI plus padding: one look at the tail says so. Otherwise the
    markers are walked (segments by their lengths, entropy-coded data scanned for the next
    marker), since an appended zip or video may hold FF D9 bytes of its own, and the first
    EOI after the scan data is the picture's end."""
    tail = data[max(0, size - 64) : size]
    if tail.rstrip(_PADDING).endswith(b"\xff\xd9"):
        return []
    end = _jpeg_end(data, size)
    return [TRUNCATED] if end is None else _after_end(data, end, size)


def _jpeg_end(data: mmap.mmap, size: int) -> int | None:
    """The offset just past the EOI that closes the picture, or None when it never comes."""
    offset = 2  # past SOI
    while offset + 2 <= size:
        if data[offset] != 0xFF:
            return None  # the marker structure is broken: the rest cannot be trusted
        marker = data[offset + 1]
        if marker == 0xFF:  # fill bytes before a marker
            offset += 1
            continue
        if marker == 0xD9:
            return offset + 2
        if marker in _JPEG_STANDALONE:
            offset += 2
            continue
        if offset + 4 > size:
            return None
        (length,) = struct.unpack_from(">H", data, offset + 2)
        offset += 2 + length
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next real marker
            offset = _after_scan(data, offset, size)
    return None


def _after_scan(data: mmap.mmap, offset: int, size: int) -> int:
    """The offset of the first marker after entropy-coded data: FF followed by neither a
    stuffed zero nor a restart marker."""
    while True:
        found = data.find(b"\xff", offset, size)
        if found < 0 or found + 1 >= size:
            return size
        following = data[found + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            offset = found + 1 if following == 0xFF else found + 2
            continue
        return found


_WALKERS: dict[str, Callable[[mmap.mmap, int], list[str]]] = {
    "mp4": _iso_bmff,
    "quicktime": _iso_bmff,
    "3gp": _iso_bmff,
    "m4a": _iso_bmff,
    "wav": _riff,
    "avi": _riff,
    "ogg": _ogg,
    "mp3": _mp3,
    "amr": _amr,
    "matroska": _matroska,
    "webm": _matroska,
    "png": _png,
    "jpeg": _jpeg,
}

"""Files that lie about themselves: headers claiming more than the bytes hold, durations no
file of that size could have, shapes no camera makes, content behind the picture.

Each maker writes one such file at `path` from a real encode (ffmpeg lavfi, Pillow) and then
edits the bytes the way a cut transfer, a crashed recorder or an attacker would: a length
field made larger, a file cut inside a frame, an archive appended. They are what the
hardening tests feed the whole pipeline, and what `make fuzz` starts its mutations from.
"""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.samples._tools import ffmpeg

#: A few seconds are enough for every container to have several boxes, pages or frames.
SECONDS = "3"
#: Mode 7 (12.2 kbit/s) AMR-NB frames: header byte, then 31 bytes; no encoder is needed to
#: write the storage format, and ffmpeg's decoder reads any payload bits as speech data.
_AMR_FRAME_HEADER = 0x3C
_AMR_FRAME_BYTES = 31


def _encode(path: Path, *args: str) -> Path:
    ffmpeg("-y", *args, str(path))
    return path


def phone_video(path: Path, container: str = "mp4", faststart: bool = True) -> Path:
    """A short H.264 + AAC video, with the index (`moov`) first or last."""
    movflags = ["-movflags", "+faststart"] if faststart and container != "matroska" else []
    return _encode(
        path,
        "-f", "lavfi", "-i", f"testsrc=s=320x240:r=25:d={SECONDS}",
        "-f", "lavfi", "-i", f"sine=frequency=440:d={SECONDS}",
        "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-c:a", "aac", "-shortest",
        *movflags, "-f", container,
    )  # fmt: skip


def _boxes(data: bytes) -> dict[bytes, int]:
    """Offsets of an ISO-BMFF file's top-level boxes by type."""
    offsets, offset = {}, 0
    while offset + 8 <= len(data):
        (size,) = struct.unpack_from(">I", data, offset)
        offsets[data[offset + 4 : offset + 8]] = offset
        if size < 8:
            break
        offset += size
    return offsets


def mp4_mdat_past_end(path: Path) -> Path:
    """An MP4 whose media box (`mdat`) claims 10 MiB more than the file holds: what a recorder
    that reserved space and died leaves, or a transfer cut at the end."""
    data = bytearray(phone_video(path).read_bytes())
    at = _boxes(bytes(data))[b"mdat"]
    (size,) = struct.unpack_from(">I", data, at)
    struct.pack_into(">I", data, at, size + 10 * 2**20)
    path.write_bytes(data)
    return path


def mov_moov_past_end(path: Path) -> Path:
    """A MOV with its index last, cut a quarter of the way into the index: the frames are
    there, the table that says where they are is not whole."""
    data = phone_video(path, container="mov", faststart=False).read_bytes()
    at = _boxes(data)[b"moov"]
    (size,) = struct.unpack_from(">I", data, at)
    path.write_bytes(data[: at + size // 4])
    return path


def wav_sizes_past_end(path: Path) -> Path:
    """A WAV whose RIFF and data sizes claim ten times the samples it holds."""
    _encode(path, "-f", "lavfi", "-i", f"sine=d={SECONDS}", "-f", "wav")
    data = bytearray(path.read_bytes())
    at = data.find(b"data")
    (data_size,) = struct.unpack_from("<I", data, at + 4)
    struct.pack_into("<I", data, at + 4, data_size * 10)
    struct.pack_into("<I", data, 4, len(data) - 8 + data_size * 9)
    path.write_bytes(data)
    return path


def _cut(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def opus_cut(path: Path) -> Path:
    """An Ogg Opus voice note cut inside a page: no end-of-stream page."""
    _encode(path, "-f", "lavfi", "-i", f"sine=d={SECONDS}", "-c:a", "libopus", "-f", "ogg")
    return _cut(path, 0.6)


def mp3_cut(path: Path) -> Path:
    """An MP3 cut inside a frame."""
    _encode(path, "-f", "lavfi", "-i", f"sine=d={SECONDS}", "-c:a", "libmp3lame", "-f", "mp3")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 5 + 7])
    return path


def amr_cut(path: Path, frames: int = 150) -> Path:
    """AMR-NB in its storage format (as old phones record voice), cut inside a frame."""
    payload = np.random.default_rng(7).integers(0, 256, (frames, _AMR_FRAME_BYTES), np.uint8)
    body = b"".join(bytes([_AMR_FRAME_HEADER]) + row.tobytes() for row in payload)
    path.write_bytes(b"#!AMR\n" + body[: len(body) - _AMR_FRAME_BYTES // 2])
    return path


def matroska_segment_past_end(path: Path) -> Path:
    """A Matroska video whose last quarter is gone: the Segment's size says more follows."""
    phone_video(path, container="matroska")
    return _cut(path, 0.75)


def png_idat_past_end(path: Path) -> Path:
    """A PNG whose image data chunk claims 1 MiB more than there is, with no IEND after it."""
    Image.effect_noise((256, 256), 64).convert("RGB").save(path, "PNG")
    data = bytearray(path.read_bytes())
    at = data.find(b"IDAT") - 4
    (length,) = struct.unpack_from(">I", data, at)
    struct.pack_into(">I", data, at, length + 2**20)
    path.write_bytes(data[: at + 8 + length])
    return path


def thousand_hours(path: Path) -> Path:
    """A three-second Matroska video whose Segment Info claims 1,000 hours."""
    data = bytearray(phone_video(path, container="matroska").read_bytes())
    at = data.find(b"\x44\x89\x88")  # Duration, an 8-byte float, in the timescale's ms
    if at < 0:
        raise ValueError("no 8-byte Duration element in ffmpeg's Matroska")
    struct.pack_into(">d", data, at + 3, 1000 * 3600 * 1000.0)
    path.write_bytes(data)
    return path


def wide_frames(path: Path, width: int = 15360, height: int = 64) -> Path:
    """A video 16K pixels wide (15,360, the 16K UHD width), one second long."""
    return _encode(
        path, "-f", "lavfi", "-i", f"testsrc=s={width}x{height}:r=5:d=1",
        "-c:v", "mjpeg", "-q:v", "10", "-f", "matroska",
    )  # fmt: skip


def hundred_audio_streams(path: Path, streams: int = 100) -> Path:
    """A Matroska file with one short video stream and 100 audio streams."""
    maps = [arg for _ in range(streams) for arg in ("-map", "1:a")]
    return _encode(
        path,
        "-f", "lavfi", "-i", "testsrc=s=64x64:r=5:d=1",
        "-f", "lavfi", "-i", "sine=d=1",
        "-map", "0:v", *maps, "-c:v", "mjpeg", "-c:a", "pcm_s16le", "-f", "matroska",
    )  # fmt: skip


def opus_corrupt_header(path: Path) -> Path:
    """An Ogg Opus file whose identification header names Opus version 255 and no channels."""
    _encode(path, "-f", "lavfi", "-i", f"sine=d={SECONDS}", "-c:a", "libopus", "-f", "ogg")
    data = bytearray(path.read_bytes())
    at = data.find(b"OpusHead")
    data[at + 8] = 255  # version
    data[at + 9] = 0  # channel count
    page = data.rfind(b"OggS", 0, at)
    _ogg_page_crc(data, page)  # a valid page around a bad header: the decoder must judge it
    path.write_bytes(data)
    return path


def _ogg_page_crc(data: bytearray, page: int) -> None:
    """Rewrite the CRC of the Ogg page at `page` (CRC-32, polynomial 0x04C11DB7, unreflected,
    computed with the CRC field zeroed), as a muxer would have written it."""
    segments = data[page + 26]
    length = 27 + segments + sum(data[page + 27 : page + 27 + segments])
    struct.pack_into("<I", data, page + 22, 0)
    crc = 0
    for byte in data[page : page + length]:
        crc ^= byte << 24
        for _ in range(8):
            crc = (crc << 1) ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    struct.pack_into("<I", data, page + 22, crc)


def hundred_megapixels(path: Path) -> Path:
    """A real 100-megapixel JPEG (10,000 x 10,000), the size of a medium-format camera's."""
    small = Image.effect_noise((500, 500), 80).convert("RGB")
    small.resize((10_000, 10_000), Image.Resampling.BILINEAR).save(path, "JPEG", quality=40)
    return path


def _jpeg(size: tuple[int, int] = (320, 240)) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def _with_app1(jpeg: bytes, payload: bytes) -> bytes:
    """The JPEG with one more APP1 segment after SOI (a segment holds at most 65,533 bytes)."""
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def malformed_exif(path: Path) -> Path:
    """A JPEG whose EXIF IFD claims 65,535 entries, with offsets and counts past its end."""
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 0xFFFF)
    entry = struct.pack("<HHII", 0x010F, 2, 0x7FFFFFFF, 0xFFFFFF00)  # Make: 2 GiB, far away
    path.write_bytes(_with_app1(_jpeg(), b"Exif\x00\x00" + tiff + entry * 40))
    return path


def oversized_xmp(path: Path) -> Path:
    """A JPEG with a full 64 KiB XMP packet of nested elements, then a second packet that
    never closes: what an editor's bug or a fuzzer leaves."""
    head = b"http://ns.adobe.com/xap/1.0/\x00"
    nested = b"<x:xmpmeta xmlns:x='adobe:ns:meta/'>" + b"<a>" * 8000
    full = head + nested + b"x" * (65_533 - len(head) - len(nested))
    jpeg = _with_app1(_with_app1(_jpeg(), head + b"<x:xmpmeta><rdf:RDF"), full)
    path.write_bytes(jpeg)
    return path


def jpeg_with_zip(path: Path) -> Path:
    """A JPEG with a zip appended after its End Of Image marker: a picture that hides files."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("hidden.txt", "behind the picture")
    path.write_bytes(_jpeg() + buffer.getvalue())
    return path


def jpeg_named_mp4(directory: Path) -> Path:
    """A JPEG under a video's name."""
    path = directory / "VID_20240101_120000.mp4"
    path.write_bytes(_jpeg())
    return path


def mp4_named_jpg(directory: Path) -> Path:
    """A video under a photo's name."""
    return phone_video(directory / "IMG_20240101_120000.jpg")


#: Every maker that writes to a path, by the name the tests and `make fuzz` use.
LYING_FILES = {
    "mp4_mdat_past_end": mp4_mdat_past_end,
    "mov_moov_past_end": mov_moov_past_end,
    "wav_sizes_past_end": wav_sizes_past_end,
    "opus_cut": opus_cut,
    "mp3_cut": mp3_cut,
    "amr_cut": amr_cut,
    "matroska_segment_past_end": matroska_segment_past_end,
    "png_idat_past_end": png_idat_past_end,
    "thousand_hours": thousand_hours,
    "wide_frames": wide_frames,
    "hundred_audio_streams": hundred_audio_streams,
    "opus_corrupt_header": opus_corrupt_header,
    "hundred_megapixels": hundred_megapixels,
    "malformed_exif": malformed_exif,
    "oversized_xmp": oversized_xmp,
    "jpeg_with_zip": jpeg_with_zip,
}

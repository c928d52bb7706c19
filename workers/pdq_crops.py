"""PDQ hashes of many crops of one picture at the cost of about one.

A photo's crop probes (`workers.hashes.crop_probes`) are the PDQ hashes of 80 crops of it;
hashed one by one with pdqhash they were four fifths of the hashes stage's time on a small
photo (27 ms of 33 on 64-320 px pictures, 2 vCPU), and so the floor of a backlog of
thumbnails and messenger previews.

Everything PDQ does before its final threshold is linear in the picture's luma: two passes of
box filters along each axis (the Jarosz tent filter), decimation to 64x64, and a 16x16 block
of the 2-D DCT. Per axis that is one matrix, and the DCT block of a crop is
`rows @ luma @ cols.T`, where `rows` (16 x height) holds, in the crop's row range, the DCT
of the decimated filter that PDQ builds for the crop's height, and zeros elsewhere; `cols`
likewise. The crops of a probe grid share few row ranges and few column ranges (three
fractions per side give nine of each), so one product of stacked operators yields every
crop's block at once: a few million multiply-adds instead of 80 passes over the pixels.

The operators follow ThreatExchange's reference code (`pdq/cpp/downscaling` and
`pdq/cpp/hashing`), which pdqhash wraps: the same window sizes, the same clipped windows at
the edges, the same decimation points, the same DCT rows (1-16, no DC) and the same rule
for a bit (above the lower median). Only rounding differs (float64 here, float32 and another
summation order there), so a bit may differ where a coefficient lies within rounding of the
median; `tests/test_hashes.py` measures how often against pdqhash itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
import numpy.typing as npt

#: PDQ's downsampled side, and its hash's side in DCT coefficients.
_SIDE, _BITS_SIDE = 64, 16
#: Rec. 601 luma, as float32 constants, as the reference computes it.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
#: Below this on a side the reference hashes nothing (all zeros, quality 0).
MIN_SIDE = 5

F64 = npt.NDArray[np.float64]


@cache
def _dct_rows() -> F64:
    """Rows 1-16 of the 64-point DCT-II (the reference skips the DC row)."""
    rows = np.arange(1, _BITS_SIDE + 1)[:, None]
    columns = np.arange(_SIDE)[None, :]
    dct: F64 = np.sqrt(2.0 / _SIDE) * np.cos(np.pi / 2.0 / _SIDE * rows * (2 * columns + 1))
    return dct


def _box(length: int, window: int) -> F64:
    """One box-filter pass over a line of `length` as a matrix: each output the mean of the
    window around it, clipped at the ends (the reference's running sum, written out)."""
    half = (window + 2) // 2
    out = np.arange(length)
    first = np.maximum(out - (window - half), 0)
    last = np.minimum(out + half - 1, length - 1)
    read = np.arange(length)[None, :]
    inside = (read >= first[:, None]) & (read <= last[:, None])
    box: F64 = inside / (last - first + 1)[:, None]
    return box


@cache
def axis_operator(length: int) -> F64:
    """PDQ along one axis of `length` pixels, up to the threshold: two box passes (the
    window PDQ picks for this length), decimation to 64 samples, then DCT rows 1-16.
    Shape 16 x length."""
    window = (length + 2 * _SIDE - 1) // (2 * _SIDE)
    box = _box(length, window)
    samples = np.floor((np.arange(_SIDE) + 0.5) * length / _SIDE).astype(np.intp)
    operator: F64 = _dct_rows() @ (box @ box)[samples]
    operator.setflags(write=False)
    return operator


def _stacked(length: int, spans: Sequence[tuple[int, int]]) -> F64:
    """Each span's axis operator placed at the span within a line of `length`, stacked."""
    stacked = np.zeros((len(spans) * _BITS_SIDE, length))
    for number, (start, stop) in enumerate(spans):
        stacked[number * _BITS_SIDE : (number + 1) * _BITS_SIDE, start:stop] = axis_operator(
            stop - start
        )
    return stacked


def luma(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """The reference's float luma of an RGB picture (height x width x 3)."""
    weighted: npt.NDArray[np.float32] = rgb.astype(np.float32) @ _LUMA
    return weighted


def crop_hashes(
    picture_luma: npt.NDArray[np.float32],
    boxes: Sequence[tuple[int, int, int, int]],
) -> npt.NDArray[np.bool_]:
    """The PDQ bits of each crop box (left, top, right, bottom) of one picture: one row of
    256 bits per box, in pdqhash's order (the reference's bit 255 first). A box under 5 px
    on a side hashes to all zeros, as in the reference."""
    row_spans = sorted({(top, bottom) for _, top, _, bottom in boxes})
    column_spans = sorted({(left, right) for left, _, right, _ in boxes})
    height, width = picture_luma.shape
    usable_rows = [span for span in row_spans if span[1] - span[0] >= MIN_SIDE]
    usable_columns = [span for span in column_spans if span[1] - span[0] >= MIN_SIDE]
    bits = np.zeros((len(boxes), _BITS_SIDE * _BITS_SIDE), dtype=bool)
    if not usable_rows or not usable_columns:
        return bits
    blocks = (
        _stacked(height, usable_rows)
        @ picture_luma.astype(np.float64)
        @ _stacked(width, usable_columns).T
    )
    row_at = {span: number for number, span in enumerate(usable_rows)}
    column_at = {span: number for number, span in enumerate(usable_columns)}
    for number, (left, top, right, bottom) in enumerate(boxes):
        if (top, bottom) not in row_at or (left, right) not in column_at:
            continue
        row, column = row_at[top, bottom] * _BITS_SIDE, column_at[left, right] * _BITS_SIDE
        block = blocks[row : row + _BITS_SIDE, column : column + _BITS_SIDE].ravel()
        # The reference's median (Torben's) is the lower one of an even count; pdqhash lists
        # the bits from the last coefficient to the first.
        median = np.partition(block, block.size // 2 - 1)[block.size // 2 - 1]
        bits[number] = (block > median)[::-1]
    return bits

"""HEALPix partitions of the sky as Gaia source_id ranges.

A Gaia source_id carries the nested level-12 HEALPix index of the source in its bits above 2^35
(Gaia DR3 documentation, gaia_source.source_id), so every nested pixel at level L <= 12 is one
contiguous source_id range. One TAP query per pixel is then a range scan on the archive's primary
key (fast, no spatial index needed), and the ranges tile the sky without overlap.
"""

from __future__ import annotations

from specfm.stars.columns import healpix_from_source_id

MAX_LEVEL = 12
_UNIT = 2**35  # source_ids per level-12 pixel


def n_pixels(level: int) -> int:
    """Nested HEALPix pixels at `level` (12 * 4^level)."""
    _check_level(level)
    return 12 * 4**level


def source_id_range(hpx: int, level: int) -> tuple[int, int]:
    """Inclusive [lo, hi] source_id range of nested pixel `hpx` at `level`: the inverse of
    `columns.healpix_from_source_id` (every id in it maps back to `hpx`, none outside does)."""
    if not 0 <= hpx < n_pixels(level):
        raise ValueError(f"HEALPix pixel {hpx} does not exist at level {level} (0..{n_pixels(level) - 1})")
    width = _UNIT * 4 ** (MAX_LEVEL - level)
    return hpx * width, (hpx + 1) * width - 1


def partitions(level: int, pixels=None) -> list[int]:
    """The pixels a sample covers: `pixels` (validated, sorted, unique) or the whole sky."""
    if pixels is None:
        return list(range(n_pixels(level)))
    out = sorted({int(p) for p in pixels})
    for p in out:
        source_id_range(p, level)  # raises for a pixel outside the level
    return out


def _check_level(level: int) -> None:
    if not (isinstance(level, int) and 0 <= level <= MAX_LEVEL):
        raise ValueError(f"HEALPix level must be an integer in 0..{MAX_LEVEL} (source_id resolution), got {level!r}")

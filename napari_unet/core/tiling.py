"""Overlap-tile prediction without torch: grid, mirror padding, blend window, band-wise stitching.

A network maps an input tile of `tile_in` pixels to an output tile of `tile_out` pixels centred in it
(`tile_in - tile_out` is the context that a valid-mode U-Net consumes; 0 in same mode). Output tiles
overlap by at least `overlap` pixels and are blended with a separable raised-cosine window that is
close to zero at tile edges, where a padded network sees the least context, so there are no seams.
The grid reaches `overlap // 2` past the image on every side; pixels outside the image are mirrored
(the paper's overlap-tile strategy), so border pixels get context too.

Stitching streams through the image one row of tiles at a time: blended rows that no later tile
touches are handed to a `sink` and dropped, so memory grows with the tile size and image width, never
with the image height.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np


def reflect_indices(start: int, stop: int, n: int) -> np.ndarray:
    """Indices start..stop-1 mirrored into [0, n) like ``np.pad(mode="reflect")``, any distance."""
    idx = np.arange(start, stop)
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= n, period - idx, idx)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Output-tile starts covering [-overlap//2, length + overlap//2) with overlaps >= `overlap`."""
    if tile <= overlap:
        raise ValueError(f"tile ({tile}) must be larger than overlap ({overlap})")
    m = overlap // 2
    span = length + 2 * m
    if span <= tile:
        return [-(tile - length) // 2]
    n = math.ceil((span - overlap) / (tile - overlap))
    n = max(n, 2)
    return [-m + round(i * (span - tile) / (n - 1)) for i in range(n)]


def blend_window(size: tuple[int, int], overlap: int) -> np.ndarray:
    """Separable window: raised-cosine ramps of `overlap` px at each edge, 1 inside, never 0."""

    def ramp(n: int) -> np.ndarray:
        w = np.ones(n, np.float32)
        r = min(overlap, n // 2)
        if r > 0:
            t = (np.arange(r, dtype=np.float32) + 0.5) / r
            w[:r] = np.sin(0.5 * np.pi * t) ** 2
            w[n - r :] = w[:r][::-1]
        return w

    return np.outer(ramp(size[0]), ramp(size[1]))


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one 2D plane go.

    Attributes:
        shape: (H, W) of the plane.
        tile_in: (h, w) of an input tile.
        tile_out: (h, w) of the network output for one input tile.
        overlap: Minimum overlap of neighbouring output tiles, in px.
    """

    shape: tuple[int, int]
    tile_in: tuple[int, int]
    tile_out: tuple[int, int]
    overlap: int

    @property
    def ys(self) -> list[int]:
        return tile_starts(self.shape[0], self.tile_out[0], self.overlap)

    @property
    def xs(self) -> list[int]:
        return tile_starts(self.shape[1], self.tile_out[1], self.overlap)

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    def input_tile(self, image: np.ndarray, y: int, x: int) -> np.ndarray:
        """The input tile whose output starts at (y, x), mirrored where it leaves the image."""
        (h, w), (sy, sx) = self.tile_in, self.context
        y0, x0 = y - sy, x - sx
        H, W = image.shape[-2:]
        if y0 >= 0 and x0 >= 0 and y0 + h <= H and x0 + w <= W:
            return image[..., y0 : y0 + h, x0 : x0 + w]
        ry, rx = reflect_indices(y0, y0 + h, H), reflect_indices(x0, x0 + w, W)
        return image[..., ry[:, None], rx[None, :]]

    @property
    def context(self) -> tuple[int, int]:
        return (
            (self.tile_in[0] - self.tile_out[0]) // 2,
            (self.tile_in[1] - self.tile_out[1]) // 2,
        )


Predictor = Callable[[np.ndarray], np.ndarray]
Sink = Callable[[int, int, np.ndarray], None]


def stitch(
    grid: TileGrid,
    image: np.ndarray,
    predict: Predictor,
    sink: Sink,
    channels: int,
    batch_size: int = 4,
) -> Generator[tuple[int, int], None, None]:
    """Predict every tile of `image` and blend the outputs, streaming finished rows to `sink`.

    Args:
        grid: The tile layout; `grid.shape` must equal `image.shape[-2:]`.
        image: (H, W) or (C_in, H, W) float array.
        predict: Maps a batch (B, C_in, *tile_in) to (B, channels, *tile_out) float32.
        sink: Called as ``sink(y0, y1, block)`` with block (channels, y1 - y0, W) float32 for each
            finished band of rows, top to bottom, covering [0, H) exactly once.
        channels: Output channels of `predict`.
        batch_size: Tiles per call of `predict`.

    Yields:
        (tiles done, tiles in total) after each batch.
    """
    H, W = grid.shape
    if tuple(image.shape[-2:]) != (H, W):
        raise ValueError(f"grid shape {grid.shape} != image shape {image.shape[-2:]}")
    if image.ndim == 2:
        image = image[None]
    oh, ow = grid.tile_out
    win = blend_window(grid.tile_out, grid.overlap)
    ys, xs = grid.ys, grid.xs
    total, done = len(ys) * len(xs), 0
    # Band buffer covering image rows [lo, lo + cap); rows above `lo` are already finished.
    cap = 2 * oh + 1
    acc = np.zeros((channels, cap, W), np.float32)
    wsum = np.zeros((cap, W), np.float32)
    lo = 0
    for r, y in enumerate(ys):
        positions = [(y, x) for x in xs]
        for b in range(0, len(positions), batch_size):
            chunk = positions[b : b + batch_size]
            batch = np.stack([grid.input_tile(image, yy, xx) for yy, xx in chunk]).astype(np.float32, copy=False)
            out = np.asarray(predict(batch), dtype=np.float32)
            if out.shape != (len(chunk), channels, oh, ow):
                raise ValueError(f"predictor returned {out.shape}, expected {(len(chunk), channels, oh, ow)}")
            for (yy, xx), o in zip(chunk, out):
                # Clip the output tile to the image, then place it in the band buffer.
                ty0, tx0 = max(0, -yy), max(0, -xx)
                ty1, tx1 = min(oh, H - yy), min(ow, W - xx)
                if ty1 <= ty0 or tx1 <= tx0:
                    continue
                by0, by1 = yy + ty0 - lo, yy + ty1 - lo
                w = win[ty0:ty1, tx0:tx1]
                acc[:, by0:by1, xx + tx0 : xx + tx1] += o[:, ty0:ty1, tx0:tx1] * w
                wsum[by0:by1, xx + tx0 : xx + tx1] += w
            done += len(chunk)
            yield done, total
        # Rows before the next tile row's first row are final.
        done_to = H if r + 1 == len(ys) else min(H, max(lo, ys[r + 1]))
        n = done_to - lo
        if n > 0:
            sink(lo, done_to, acc[:, :n] / wsum[:n])
            acc[:, : cap - n] = acc[:, n:].copy()
            acc[:, cap - n :] = 0
            wsum[: cap - n] = wsum[n:].copy()
            wsum[cap - n :] = 0
            lo = done_to

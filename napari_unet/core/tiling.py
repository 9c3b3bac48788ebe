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

    def input_tile(self, image: np.ndarray, y: int, x: int, origin: tuple[int, int] = (0, 0)) -> np.ndarray:
        """The input tile whose output starts at (y, x), mirrored where it leaves the plane.

        `image` holds the plane from `origin` (row, column) on: the whole plane, or the part that a
        window's tiles read (`input_span`).
        """
        (h, w), (sy, sx) = self.tile_in, self.context
        y0, x0 = y - sy, x - sx
        H, W = self.shape
        oy, ox = origin
        if y0 >= 0 and x0 >= 0 and y0 + h <= H and x0 + w <= W:
            return image[..., y0 - oy : y0 - oy + h, x0 - ox : x0 - ox + w]
        ry, rx = reflect_indices(y0, y0 + h, H) - oy, reflect_indices(x0, x0 + w, W) - ox
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
    *,
    window: tuple[int, int, int, int] | None = None,
    origin: tuple[int, int] = (0, 0),
    cache=None,
) -> Generator[tuple[int, int], None, None]:
    """Predict the tiles of `grid` and blend the outputs, streaming finished rows to `sink`.

    With a `window`, only the tiles whose output reaches into it are predicted, and only the window is
    blended, in the same order as for the whole plane: a window's result is the same numbers as the
    same pixels of the whole plane's, which is what lets blocks of a big plane (`core.blockwise`)
    agree with the whole-plane result whatever the block size.

    Args:
        grid: The tile layout of the whole plane.
        image: (H, W) or (C_in, H, W) float array: the whole plane, or the part of it starting at
            `origin` (row, column) that holds every input pixel the window's tiles read (mirrored
            indices included).
        predict: Maps a batch (B, C_in, *tile_in) to (B, channels, *tile_out) float32.
        sink: Called as ``sink(y0, y1, block)`` with block (channels, y1 - y0, window width) float32
            for each finished band of rows, top to bottom, covering the window's rows exactly once
            (y0, y1 in plane coordinates).
        channels: Output channels of `predict`.
        batch_size: Tiles per call of `predict`.
        window: (y0, y1, x0, x1) of the plane to produce; None for the whole plane.
        origin: Plane coordinates of `image`'s first pixel.
        cache: Tile outputs by their output origin (y, x), shared by the windows of one plane
            (`in`, `[]` and `update(dict)`, e.g. `blockwise.TileReuse`): a tile found there is not
            predicted again, and the predicted ones are offered to its `update`.

    Yields:
        (tiles done, tiles in total) after each batch.
    """
    H, W = grid.shape
    wy0, wy1, wx0, wx1 = window or (0, H, 0, W)
    if image.ndim == 2:
        image = image[None]
    if window is None and origin == (0, 0) and tuple(image.shape[-2:]) != (H, W):
        raise ValueError(f"grid shape {grid.shape} != image shape {image.shape[-2:]}")
    oh, ow = grid.tile_out
    win = blend_window(grid.tile_out, grid.overlap)
    ys, xs = _window_axes(grid, (wy0, wy1, wx0, wx1))
    total, done = len(ys) * len(xs), 0
    width = wx1 - wx0
    # Band buffer covering plane rows [lo, lo + cap); rows above `lo` are already finished.
    cap = 2 * oh + 1
    acc = np.zeros((channels, cap, width), np.float32)
    wsum = np.zeros((cap, width), np.float32)
    lo = wy0
    for r, y in enumerate(ys):
        positions = [(y, x) for x in xs]
        for b in range(0, len(positions), batch_size):
            chunk = positions[b : b + batch_size]
            todo = chunk if cache is None else [pos for pos in chunk if pos not in cache]
            found = {}
            if todo:
                batch = np.stack([grid.input_tile(image, yy, xx, origin) for yy, xx in todo]).astype(
                    np.float32, copy=False
                )
                new = np.asarray(predict(batch), dtype=np.float32)
                if new.shape != (len(todo), channels, oh, ow):
                    raise ValueError(f"predictor returned {new.shape}, expected {(len(todo), channels, oh, ow)}")
                found = dict(zip(todo, new))
                if cache is not None:
                    cache.update(found)
            out = [found[pos] if pos in found else cache[pos] for pos in chunk]
            for (yy, xx), o in zip(chunk, out):
                # Clip the output tile to the window, then place it in the band buffer.
                ty0, tx0 = max(0, wy0 - yy), max(0, wx0 - xx)
                ty1, tx1 = min(oh, wy1 - yy), min(ow, wx1 - xx)
                if ty1 <= ty0 or tx1 <= tx0:
                    continue
                by0, by1 = yy + ty0 - lo, yy + ty1 - lo
                bx0, bx1 = xx + tx0 - wx0, xx + tx1 - wx0
                w = win[ty0:ty1, tx0:tx1]
                acc[:, by0:by1, bx0:bx1] += o[:, ty0:ty1, tx0:tx1] * w
                wsum[by0:by1, bx0:bx1] += w
            done += len(chunk)
            yield done, total
        # Rows before the next tile row's first row are final.
        done_to = wy1 if r + 1 == len(ys) else min(wy1, max(lo, ys[r + 1]))
        n = done_to - lo
        if n > 0:
            sink(lo, done_to, acc[:, :n] / wsum[:n])
            acc[:, : cap - n] = acc[:, n:].copy()
            acc[:, cap - n :] = 0
            wsum[: cap - n] = wsum[n:].copy()
            wsum[cap - n :] = 0
            lo = done_to


def _window_axes(grid: TileGrid, window: tuple[int, int, int, int]) -> tuple[list[int], list[int]]:
    """The output rows and columns where the tiles that reach into `window` start."""
    (oh, ow), (wy0, wy1, wx0, wx1) = grid.tile_out, window
    return [y for y in grid.ys if y < wy1 and y + oh > wy0], [x for x in grid.xs if x < wx1 and x + ow > wx0]


def window_keys(grid: TileGrid, window: tuple[int, int, int, int]) -> list[tuple[int, int]]:
    """The output origins (y, x) of the tiles that reach into `window`, in the order `stitch` predicts them."""
    ys, xs = _window_axes(grid, window)
    return [(y, x) for y in ys for x in xs]


def input_span(grid: TileGrid, window: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the plane pixels that the tiles reaching into `window` read (mirroring included)."""
    (H, W), (h, w), (sy, sx) = grid.shape, grid.tile_in, grid.context
    ys, xs = _window_axes(grid, window)
    ry = reflect_indices(ys[0] - sy, ys[-1] - sy + h, H)
    rx = reflect_indices(xs[0] - sx, xs[-1] - sx + w, W)
    return int(ry.min()), int(ry.max()) + 1, int(rx.min()), int(rx.max()) + 1


def linear_taps(n_in: int, n_out: int, o0: int, o1: int):
    """Source taps of output pixels o0..o1-1 when resizing n_in -> n_out px (pixel centres aligned)."""
    c = np.clip((np.arange(o0, o1) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    i0 = np.floor(c).astype(np.int64)
    return i0, np.minimum(i0 + 1, n_in - 1), (c - i0).astype(np.float32)


def enlarge_window_uint8(read, in_shape, out_shape, window) -> np.ndarray:
    """`resample_window` for uint8 planes made larger (`out_shape` >= `in_shape`), by Pillow's bilinear filter in
    fixed point: the network's probabilities back to a 2048^2 plane from 1644^2 take 0.05 s instead of 0.32 s
    (3 channels; AMX Xeon, 2 threads), within one level of the float path (a fifth of the pixels differ by one),
    and a window within one level of the same pixels of the whole plane.

    It reads what `resample_window` reads: Pillow's triangle filter, when enlarging, weighs the same two pixels
    per axis as `linear_taps`, and cut at the plane's edge it keeps the edge pixel, as the clamp does.
    """
    from PIL import Image

    (H, W), (h, w) = in_shape, out_shape
    if h < H or w < W:
        raise ValueError(f"enlarge_window_uint8 makes planes larger, not {in_shape} -> {out_shape}")
    y0, y1, x0, x1 = window
    ty, tx = linear_taps(H, h, y0, y1), linear_taps(W, w, x0, x1)
    r0, r1 = int(ty[0].min()), int(ty[1].max()) + 1
    c0, c1 = int(tx[0].min()), int(tx[1].max()) + 1
    src = np.asarray(read(slice(r0, r1), slice(c0, c1)), np.uint8)
    sy, sx = H / h, W / w
    box = (x0 * sx - c0, y0 * sy - r0, min(x1 * sx, W) - c0, min(y1 * sy, H) - r0)
    out = np.empty((*src.shape[:-2], y1 - y0, x1 - x0), np.uint8)
    for idx in np.ndindex(src.shape[:-2]):
        plane = Image.fromarray(np.ascontiguousarray(src[idx]))
        out[idx] = np.asarray(plane.resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR, box=box))
    return out


def resample_window(read, in_shape, out_shape, window, antialias: bool = False) -> np.ndarray:
    """Pixels `window` (y0, y1, x0, x1) of a plane of `in_shape` resized to `out_shape`, reading only what they need.

    Bilinear with pixel centres aligned, as scikit-image's ``resize(order=1)``; with `antialias`, a
    Gaussian (sigma = (factor - 1) / 2, as scikit-image) is applied first over the part read plus a
    margin of its radius, so a window's pixels equal those of the whole plane resized.

    Args:
        read: ``read(rows, cols)`` -> float32 (..., rows, cols) of the source plane, for two slices.
    """
    import scipy.ndimage as ndi

    (H, W), (h, w) = in_shape, out_shape
    y0, y1, x0, x1 = window
    ty, tx = linear_taps(H, h, y0, y1), linear_taps(W, w, x0, x1)
    sigma = (max(0.0, (H / h - 1) / 2), max(0.0, (W / w - 1) / 2)) if antialias else (0.0, 0.0)
    my, mx = (int(4 * s + 0.5) + 1 if s > 0 else 0 for s in sigma)
    r0, r1 = max(0, int(ty[0].min()) - my), min(H, int(ty[1].max()) + 1 + my)
    c0, c1 = max(0, int(tx[0].min()) - mx), min(W, int(tx[1].max()) + 1 + mx)
    src = np.asarray(read(slice(r0, r1), slice(c0, c1)), dtype=np.float32)
    if any(s > 0 for s in sigma):
        src = ndi.gaussian_filter(src, (0,) * (src.ndim - 2) + sigma, mode="mirror")
    a, b, f = ty
    rows = src[..., a - r0, :] * (1 - f)[:, None] + src[..., b - r0, :] * f[:, None]
    a, b, f = tx
    return rows[..., a - c0] * (1 - f) + rows[..., b - c0] * f

"""Class probabilities for one 2D plane, tile by tile, as a generator that yields progress.

Probabilities are kept as uint8 (0..255) arrays of shape (3, H, W): background, interior, boundary.
That is 3 bytes a pixel instead of 12, which is what keeps an 8192x8192 plane within budget; the
quantisation step (1/255) is far below what the thresholds downstream can resolve.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch

from .device import autocast_dtype, keep_freed_memory
from .model import FusedCpuUNet, UNet, fuse_batchnorm, fused_cpu_net
from .tiling import TileGrid, enlarge_window_uint8, input_span, linear_taps, resample_window, stitch, window_keys


@dataclass
class InferenceModel:
    """A U-Net prepared for inference on one device: BatchNorm folded, channels-last, autocast.

    Build it with `prepare`; it never changes the model it was made from.
    """

    net: UNet
    device: torch.device
    dtype: torch.dtype | None
    tta: bool = False  # average the probabilities over the four flips of every tile (4 forward passes)
    fused: FusedCpuUNet | None = None  # the same network with fused oneDNN kernels, on CPUs with bf16

    @classmethod
    def prepare(cls, model: UNet, device: torch.device, precision: str = "auto", tta: bool = False) -> InferenceModel:
        """Copy `model` for inference. `precision`: ``"auto"`` (see `autocast_dtype`) or ``"fp32"``;
        `tta`: test-time augmentation by flips."""
        keep_freed_memory()
        net = fuse_batchnorm(copy.deepcopy(model).cpu().eval())
        net = net.to(device)
        if device.type == "cpu":
            net = net.to(memory_format=torch.channels_last)
        dtype = autocast_dtype(device) if precision == "auto" else None
        fused = fused_cpu_net(net) if device.type == "cpu" and dtype is torch.bfloat16 else None
        return cls(net, device, dtype, tta, fused)

    @property
    def forward_net(self) -> torch.nn.Module:
        """The network that runs: the fused one where it was built, else the prepared `net`."""
        return self.net if self.fused is None else self.fused

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        if self.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        flips = ((), (-1,), (-2,), (-2, -1)) if self.tta else ((),)
        net = self.forward_net
        probs = None
        for dims in flips:
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                logits = net(torch.flip(x, dims) if dims else x)
            p = torch.softmax(logits.float(), dim=1)
            p = torch.flip(p, dims) if dims else p
            probs = p if probs is None else probs + p
        return (probs / len(flips)).cpu().numpy()


def default_tile(model: UNet, tile: int | None = None) -> int:
    """Largest input tile: 512 in same mode (measured 3.0-3.7 Mpx/s on CPU vs 2.4 at 256), 540 in valid."""
    if tile is None:
        tile = 512 if model.config.mode == "same" else 540
    return model.fit_input_size(tile)


def plan_axis(net: UNet, length: int, max_tile: int, overlap: int, slack: int = 0) -> int:
    """Input tile length for one axis: the fewest tiles of at most `max_tile`, each just big enough.

    Splitting a 2048 px axis into 5 tiles of 448 instead of 5 of 512 predicts 12 % fewer pixels;
    a 512 px axis takes two 288 px tiles instead of three 256 px ones. With `slack`, tiles may grow
    by up to that much when that predicts fewer pixels in all: a 512 px axis is then one tile of 544
    (its 16 px mirror margins included) instead of two of 288.
    """

    def plan(cap: int) -> tuple[int, int]:
        out_max = net.output_size(cap)
        span = length + 2 * (overlap // 2)
        n = max(1, math.ceil((span - overlap) / (out_max - overlap))) if span > out_max else 1
        needed = span if n == 1 else math.ceil((span - overlap) / n) + overlap
        size = min(cap, net.fit_input_size(needed + 2 * net.shrink))
        return n * size, size

    return min(plan(max_tile), plan(net.fit_input_size(max_tile + slack)))[1]


def predict_plane(
    infer: InferenceModel,
    plane: np.ndarray,
    *,
    scale: float = 1.0,
    tile: int | None = None,
    overlap: int = 32,
    batch_size: int | None = None,
) -> Generator[tuple[int, int], None, np.ndarray]:
    """Predict class probabilities of a normalised 2D plane (`predict_window` over all of it).

    Args:
        infer: The prepared network.
        plane: (H, W) float32, normalised.
        scale: Resize factor applied before the network (model diameter / object diameter);
            probabilities are resized back, so the result always has the plane's shape.
        tile: Input tile size (rounded up to one the network accepts); default per mode.
        overlap: Minimum overlap of output tiles, px.
        batch_size: Tiles per forward pass; None picks about 256 k pixels a batch.

    Yields:
        (tiles done, tiles total).

    Returns:
        uint8 probabilities (3, H, W), 255 = 1.0.
    """
    H, W = plane.shape
    return (
        yield from predict_window(
            infer, lambda ys, xs: plane[ys, xs], (H, W), (0, H, 0, W),
            scale=scale, tile=tile, overlap=overlap, batch_size=batch_size,
        )
    )  # fmt: skip


def network_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """The plane's size once rescaled for the network (unchanged within 2 % of 1)."""
    if abs(scale - 1.0) <= 0.02:
        return tuple(shape)
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def _window_plan(infer: InferenceModel, shape, window, scale, tile, overlap, batch_size):
    """The whole plane's tile grid at the network's scale, the network pixels `window` needs, and the batch."""
    net = infer.net
    H, W = shape
    y0, y1, x0, x1 = window
    h, w = network_shape(shape, scale)
    resized = (h, w) != (H, W)
    slack = 2 * overlap if tile is None else 0  # a tile size the caller chose is a hard limit
    tile = default_tile(net, tile)
    tin = (plan_axis(net, h, tile, overlap, slack), plan_axis(net, w, tile, overlap, slack))
    tout = (net.output_size(tin[0]), net.output_size(tin[1]))
    ov = min(overlap, tout[0] // 2, tout[1] // 2)
    if batch_size is None:  # about 256 k pixels a batch: enough to keep the cores busy, little memory
        batch_size = max(1, round(4 * 256 * 256 / (tin[0] * tin[1])))
    grid = TileGrid((h, w), tin, tout, ov)
    if resized:  # the network pixels that bilinear resizing back to `window` reads
        ty, tx = linear_taps(h, H, y0, y1), linear_taps(w, W, x0, x1)
        net_window = (int(ty[0].min()), int(ty[1].max()) + 1, int(tx[0].min()), int(tx[1].max()) + 1)
    else:
        net_window = window
    return grid, net_window, batch_size, resized


def window_tiles(
    infer: InferenceModel, shape, window, *, scale: float = 1.0, tile: int | None = None, overlap: int = 32
) -> set[tuple[int, int]]:
    """The tiles (output origins in the network's grid) that `predict_window` predicts for `window`."""
    grid, net_window, _, _ = _window_plan(infer, shape, window, scale, tile, overlap, 1)
    return set(window_keys(grid, net_window))


def predict_window(
    infer: InferenceModel,
    read,
    shape: tuple[int, int],
    window: tuple[int, int, int, int],
    *,
    scale: float = 1.0,
    tile: int | None = None,
    overlap: int = 32,
    batch_size: int | None = None,
    cache=None,
) -> Generator[tuple[int, int], None, np.ndarray]:
    """Class probabilities of the `window` (y0, y1, x0, x1) of a plane of `shape`, reading only what it needs.

    The tiles are those of the whole plane, blended in the same order, and the rescaling is done per
    window with the whole plane's geometry, so a window gets the same probabilities as the same pixels
    of the whole plane: the result does not depend on how a big plane is cut into blocks.

    Args:
        read: ``read(rows, cols)`` -> normalised float32 pixels of the plane, for two slices.
        shape: (H, W) of the whole plane.
        scale, tile, overlap, batch_size: As `predict_plane`.
        cache: Tile outputs shared by the windows of one plane (`tiling.stitch`, `blockwise.TileReuse`).

    Returns:
        uint8 probabilities (3, y1 - y0, x1 - x0), 255 = 1.0.
    """
    H, W = shape
    grid, net_window, batch_size, resized = _window_plan(infer, shape, window, scale, tile, overlap, batch_size)
    h, w = grid.shape
    a, b, c, d = input_span(grid, net_window)
    if resized:
        work = resample_window(read, (H, W), (h, w), (a, b, c, d), antialias=scale < 1)
    else:
        work = np.asarray(read(slice(a, b), slice(c, d)), dtype=np.float32)
    ny0, ny1, nx0, nx1 = net_window
    probs = np.empty((3, ny1 - ny0, nx1 - nx0), np.uint8)

    def sink(r0: int, r1: int, block: np.ndarray) -> None:
        probs[:, r0 - ny0 : r1 - ny0] = np.clip(block * 255.0 + 0.5, 0, 255).astype(np.uint8)

    yield from stitch(
        grid, work[None], infer, sink, channels=3, batch_size=batch_size, window=net_window, origin=(a, c),
        cache=cache,
    )  # fmt: skip
    del work
    if resized:

        def read_probs(rows: slice, cols: slice) -> np.ndarray:
            return probs[:, rows.start - ny0 : rows.stop - ny0, cols.start - nx0 : cols.stop - nx0]

        if h <= H and w <= W:  # the usual case: the plane was made smaller for the network
            probs = enlarge_window_uint8(read_probs, (h, w), (H, W), window)
        else:
            probs = np.clip(resample_window(read_probs, (h, w), (H, W), window) + 0.5, 0, 255).astype(np.uint8)
    return probs

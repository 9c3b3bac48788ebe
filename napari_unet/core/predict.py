"""Class probabilities for one 2D plane, tile by tile, as a generator that yields progress.

Probabilities are kept as uint8 (0..255) arrays of shape (3, H, W): background, interior, boundary.
That is 3 bytes a pixel instead of 12, which is what keeps an 8192x8192 plane within budget; the
quantisation step (1/255) is far below what the thresholds downstream can resolve.
"""

from __future__ import annotations

import copy
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch
from skimage.transform import resize

from .device import autocast_dtype
from .model import UNet, fuse_batchnorm
from .tiling import TileGrid, stitch


@dataclass
class InferenceModel:
    """A U-Net prepared for inference on one device: BatchNorm folded, channels-last, autocast.

    Build it with `prepare`; it never changes the model it was made from.
    """

    net: UNet
    device: torch.device
    dtype: torch.dtype | None

    @classmethod
    def prepare(cls, model: UNet, device: torch.device, precision: str = "auto") -> InferenceModel:
        """Copy `model` for inference. `precision`: ``"auto"`` (see `autocast_dtype`) or ``"fp32"``."""
        net = fuse_batchnorm(copy.deepcopy(model).cpu().eval())
        net = net.to(device)
        if device.type == "cpu":
            net = net.to(memory_format=torch.channels_last)
        dtype = autocast_dtype(device) if precision == "auto" else None
        return cls(net, device, dtype)

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        if self.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            logits = self.net(x)
        return torch.softmax(logits.float(), dim=1).cpu().numpy()


def default_tile(model: UNet, tile: int | None = None) -> int:
    """A tile input size valid for `model`: 256 in same mode, 348 (-> 164 out) in valid mode."""
    if tile is None:
        tile = 256 if model.config.mode == "same" else 348
    return model.fit_input_size(tile)


def predict_plane(
    infer: InferenceModel,
    plane: np.ndarray,
    *,
    scale: float = 1.0,
    tile: int | None = None,
    overlap: int = 32,
    batch_size: int = 4,
) -> Generator[tuple[int, int], None, np.ndarray]:
    """Predict class probabilities of a normalised 2D plane.

    Args:
        infer: The prepared network.
        plane: (H, W) float32, normalised.
        scale: Resize factor applied before the network (model diameter / object diameter);
            probabilities are resized back, so the result always has the plane's shape.
        tile: Input tile size (rounded up to one the network accepts); default per mode.
        overlap: Minimum overlap of output tiles, px.
        batch_size: Tiles per forward pass.

    Yields:
        (tiles done, tiles total).

    Returns:
        uint8 probabilities (3, H, W), 255 = 1.0.
    """
    net = infer.net
    H, W = plane.shape
    work = plane
    if abs(scale - 1.0) > 0.02:
        size = (max(1, round(H * scale)), max(1, round(W * scale)))
        work = resize(plane, size, order=1, anti_aliasing=scale < 1, preserve_range=True).astype(np.float32)
    tile = default_tile(net, tile)
    h, w = work.shape
    # Small planes: shrink the tile to what covers them, to avoid predicting mostly mirror padding.
    tin = (
        min(tile, net.fit_input_size(h + overlap + 2 * net.shrink)),
        min(tile, net.fit_input_size(w + overlap + 2 * net.shrink)),
    )
    tout = (net.output_size(tin[0]), net.output_size(tin[1]))
    ov = min(overlap, tout[0] // 2, tout[1] // 2)
    grid = TileGrid((h, w), tin, tout, ov)
    probs = np.empty((3, h, w), np.uint8)

    def sink(y0: int, y1: int, block: np.ndarray) -> None:
        probs[:, y0:y1] = np.clip(block * 255.0 + 0.5, 0, 255).astype(np.uint8)

    yield from stitch(grid, work[None], infer, sink, channels=3, batch_size=batch_size)
    if work is not plane:
        probs = np.stack(
            [resize(p, (H, W), order=1, preserve_range=True, anti_aliasing=False).round().astype(np.uint8) for p in probs]
        )
    return probs

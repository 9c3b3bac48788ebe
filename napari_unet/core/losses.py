"""Masked, boundary-weighted softmax cross-entropy (Ronneberger et al. 2015, eq. 1-2).

Per-pixel weight = class-balancing weight of the pixel's class + the border term of
`instances.border_weights`. Untrusted pixels (mask False) get weight exactly 0, so their image,
target or prediction values cannot change the loss or its gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_balance(target: torch.Tensor, mask: torch.Tensor, classes: int, cap: float = 10.0) -> torch.Tensor:
    """Inverse-frequency class weights over the trusted pixels, mean-normalised, capped at `cap`."""
    counts = torch.bincount(target[mask].flatten(), minlength=classes).float()
    present = counts > 0
    w = torch.zeros(classes, device=target.device)
    if present.any():
        freq = counts[present] / counts.sum()
        w[present] = (1.0 / (freq * present.sum())).clamp(max=cap)
    return w


def weighted_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    border: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean weighted cross-entropy over trusted pixels.

    Args:
        logits: (n, C, H, W).
        target: (n, H, W) int64 classes.
        border: (n, H, W) border weights added to the class weights; None for none.
        mask: (n, H, W) bool trusted pixels; None trusts every pixel.

    Returns:
        Scalar loss; 0 (with a graph) when no pixel is trusted.
    """
    if mask is None:
        mask = torch.ones_like(target, dtype=torch.bool)
    w = class_balance(target, mask, logits.shape[1])[target]
    if border is not None:
        w = w + border
    w = torch.where(mask, w, torch.zeros_like(w))
    # Untrusted targets may hold anything: make them a valid class so cross_entropy never sees junk.
    safe_target = torch.where(mask, target, torch.zeros_like(target))
    ce = F.cross_entropy(logits.float(), safe_target, reduction="none")
    return (ce * w).sum() / w.sum().clamp_min(1e-6)

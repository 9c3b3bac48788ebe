"""The one loss: masked, boundary-weighted softmax cross-entropy (Ronneberger et al. 2015, eq. 1-2).

Per-pixel weight = class-balancing weight of the pixel's category + the border term of
`instances.border_weights`. Untrusted pixels (mask False) get weight exactly 0, so their image,
target or prediction values cannot change the loss or its gradient. Beside the three classes
(background, interior, boundary) a fourth target, `FOREGROUND` ("some object": interior or boundary),
serves scribbled object strokes, whose extent is unknown; its log-likelihood is
log(p_interior + p_boundary). Training the bundled model and fine-tuning both use `masked_loss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BACKGROUND, INTERIOR, BOUNDARY, FOREGROUND = 0, 1, 2, 3
CATEGORIES = 4


def category_weights(target: torch.Tensor, mask: torch.Tensor, cap: float = 10.0) -> torch.Tensor:
    """Inverse-frequency weights of the target categories over trusted pixels, capped at `cap`."""
    counts = torch.bincount(target[mask].flatten(), minlength=CATEGORIES).float()[:CATEGORIES]
    present = counts > 0
    w = torch.zeros(CATEGORIES, device=target.device)
    if present.any():
        freq = counts[present] / counts.sum()
        w[present] = (1.0 / (freq * present.sum())).clamp(max=cap)
    return w


def pixel_nll(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel negative log-likelihood (n, H, W) of the targets, `FOREGROUND` included."""
    logp = F.log_softmax(logits.float(), dim=1)
    cls = target.clamp(min=0, max=BOUNDARY)
    nll = -torch.gather(logp, 1, cls[:, None])[:, 0]
    fg = torch.logsumexp(logp[:, INTERIOR : BOUNDARY + 1], dim=1)
    return torch.where(target == FOREGROUND, -fg, nll)


def masked_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    border: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Class-balanced, boundary-weighted NLL over trusted pixels (weight 0 elsewhere).

    Args:
        logits: (n, 3, H, W).
        target: (n, H, W) int64 in {0, 1, 2, 3} (3 = `FOREGROUND`); untrusted pixels may hold anything.
        border: (n, H, W) border weights added to the class weights, or None.
        mask: (n, H, W) bool, trusted pixels; None trusts every pixel.

    Returns:
        Scalar; 0 (with a graph) when nothing is trusted.
    """
    if mask is None:
        mask = torch.ones_like(target, dtype=torch.bool)
    safe = torch.where(mask, target, torch.zeros_like(target))  # untrusted targets may be junk
    w = category_weights(safe, mask)[safe]
    if border is not None:
        w = w + border
    w = torch.where(mask, w, torch.zeros_like(w))
    nll = pixel_nll(logits, safe)
    return torch.where(mask, nll * w, torch.zeros_like(nll)).sum() / w.sum().clamp_min(1e-6)

"""Pieces of the fine-tuning step: settings, the rollback guard, the forgetting guards, validation, previews.

The loss is `losses.masked_loss`. Options that were measured and rejected (L2-SP, distillation on
untrusted pixels, an EMA of the weights, keeping the best held-out step) were removed on 2026-12-02;
their figures are in benchmarks/RESULTS.md and their code in git history.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch

from .augment import AugmentConfig
from .losses import BACKGROUND, CATEGORIES, FOREGROUND, masked_loss
from .model import UNet
from .modelfile import ModelInfo


@dataclass(frozen=True)
class TrainSettings:
    """Knobs of `train.train_iter` (passed as keyword arguments); recorded in every version's lineage."""

    lr: float = 1e-3
    batch: int = 4  # crops of the user's data per step
    patch: int = 128  # crop size at the model's scale
    warmup: int = 10  # steps of linear warm-up, then cosine decay to 10 % over the budget
    clip: float = 5.0  # gradient-norm clipping
    crop_bias: float = 0.9  # probability that a crop is centred on a trusted pixel
    holdout: float = 0.15  # fraction of trusted pixels held out for validation (in blocks)
    val_every: float = 15.0  # seconds between validation events
    replay: int = 2  # original-domain crops (real and synthetic) added to each step (0 = off)
    replay_weight: float = 2.0  # weight of the replay crops' loss against the user's (measured: 0.5 forgot up to 0.037 AP on real data, 2 up to 0.013)
    replay_real: bool = True  # replay real crops of the bundled model's training data (plus synthetic ones)
    replay_synthetic: int = 6  # synthetic images (192²) in the replay pool
    w0: float = 10.0  # border weight (paper): w0 * exp(-(d1 + d2)^2 / (2 sigma^2)) at the model's scale
    sigma: float = 5.0
    precision: str = "auto"  # "auto" (bf16 on CPUs with native bf16 and CUDA, fp16 + scaling on older CUDA) or "fp32"
    interpolate: float = 0.5  # keep this fraction of the change from the starting weights (WiSE-FT); 1 = all
    diverge: float = 10.0  # a loss above this x its running mean counts as divergence
    max_rollbacks: int = 6
    probe_images: int = 2  # synthetic original-domain images scored before/after (forgetting); 0 = off
    max_forgetting: float = (
        0.0  # keep less of the change if the probe's AP fell more than this below the root's; 0 = off
    )
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @classmethod
    def from_kwargs(cls, kw: dict) -> TrainSettings:
        """Settings from keyword arguments; TypeError for unknown names, ValueError for bad values."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kw) - known)
        if unknown:
            raise TypeError(f"unknown training setting(s): {', '.join(unknown)}")
        s = cls(**kw)
        if s.precision not in ("auto", "fp32"):
            raise ValueError("precision must be 'auto' or 'fp32'")
        if s.max_forgetting < 0 or (s.max_forgetting > 0 and s.probe_images < 1):
            raise ValueError("max_forgetting must be >= 0 and needs probe_images >= 1 (8 measure it to about 0.01 AP)")
        if s.lr <= 0 or s.batch < 1 or s.patch < 16 or s.replay < 0 or not 0 < s.interpolate <= 1:
            raise ValueError("lr must be > 0, batch >= 1, patch >= 16, replay >= 0, 0 < interpolate <= 1")
        return s

    def to_dict(self) -> dict:
        return asdict(self)

    def lr_at(self, step: int, progress: float, scale: float = 1.0) -> float:
        """Learning rate at `step` with `progress` (0..1) of the budget used; `scale` from rollbacks."""
        warm = min(1.0, (step + 1) / max(self.warmup, 1))
        return self.lr * scale * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


class RollbackGuard:
    """Watches every step for NaN/inf or a loss explosion; restores the last good weights when one comes.

    A snapshot of the weights and the optimiser state is taken every `every` healthy steps. On a bad
    step the snapshot is restored and the learning-rate scale halved; after `max_rollbacks` the run
    gives up (keeping the restored weights).
    """

    def __init__(self, model: UNet, opt: torch.optim.Optimizer, cfg: TrainSettings, every: int = 10):
        self.model, self.opt, self.cfg, self.every = model, opt, cfg, every
        self.good_step, self.good = 0, snapshot(model, opt)
        self.lr_scale, self.rollbacks, self.ema, self.gave_up = 1.0, 0, None, False

    def check(self, step: int, loss: float, total: float, grads_finite: bool) -> str | None:
        """Call after backward, before the optimiser step; returns a message if it rolled back."""
        bad = not (math.isfinite(total) and grads_finite)
        exploded = self.ema is not None and step > self.cfg.warmup and loss > self.cfg.diverge * max(self.ema, 0.05)
        if not (bad or exploded):
            return None
        self.rollbacks += 1
        self.model.load_state_dict(self.good[0])
        self.opt.load_state_dict(self.good[1])
        self.lr_scale *= 0.5
        what = "NaN/inf loss" if bad else f"loss jumped to {loss:.3g} (running mean {self.ema:.3g})"
        msg = (
            f"{what} at step {step}: rolled back to step {self.good_step}, "
            f"learning rate halved to {self.cfg.lr * self.lr_scale:.2e}"
        )
        if self.rollbacks > self.cfg.max_rollbacks:
            self.gave_up = True
            msg += "; giving up after repeated failures"
        return msg

    def healthy(self, step: int, loss: float) -> None:
        """Record a good step (after the optimiser step)."""
        self.ema = loss if self.ema is None else 0.9 * self.ema + 0.1 * loss
        if step % self.every == 0:
            self.good_step, self.good = step, snapshot(self.model, self.opt)


def snapshot(model: UNet, opt: torch.optim.Optimizer | None) -> tuple[dict, dict | None]:
    """Copies of the weights (and optimiser state) to roll back to."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, (copy.deepcopy(opt.state_dict()) if opt is not None else None)


@torch.no_grad()
def evaluate_pixels(
    model: UNet,
    val: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    device: torch.device,
    amp: torch.dtype | None,
    batch: int = 8,
) -> dict | None:
    """Balanced pixel accuracy and loss on validation crops (`trainingdata.validation_crops`).

    Balanced accuracy is the mean, over the target categories present, of the fraction of their
    pixels predicted right (a `FOREGROUND` pixel is right as interior or boundary), so the thin
    boundary class, which separates touching objects, counts as much as the background.
    """
    if val is None:
        return None
    images, targets, masks = val
    hits = torch.zeros(CATEGORIES, dtype=torch.float64)
    counts = torch.zeros(CATEGORIES, dtype=torch.float64)
    loss_sum = 0.0
    for i in range(0, images.shape[0], batch):
        x = images[i : i + batch].to(device)
        t = targets[i : i + batch].to(device)
        m = masks[i : i + batch].to(device)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(x)
        pred = logits.float().argmax(1)
        right = torch.where(t == FOREGROUND, pred != BACKGROUND, pred == t)
        for c in range(CATEGORIES):
            sel = m & (t == c)
            counts[c] += float(sel.sum())
            hits[c] += float((right & sel).sum())
        loss_sum += float(masked_loss(logits, t, None, m)) * float(m.sum())
    present = counts > 0
    n = float(counts.sum())
    if not n:
        return None
    metric = float((hits[present] / counts[present]).mean())
    return {"metric": metric, "loss": loss_sum / n, "pixels": int(n)}


PROBE_SEED = 104729  # one fixed probe set, so that scores compare along a lineage


def forgetting_probe(n: int, model_diameter: float) -> Callable[[UNet, torch.device], float] | None:
    """A scorer of AP@0.5 on `n` synthetic images of the original domain (None when n = 0)."""
    if n <= 0:
        return None
    from .instances import median_diameter
    from .synth import SynthStyle, synth_nuclei

    style = SynthStyle(diameter=(16.0, 34.0))
    data = [synth_nuclei((256, 256), rng=np.random.default_rng([PROBE_SEED, i]), style=style) for i in range(n)]

    def score(model: UNet, device: torch.device) -> float:
        from .jobs import drain
        from .metrics import aggregate, match_instances
        from .segment import segment_iter

        ms = []
        for img, lab in data:
            res = drain(segment_iter(img, model, device=device, diameter=median_diameter(lab) or model_diameter))
            ms.append(match_instances(lab, res.labels, 0.5))
        return round(aggregate(ms).ap, 4)

    return score


def probe_reference(info: ModelInfo, n: int) -> float | None:
    """The forgetting probe's AP of the lineage's root, as recorded in `info`'s provenance (or None)."""
    m = info.provenance.get("metrics") or {}
    ref = m.get("probe_reference")
    return float(ref) if ref is not None and m.get("probe_spec") == probe_spec(n) else None


def probe_spec(n: int) -> str:
    return f"synthetic:{n}x256:{PROBE_SEED}"


@torch.no_grad()
def blend(net: UNet, start: UNet, tuned: list[torch.Tensor], f: float) -> None:
    """Set `net`'s weights to start + f x (tuned - start) (WiSE-FT); `tuned` may be `net`'s own parameters."""
    for p, p0, t in zip(net.parameters(), start.parameters(), tuned):
        p.copy_(torch.lerp(p0.to(p.device, p.dtype), t, f))


@torch.no_grad()
def keep_within_budget(
    net: UNet,
    start: UNet,
    fractions: list[float],
    score: Callable[[], float],
    reference: float,
    budget: float,
) -> tuple[float, float]:
    """Set `net` to start + f x (net - start) for the largest f of `fractions` whose score stays within
    `budget` of `reference` (f = 0, the starting weights, when none does); returns (f, score)."""
    tuned = [p.detach().clone() for p in net.parameters()]
    s = math.nan
    for f in [*fractions, 0.0]:
        blend(net, start, tuned, f)
        s = score()
        if reference - s <= budget:
            return f, s
    return 0.0, s


def preview_probabilities(
    model: UNet,
    region: np.ndarray,
    device: torch.device,
    info: ModelInfo,
    diameter: float,
    intensity_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """uint8 (H, W) foreground probability (255 = 1) of a raw 2D region under the current weights."""
    from .jobs import drain
    from .normalize import normalize_plane, percentile_range
    from .predict import InferenceModel, predict_plane

    region = np.asarray(region)
    if region.ndim != 2:
        raise ValueError(f"the preview region must be 2D, got shape {region.shape}")
    lo, hi = intensity_range or percentile_range(
        region, info.normalization.get("low", 1.0), info.normalization.get("high", 99.8)
    )
    plane = normalize_plane(region, lo, hi)
    infer = InferenceModel.prepare(model, device)
    scale = info.diameter / diameter if diameter and math.isfinite(diameter) else 1.0
    probs = drain(predict_plane(infer, plane, scale=scale))
    return (255 - probs[0]).astype(np.uint8)

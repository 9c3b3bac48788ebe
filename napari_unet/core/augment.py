"""Joint image / target / weight / mask augmentation as batched tensor operations on any device.

All geometric transforms (flips, 90-degree rotations, free rotation, scale, shear and the paper's
elastic deformation: a coarse grid of random displacements, smoothly upsampled) are composed into one
sampling grid per sample, so the whole batch is resampled by a single `grid_sample` call: bilinear
for the image and the weight map, nearest for the class targets and the trusted mask. Intensity
transforms (gamma, contrast, brightness, blur, Gaussian and Poisson-like noise) touch the image only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Strength of each augmentation; set a probability to 0 to switch one off."""

    rotate: bool = True  # free rotation (any angle) + flips
    scale: tuple[float, float] = (0.75, 1.33)  # log-uniform zoom
    shear: float = 0.1
    #: With probability `stretch_p`, a sample is stretched along one axis by a factor log-uniform in
    #: [1/stretch, stretch], area kept, before the rotation: elongated nuclei (fibroblasts, muscle, endothelium)
    #: in any orientation. 1 = off (the bundled models were trained without it).
    stretch: float = 1.0
    stretch_p: float = 0.5
    elastic_p: float = 0.7
    elastic_grid: int = 4  # coarse control points per side
    elastic_sigma: float = 6.0  # displacement std at control points, px
    gamma: tuple[float, float] = (0.6, 1.6)
    contrast: tuple[float, float] = (0.6, 1.4)
    brightness: float = 0.1
    blur_p: float = 0.3
    blur_sigma: tuple[float, float] = (0.3, 1.5)
    noise_p: float = 0.5
    noise_sigma: tuple[float, float] = (0.0, 0.08)
    poisson_p: float = 0.3
    poisson_scale: tuple[float, float] = (0.002, 0.03)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, device=device)


def sampling_grid(
    n: int, size: tuple[int, int], cfg: AugmentConfig, g: torch.Generator, device: torch.device
) -> torch.Tensor:
    """(n, H, W, 2) grid for `grid_sample` that applies a random affine + elastic transform."""
    H, W = size
    angle = _uniform(n, 0, 2 * math.pi, g, device) if cfg.rotate else torch.zeros(n, device=device)
    lo, hi = math.log(cfg.scale[0]), math.log(cfg.scale[1])
    zoom = torch.exp(_uniform(n, lo, hi, g, device))
    shear = _uniform(n, -cfg.shear, cfg.shear, g, device)
    flip = (
        torch.where(torch.rand(n, generator=g, device=device) < 0.5, -1.0, 1.0)
        if cfg.rotate
        else torch.ones(n, device=device)
    )
    c, s = torch.cos(angle), torch.sin(angle)
    # Output pixel -> input pixel, in pixel units centred on the patch: R(angle) @ Shear @ diag(flip, 1) / zoom.
    a11, a12 = c * flip, c * shear - s
    a21, a22 = s * flip, s * shear + c
    theta = torch.stack([torch.stack([a11, a12], -1), torch.stack([a21, a22], -1)], -2) / zoom[:, None, None]
    if cfg.stretch > 1:  # ... @ diag(1 / sqrt(a), sqrt(a)): the content sqrt(a) longer along x, shorter along y
        a = torch.exp(_uniform(n, -math.log(cfg.stretch), math.log(cfg.stretch), g, device))
        a = torch.where(torch.rand(n, generator=g, device=device) < cfg.stretch_p, a, torch.ones_like(a))
        theta = theta * torch.stack([a.rsqrt(), a.sqrt()], -1)[:, None, :]
    ys = torch.arange(H, device=device, dtype=torch.float32) - (H - 1) / 2
    xs = torch.arange(W, device=device, dtype=torch.float32) - (W - 1) / 2
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([xx, yy], -1).reshape(1, -1, 2)  # (1, HW, 2) as (x, y)
    src = pts @ theta.transpose(1, 2)  # (n, HW, 2)
    src = src.reshape(n, H, W, 2)
    if cfg.elastic_p > 0:
        k = cfg.elastic_grid
        disp = torch.randn(n, 2, k, k, generator=g, device=device) * cfg.elastic_sigma
        disp = disp * (torch.rand(n, 1, 1, 1, generator=g, device=device) < cfg.elastic_p)
        disp = F.interpolate(disp, size=(H, W), mode="bicubic", align_corners=True)
        src = src + disp.permute(0, 2, 3, 1)
    # Pixel units -> [-1, 1] (align_corners=True convention).
    norm = torch.tensor([(W - 1) / 2, (H - 1) / 2], device=device)
    return src / norm


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample separable Gaussian blur of (n, 1, H, W) with per-sample sigma (n,)."""
    r = int(math.ceil(3 * float(sigma.max())))
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None].clamp_min(1e-3) ** 2))
    k = k / k.sum(1, keepdim=True)
    n = x.shape[0]
    xp = F.pad(x.transpose(0, 1), (r, r, r, r), mode="reflect")  # (1, n, H+2r, W+2r)
    xp = F.conv2d(xp, k[:, None, None, :], groups=n)
    xp = F.conv2d(xp, k[:, None, :, None], groups=n)
    return xp.transpose(0, 1)


def augment_intensity(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Random gamma, contrast, brightness, blur and noise on a normalised (n, 1, H, W) batch."""
    n, dev = x.shape[0], x.device
    gamma = torch.exp(_uniform(n, math.log(cfg.gamma[0]), math.log(cfg.gamma[1]), g, dev))
    x = x.clamp_min(0) ** gamma[:, None, None, None]
    x = x * _uniform(n, *cfg.contrast, g, dev)[:, None, None, None]
    x = x + _uniform(n, -cfg.brightness, cfg.brightness, g, dev)[:, None, None, None]
    if cfg.blur_p > 0:
        sigma = _uniform(n, *cfg.blur_sigma, g, dev)
        on = torch.rand(n, generator=g, device=dev) < cfg.blur_p
        if on.any():
            x = torch.where(on[:, None, None, None], _gaussian_blur(x, torch.where(on, sigma, 1e-3)), x)
    if cfg.poisson_p > 0:
        k = _uniform(n, *cfg.poisson_scale, g, dev) * (torch.rand(n, generator=g, device=dev) < cfg.poisson_p)
        x = x + torch.sqrt(x.clamp_min(0) * k[:, None, None, None]) * torch.randn(x.shape, generator=g, device=dev)
    if cfg.noise_p > 0:
        s = _uniform(n, *cfg.noise_sigma, g, dev) * (torch.rand(n, generator=g, device=dev) < cfg.noise_p)
        x = x + s[:, None, None, None] * torch.randn(x.shape, generator=g, device=dev)
    return x


def augment_batch(
    image: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor,
    cfg: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
    extra: torch.Tensor | None = None,
):
    """Augment a batch jointly.

    Args:
        image: (n, 1, H, W) float, normalised.
        target: (n, H, W) integer class targets.
        weight: (n, H, W) float per-pixel loss weights.
        mask: (n, H, W) bool or 0/1, trusted pixels.
        cfg: Strengths; defaults to `AugmentConfig()`.
        generator: Random generator on the batch's device, for reproducibility.
        extra: (n, C, H, W) float maps that follow the geometry only (bilinear, zero outside the input): e.g. a
            teacher's probabilities on the unaugmented batch. The random draws are the same with and without it.

    Returns:
        (image, target as int64, weight, mask as bool), same shapes, same device; with `extra`, its warped maps
        last.
    """
    cfg = cfg or AugmentConfig()
    dev = image.device
    g = generator or torch.Generator(device=dev).manual_seed(int(torch.randint(0, 2**31, (1,))))
    n, _, H, W = image.shape
    grid = sampling_grid(n, (H, W), cfg, g, dev)
    img = F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=True)
    wt = F.grid_sample(weight[:, None].float(), grid, mode="bilinear", padding_mode="reflection", align_corners=True)
    # Targets and mask travel together through one nearest-neighbour resampling.
    tm = torch.stack([target.float(), mask.float()], 1)
    tm = F.grid_sample(tm, grid, mode="nearest", padding_mode="reflection", align_corners=True)
    img = augment_intensity(img, cfg, g)
    out = img, tm[:, 0].round().long(), wt[:, 0], tm[:, 1] > 0.5
    if extra is None:
        return out
    return *out, F.grid_sample(extra.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True)

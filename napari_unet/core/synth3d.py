"""Synthetic 3D fluorescence nuclei with exact 3D instance labels (for evaluating the 3D mode).

A stack is built at isotropic resolution and then sampled every `anisotropy` voxels in Z, as a
confocal or light-sheet microscope with a coarser Z step would: crowded ellipsoids of random size,
elongation and orientation, each with its own brightness and a smooth chromatin texture, blurred by
an anisotropic PSF (longer in Z), dimmed with depth, with Poisson and camera noise. The labels are
the ellipsoids sampled at the same voxels, so they are exact; touching nuclei share a face, never a voxel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class Synth3DStyle:
    """Ranges the generator draws from (isotropic voxels of the XY pixel size)."""

    diameter: tuple[float, float] = (16.0, 28.0)  # median nucleus diameter of a stack, px
    spread: float = 0.2  # relative spread of diameters within a stack
    elongation: tuple[float, float] = (1.0, 1.6)  # longest / shortest axis
    density: tuple[float, float] = (0.25, 0.45)  # fraction of the volume the nuclei may fill
    psf_xy: tuple[float, float] = (0.6, 1.2)  # Gaussian sigma in XY, px (confocal: FWHM 1.4-2.8 px)
    psf_z_factor: tuple[float, float] = (2.0, 3.0)  # sigma in Z / sigma in XY (confocal axial / lateral)
    attenuation: tuple[float, float] = (0.0, 0.6)  # fraction of the signal lost from top to bottom
    photons: tuple[float, float] = (150.0, 800.0)  # peak photons of a nucleus
    dim_to_bright: float = 4.0  # brightness range between nuclei


def _u(rng, pair) -> float:
    return float(rng.uniform(*pair))


def synth_nuclei_3d(
    shape: tuple[int, int, int] = (24, 128, 128),
    *,
    anisotropy: float = 1.0,
    rng: np.random.Generator | int | None = None,
    style: Synth3DStyle | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic stack (Z, Y, X) with a Z step of `anisotropy` XY pixels, and its exact labels.

    Returns:
        (uint16 image, int32 labels 1..N), both of `shape`.
    """
    style = style or Synth3DStyle()
    rng = np.random.default_rng(rng)
    Z, Y, X = shape
    zi = max(1, int(round(Z * anisotropy)))  # isotropic depth
    iso = (zi, Y, X)
    d_med = _u(rng, style.diameter)
    labels = np.zeros(iso, np.int32)
    signal = np.zeros(iso, np.float32)
    target = _u(rng, style.density) * zi * Y * X
    filled, n, tries = 0.0, 0, 0
    zz, yy, xx = np.ogrid[:zi, :Y, :X]
    while filled < target and tries < 4000:
        tries += 1
        d = d_med * float(np.exp(rng.normal(0, style.spread)))
        el = _u(rng, style.elongation)
        radii = np.array([d / 2 / el ** (1 / 3), d / 2 / el ** (1 / 3), d / 2 * el ** (2 / 3)])
        rng.shuffle(radii)
        c = rng.uniform([0, 0, 0], [zi, Y, X])
        # A random rotation (QR of a Gaussian matrix) orients the ellipsoid.
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        r = int(np.ceil(radii.max())) + 1
        lo = np.maximum(np.floor(c - r).astype(int), 0)
        hi = np.minimum(np.ceil(c + r).astype(int) + 1, iso)
        if np.any(hi - lo < 2):
            continue
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        pts = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1) - c
        local = pts @ q
        inside = ((local / radii) ** 2).sum(-1) <= 1.0
        free = labels[box] == 0
        overlap = 1.0 - (inside & free).sum() / max(inside.sum(), 1)
        if inside.sum() < 0.3 * np.pi / 6 * d**3 or overlap > 0.15:  # crowding: touch, barely overlap
            continue
        n += 1
        mask = inside & free
        labels[box][mask] = n
        bright = float(np.exp(rng.uniform(0, np.log(style.dim_to_bright)))) / style.dim_to_bright
        texture = 0.75 + 0.25 * ndi.gaussian_filter(rng.normal(size=mask.shape).astype(np.float32), 1.5) * 3
        signal[box][mask] = bright * np.clip(texture[mask], 0.3, 1.5)
        filled += mask.sum()
    del zz, yy, xx
    sxy = _u(rng, style.psf_xy)
    blurred = ndi.gaussian_filter(signal, (sxy * _u(rng, style.psf_z_factor), sxy, sxy))
    loss = _u(rng, style.attenuation)
    blurred *= (1.0 - loss * np.linspace(0, 1, zi, dtype=np.float32))[:, None, None]
    # Sample every `anisotropy` voxels in Z (the centre of each step).
    zs = np.clip(np.round((np.arange(Z) + 0.5) * zi / Z - 0.5).astype(int), 0, zi - 1)
    img = blurred[zs]
    lab = labels[zs]
    photons = _u(rng, style.photons)
    counts = rng.poisson(np.clip(img, 0, None) * photons + 2.0).astype(np.float32)
    counts += rng.normal(100.0, 3.0, size=counts.shape)  # camera offset and read noise
    image = np.clip(counts, 0, 65535).astype(np.uint16)
    return image, _relabel(lab)


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Ids 1..N consecutive, dropping ids that the Z sampling left without voxels."""
    ids, inverse = np.unique(labels, return_inverse=True)
    out = inverse.reshape(labels.shape).astype(np.int32)
    return out if ids[0] == 0 else out + 1

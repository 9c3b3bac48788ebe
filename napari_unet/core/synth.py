"""Synthetic fluorescence-nuclei images with exact instance labels.

Why this exists
---------------
The bundled U-Net is trained on a limited set of real, hand-annotated images.
Such data covers one or a few labs, microscopes, stains and cell lines, so a
model trained only on it learns their particular look (nucleus size, noise
level, background, bit depth) and fails on images from elsewhere.  This module
draws images from a deliberately *wide* distribution of appearances and
returns, for every image, an instance label image that is exact by
construction.  It is used

* mixed with real data when training the bundled model, so that it
  generalises to nuclei from other labs and microscopes, and
* to make domain-shifted test sets (e.g. small, dim, noisy, crowded nuclei in
  uint8) for fine-tuning tests, where exact ground truth is needed.

What varies (per image, from :class:`SynthStyle`): median nucleus size and
per-nucleus size spread, eccentricity and smooth boundary irregularity,
density from sparse to crowded with touching nuclei, internal texture
(chromatin speckle, dark nucleoli / bright chromocentre spots, sometimes a
brighter rim), per-nucleus brightness with a 5-10x dynamic range, occasional
small bright condensed (mitotic) nuclei, PSF blur, low-frequency
out-of-focus haze, uneven illumination (vignetting and gradients), Poisson
shot noise, Gaussian read noise, camera offset, uint8 or uint16 output and
occasional saturation.  In about 80 % of images the camera offset sits at least
2 noise stds above 0; in the rest the background noise is partly clipped to 0,
as in contrast-stretched 8-bit exports.

Label exactness
---------------
Nuclei are placed one after another on the label image.  A nucleus is a star
shape: an ellipse whose radius is modulated by a few low-order Fourier terms.
Where a new nucleus would overlap existing ones, each contested pixel goes to
the nucleus whose *normalised* radius (distance to the centre divided by the
boundary radius in that direction) is smaller, i.e. the nearer centre; the
placement is rejected if the new nucleus or any neighbour would lose more than
a quarter of its area.  Afterwards every label is reduced to its largest
4-connected component, labels under ``MIN_AREA`` pixels are dropped and the
rest are relabelled ``1..N``.  The image is rendered *from the final label
image*, so every bright nucleus-like object is labelled, nothing unlabelled
looks like a nucleus (the only unlabelled signal is smooth, large-scale
haze), and every labelled nucleus is guaranteed a mean contrast of at least
``MIN_CONTRAST`` background-noise standard deviations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label as _cc_label

from .appearance import random_cytoplasm

__all__ = ["MIN_AREA", "MIN_CONTRAST", "WIDE", "SynthStyle", "synth_dataset", "synth_nuclei"]

#: Labelled objects smaller than this (pixels) are removed, like in the real data.
MIN_AREA = 30
#: Minimum mean contrast of every nucleus over its local background, in units of the
#: image's largest background-noise std (enforced on the noise-free image).
MIN_CONTRAST = 3.5

_DTYPE_MAX = {"uint8": 255, "uint12": 4095, "uint16": 65535}  # uint12 is stored as uint16


@dataclass(frozen=True)
class SynthStyle:
    """Distribution of image appearances for :func:`synth_nuclei`.

    Every ``(low, high)`` range is sampled uniformly once per image, except
    ``snr``, ``peak_uint8`` and ``peak_uint16``, which are sampled
    log-uniformly.  Set ``low == high`` to fix a parameter.

    Attributes:
        diameter: Median equivalent diameter of the image's nuclei, in pixels,
            as drawn (whole and unobstructed).  Labels come out somewhat
            smaller: nuclei cut by the image border, and crowded nuclei that
            cede up to a quarter of their area to touching neighbours.
        size_jitter: Per-nucleus log-normal spread (relative std) of the diameter.
        eccentricity: Eccentricity range of the underlying ellipses (0 = circle).
        irregularity: Amplitude of the smooth Fourier boundary perturbation
            (relative radius modulation, orders 2-5).
        density: Target fraction of the image area covered by nuclei.  Very
            crowded targets may not be reached when ``touching`` is low
            (placement gives up after a bounded number of attempts).
        touching: Probability that a nucleus is placed against a neighbour
            (sharing a border) instead of at a free random position; freely
            placed nuclei keep a gap of about 2 px to all others, so with
            ``touching=(0, 0)`` no two labels are adjacent.
        texture: Strength of the chromatin speckle (relative std of the
            intensity inside nuclei).
        spots: Mean number of nucleolus-like spots (dark) or chromocentre-like
            spots (bright) per nucleus.
        rim_prob: Probability that the nuclei of an image have a brighter rim.
        dynamic_range: Ratio between the brightest and the dimmest nucleus
            (dim ones are raised to ``MIN_CONTRAST`` where the snr is too low
            for the full range).
        mitotic: Fraction of nuclei that are small, bright, condensed
            (mitotic-like) nuclei.
        blur_sigma: Gaussian PSF sigma in pixels.
        haze: Out-of-focus haze level relative to the brightest nucleus
            (low-frequency only).
        illumination: Strength of the smooth multiplicative illumination
            field; the dimmest corner gets ``1 - illumination`` of the light.
        snr: Brightest (interphase) nucleus signal divided by the background
            noise std (approximately; texture and profile change the mean).
        saturation_prob: Probability that an image is over-exposed so that
            bright nuclei clip at the dtype maximum (skipped where the
            background would then exceed half the range: very low snr).
        dtype: Output dtypes to choose from ("uint8", "uint12" stored as uint16,
            "uint16"); a single string is accepted too.
        peak_uint8: Mean signal above offset of the brightest nucleus, uint8.
        offset_uint8: Camera offset (background level) for uint8 images.
        peak_uint16: Mean signal above offset of the brightest nucleus, uint16.
        offset_uint16: Camera offset (background level) for uint16 images
            (uint12 images use 1/16 of the uint16 peak and offset).
        cytoplasm_prob: Probability that an image shows a faint cytoplasm around
            its nuclei (`appearance.add_cytoplasm`, before the camera noise).
        cytoplasm_level: Its mean level relative to the median nucleus signal
            (log-uniform).
        seam: Fraction of the signal left on the pixels where two nuclei touch
            (per image; (1, 1) = no seam). In real images the border between touching
            nuclei is darker than the dimmer of the two (median 0.70-0.78 of its interior
            on mnfinder and BBBC007 labels); without a seam the synthetic border is as bright
            as the nuclei (0.95-1.03), which teaches the model to cut nuclei where there is
            no dark line.
    """

    diameter: tuple[float, float] = (14.0, 40.0)
    size_jitter: float = 0.25
    eccentricity: tuple[float, float] = (0.0, 0.8)
    irregularity: tuple[float, float] = (0.0, 0.08)
    density: tuple[float, float] = (0.05, 0.55)
    touching: tuple[float, float] = (0.0, 0.6)
    texture: tuple[float, float] = (0.0, 0.5)
    spots: tuple[float, float] = (0.0, 3.0)
    rim_prob: float = 0.2
    dynamic_range: tuple[float, float] = (5.0, 10.0)
    mitotic: tuple[float, float] = (0.0, 0.04)
    blur_sigma: tuple[float, float] = (0.5, 2.5)
    haze: tuple[float, float] = (0.0, 0.3)
    illumination: tuple[float, float] = (0.0, 0.5)
    snr: tuple[float, float] = (3.0, 60.0)
    saturation_prob: float = 0.1
    dtype: tuple[str, ...] = ("uint8", "uint16")
    peak_uint8: tuple[float, float] = (60.0, 220.0)
    offset_uint8: tuple[float, float] = (0.0, 25.0)
    peak_uint16: tuple[float, float] = (1000.0, 30000.0)
    offset_uint16: tuple[float, float] = (100.0, 2000.0)
    cytoplasm_prob: float = 0.0
    cytoplasm_level: tuple[float, float] = (0.02, 0.3)
    seam: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        for f in fields(self):  # accept lists for ranges
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        if isinstance(self.dtype, str):
            object.__setattr__(self, "dtype", (self.dtype,))
        if not self.dtype or any(d not in _DTYPE_MAX for d in self.dtype):
            raise ValueError(f"dtype must be a non-empty tuple of {tuple(_DTYPE_MAX)}, got {self.dtype!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple) and f.name != "dtype":
                if len(value) != 2 or value[0] > value[1]:
                    raise ValueError(f"{f.name} must be a (low, high) pair with low <= high, got {value!r}")
        if min(self.diameter[0], self.snr[0], self.peak_uint8[0], self.peak_uint16[0]) <= 0:
            raise ValueError("diameter, snr and peak_* must be > 0")
        if self.dynamic_range[0] < 1 or self.size_jitter < 0 or self.blur_sigma[0] < 0:
            raise ValueError("dynamic_range must be >= 1, size_jitter and blur_sigma >= 0")
        if not 0 <= self.seam[0] <= self.seam[1] <= 1:
            raise ValueError(f"seam must be fractions 0 <= low <= high <= 1, got {self.seam!r}")
        if not all(0 <= p <= 1 for p in (self.rim_prob, self.saturation_prob, self.cytoplasm_prob)):
            raise ValueError("rim_prob, saturation_prob and cytoplasm_prob must be probabilities")


#: The style that trains bundled model v2 (the recipe also draws each image's diameter from 8-80 px):
#: faint cytoplasm in 40 % of images, more bright condensed nuclei and chromocentres, a 30x dynamic
#: range between dim and bright nuclei, denser clusters of touching nuclei, uint12 cameras; since
#: v2.1 touching nuclei are parted by a dark seam, as in real images.
WIDE = SynthStyle(
    diameter=(8.0, 80.0),
    density=(0.05, 0.6),
    touching=(0.0, 0.8),
    spots=(0.0, 8.0),
    dynamic_range=(5.0, 30.0),
    mitotic=(0.0, 0.1),
    blur_sigma=(0.3, 3.0),
    dtype=("uint8", "uint12", "uint16"),
    cytoplasm_prob=0.4,
    seam=(0.1, 0.5),
)


# ----------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------
def _uniform(rng: np.random.Generator, rng_pair: tuple[float, float]) -> float:
    lo, hi = rng_pair
    return float(lo) if lo == hi else float(rng.uniform(lo, hi))


def _loguniform(rng: np.random.Generator, rng_pair: tuple[float, float]) -> float:
    lo, hi = rng_pair
    return float(lo) if lo == hi else float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _interp_matrix(n_out: int, n_in: int, width: float) -> np.ndarray:
    """(n_out, n_in) row-normalised Gaussian weights mapping a coarse grid spanning the axis onto pixels."""
    pos = np.linspace(0.0, n_in - 1.0, n_out, dtype=np.float32)[:, None]
    m = np.exp(-0.5 * ((pos - np.arange(n_in, dtype=np.float32)[None, :]) / np.float32(width)) ** 2)
    return m / m.sum(axis=1, keepdims=True)


def _sandwich(left: np.ndarray, mid: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``left @ mid @ right.T`` with einsum: no BLAS threads (they only add overhead and
    contention for these thin products, e.g. next to a training process)."""
    return np.einsum("il,jl->ij", np.einsum("ik,kl->il", left, mid), right)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Smooth random field in [0, 1] with structures of about ``scale`` pixels.

    Cheap: white noise on a coarse grid (node spacing ``scale / 2``) interpolated with
    separable Gaussian weights (two small matrix products).
    """
    h, w = shape
    gh, gw = max(2, int(math.ceil(2 * h / scale)) + 1), max(2, int(math.ceil(2 * w / scale)) + 1)
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    field = _sandwich(_interp_matrix(h, gh, 1.0), coarse, _interp_matrix(w, gw, 1.0))
    field -= field.min()
    return field / max(float(field.max()), 1e-12)


def _haze_field(rng: np.random.Generator, signal: np.ndarray, sigma: float, blotch_scale: float) -> np.ndarray:
    """Out-of-focus haze in [0, 1]: a wide blur of ``signal`` (glow around nuclei) mixed with
    large-scale random blotches.  Computed on a grid ``sigma / 4`` times coarser, then smoothly
    upsampled, so that it has no nucleus-like (small-scale) structure and costs little."""
    h, w = signal.shape
    f = max(1, int(sigma // 4))
    ph, pw = (-h) % f, (-w) % f
    small = np.pad(signal, ((0, ph), (0, pw)), mode="edge")
    small = small.reshape((h + ph) // f, f, (w + pw) // f, f).mean(axis=(1, 3))
    glow = ndi.gaussian_filter(small, sigma / f, mode="reflect")
    glow /= max(float(glow.max()), 1e-12)
    blotch = ndi.gaussian_filter(rng.standard_normal(glow.shape), blotch_scale / f / 2.0, mode="wrap")
    blotch -= blotch.min()
    blotch /= max(float(blotch.max()), 1e-12)
    mix = rng.uniform(0.3, 0.8)
    small = (mix * glow + (1.0 - mix) * blotch).astype(np.float32)
    if f == 1:
        return small
    sh, sw = small.shape
    return _sandwich(_interp_matrix(sh * f, sh, 0.6)[:h], small, _interp_matrix(sw * f, sw, 0.6)[:w])


_NT = 256  # angular resolution of the boundary-modulation lookup table
_TWO_PI = 2.0 * math.pi


class _Shapes:
    """Pre-drawn geometry for every placement attempt of one image (plain Python lists for speed).

    Nucleus ``i`` is an ellipse written as a quadratic form, with a smooth boundary modulation:
    the normalised radius of a pixel at offset ``(y, x)`` from its centre is
    ``sqrt(qxx x^2 + qxy x y + qyy y^2) / mod_i(atan2(y, x))`` (< 1 inside), where
    ``mod_i(phi) = 1 + sum_k amp_k cos(k (phi - angle) + phase_k)`` (k = 2..5) is tabulated.
    """

    def __init__(
        self, rng: np.random.Generator, n: int, style: SynthStyle, d_med: float, irregularity: float, mit_frac: float
    ) -> None:
        jitter = float(style.size_jitter)
        min_d = 2.0 * math.sqrt(1.3 * MIN_AREA / math.pi)  # comfortably above MIN_AREA
        mitotic = rng.random(n) < mit_frac
        n_mit = int(mitotic.sum())
        diam = d_med * np.exp(jitter * rng.standard_normal(n)).clip(0.5, 2.0)
        diam[mitotic] *= rng.uniform(0.45, 0.7, n_mit)
        diam = np.maximum(diam, min_d)
        ecc = rng.uniform(*style.eccentricity, n)
        ecc[mitotic] = rng.uniform(0.0, 0.85, n_mit)
        q = (1.0 - ecc**2) ** 0.25
        a, b = diam / 2 / q, diam / 2 * q
        angle = rng.uniform(0.0, math.pi, n)
        c, s = np.cos(angle), np.sin(angle)
        ia2, ib2 = 1.0 / a**2, 1.0 / b**2
        self.qxx = (c * c * ia2 + s * s * ib2).tolist()
        self.qyy = (s * s * ia2 + c * c * ib2).tolist()
        self.qxy = (2.0 * c * s * (ia2 - ib2)).tolist()
        self.tables: np.ndarray | None = None
        amps = rng.normal(0.0, 1.0, (n, 4)) * (irregularity / np.arange(1, 5))
        amps *= np.minimum(1.0, 0.3 / np.maximum(np.abs(amps).sum(1), 1e-12))[:, None]
        phases = rng.uniform(0.0, _TWO_PI, (n, 4))
        rmax = a
        if irregularity > 0:
            k = np.arange(2, 6)
            delta = phases - k[None, :] * angle[:, None]
            phi = np.linspace(-math.pi, math.pi, _NT + 1)
            tables = 1.0 + np.einsum("nk,kt->nt", amps * np.cos(delta), np.cos(k[:, None] * phi))
            tables -= np.einsum("nk,kt->nt", amps * np.sin(delta), np.sin(k[:, None] * phi))
            self.tables = tables.astype(np.float32)
            rmax = a * tables.max(axis=1)
        self.rmax = rmax.tolist()
        self.rmin = (b * 0.7).tolist()  # lower bound of the boundary radius (modulation >= 0.7)
        self.diam = diam.tolist()
        self.mitotic = mitotic

    def radius(self, i: int, phi: float) -> float:
        """Boundary radius of nucleus ``i`` in image direction ``phi`` (y = sin, x = cos)."""
        c, s = math.cos(phi), math.sin(phi)
        r = 1.0 / math.sqrt(self.qxx[i] * c * c + self.qxy[i] * c * s + self.qyy[i] * s * s)
        if self.tables is not None:
            phi = (phi + math.pi) % _TWO_PI
            r *= float(self.tables[i, int(phi * (_NT / _TWO_PI))])
        return r

    def rho(self, i: int, cy: float, cx: float, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Normalised radius (< 1 inside) of nucleus ``i`` centred at (cy, cx) on ``[y0:y1, x0:x1]``."""
        yy = np.arange(y0 - cy, y1 - cy, dtype=np.float32)[: y1 - y0, None]
        xx = np.arange(x0 - cx, x1 - cx, dtype=np.float32)[None, : x1 - x0]
        r = (np.float32(self.qxy[i]) * yy) * xx
        r += np.float32(self.qxx[i]) * (xx * xx)
        r += np.float32(self.qyy[i]) * (yy * yy)
        np.sqrt(r, out=r)
        if self.tables is not None:
            t = np.arctan2(yy, xx)
            t += np.float32(math.pi)
            t *= np.float32(_NT / _TWO_PI)
            r /= self.tables[i][t.astype(np.intp)]
        return r


# ----------------------------------------------------------------------------
# geometry: placement of nuclei on the label image
# ----------------------------------------------------------------------------
def _place_nuclei(shape, rng, style, d_med, density, p_touch, irregularity, mit_frac):
    """Sequential placement of nuclei until ``density`` is covered or attempts run out.

    Returns ``(labels, rho_map, mitotic)``: raw (not yet cleaned) labels, the normalised
    radius of the owner for every labelled pixel, and ``mitotic[raw_id]`` flags.
    """
    h, w = shape
    labels = np.zeros(shape, np.int32)
    rho_map = np.full(shape, np.inf, np.float32)
    mean_area = math.pi / 4 * d_med**2 * math.exp(2 * float(style.size_jitter) ** 2)
    target = density * h * w
    n_att = int(5 * target / mean_area) + 40
    shapes = _Shapes(rng, n_att, style, d_med, irregularity, mit_frac)
    touch = (rng.random(n_att) < p_touch).tolist()
    u_other = rng.random(n_att).tolist()
    u_phi = rng.uniform(0.0, _TWO_PI, n_att).tolist()
    u_dist = rng.uniform(0.85, 0.98, n_att).tolist()
    u_y, u_x = rng.random(n_att).tolist(), rng.random(n_att).tolist()

    areas = np.zeros(n_att + 2, np.int64)  # current area of each raw label
    full = np.zeros(n_att + 2, np.int64)  # area of each raw label before it lost pixels to neighbours
    placed = [-1]  # attempt index of raw label id
    cys, cxs = [0.0], [0.0]
    covered = 0
    i = 0  # current shape; it is only replaced after success or 8 failed positions, so that
    fails = 0  # large nuclei are not selected against in crowded images
    for att in range(n_att):
        if covered >= target:
            break
        if fails >= 8:
            i, fails = i + 1, 0
        fails += 1
        d = shapes.diam[i]
        touching = touch[att] and len(placed) > 1
        if touching:
            j = 1 + int(u_other[att] * (len(placed) - 1))
            phi = u_phi[att]
            dist = (shapes.radius(placed[j], phi) + shapes.radius(i, phi + math.pi)) * u_dist[att]
            cy, cx = cys[j] + dist * math.sin(phi), cxs[j] + dist * math.cos(phi)
        else:
            m = d / 3  # centres may lie slightly outside: nuclei cut by the border
            cy, cx = -m + u_y[att] * (h + 2 * m), -m + u_x[att] * (w + 2 * m)
        iy, ix = int(cy + 0.5), int(cx + 0.5)
        if 0 <= iy < h and 0 <= ix < w and labels[iy, ix] != 0:
            continue
        if not touching:  # cheap probes at half the minor radius: any label there means overlap
            r = int(0.5 * shapes.rmin[i])
            probes = ((iy - r, ix), (iy + r, ix), (iy, ix - r), (iy, ix + r))
            if any(0 <= py < h and 0 <= px < w and labels[py, px] for py, px in probes):
                continue
        rmax = shapes.rmax[i] + 3.0
        y0, y1 = max(0, int(cy - rmax)), min(h, int(cy + rmax) + 2)
        x0, x1 = max(0, int(cx - rmax)), min(w, int(cx + rmax) + 2)
        if y1 - y0 < 4 or x1 - x0 < 4:
            continue
        rho = shapes.rho(i, cy, cx, y0, y1, x0, x1)
        inside = rho < 1.0
        own = int(np.count_nonzero(inside))
        if own < MIN_AREA:
            continue
        lab_crop = labels[y0:y1, x0:x1]
        rho_crop = rho_map[y0:y1, x0:x1]
        if not touching:
            # free placement: keep a gap of ~2 px to every existing nucleus
            if lab_crop[rho < 1.0 + 4.0 / d].any():
                continue
            win, nwin = inside, own
        else:
            # contested pixels go to the nearer centre (smaller normalised radius)
            win = inside & (rho < rho_crop)
            nwin = int(np.count_nonzero(win))
            if nwin < 0.75 * own:
                continue
            lost = lab_crop[win]
            lost = lost[lost > 0]
            if lost.size:
                lo = int(lost.min())
                cnt = np.bincount(lost - lo)
                ids = np.flatnonzero(cnt) + lo
                cnt = cnt[cnt > 0]
                if np.any(areas[ids] - cnt < 0.75 * full[ids]):  # neighbours keep >= 75 % overall
                    continue
                areas[ids] -= cnt
                covered -= int(lost.size)
        new_id = len(placed)
        lab_crop[win] = new_id
        rho_crop[win] = rho[win]
        areas[new_id] = nwin
        full[new_id] = own
        covered += nwin
        placed.append(i)
        cys.append(cy)
        cxs.append(cx)
        i, fails = i + 1, 0
    mitotic = np.zeros(len(placed), bool)
    mitotic[1:] = shapes.mitotic[np.asarray(placed[1:], np.intp)]
    return labels, rho_map, mitotic


def _contact(lab: np.ndarray, width: int) -> np.ndarray:
    """Pixels of a nucleus within `width` px of a different nucleus."""
    top = np.iinfo(lab.dtype).max
    grown_hi = ndi.maximum_filter(lab, 2 * width + 1)
    grown_lo = ndi.minimum_filter(np.where(lab > 0, lab, top).astype(lab.dtype), 2 * width + 1)
    return (lab > 0) & ((grown_hi > lab) | (grown_lo < lab))


def _clean_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep the largest 4-connected part of each label, drop small ones, relabel 1..N.

    Returns the new label image and ``old_id`` with ``old_id[new] = old`` (``old_id[0] = 0``).
    """
    cc = _cc_label(labels, connectivity=1, background=0)
    n_cc = int(cc.max())
    if n_cc == 0:
        return np.zeros_like(labels, dtype=np.int32), np.zeros(1, np.int64)
    cc_area = np.bincount(cc.ravel(), minlength=n_cc + 1)
    cc_owner = np.zeros(n_cc + 1, np.int64)
    cc_owner[cc.ravel()] = labels.ravel()
    cc_ids = np.arange(1, n_cc + 1)
    # for every owner keep the component with the largest area
    order = np.lexsort((cc_area[1:], cc_owner[1:]))
    owners_sorted = cc_owner[1:][order]
    last = np.r_[owners_sorted[1:] != owners_sorted[:-1], True]
    keep_cc = cc_ids[order][last]
    keep_cc = keep_cc[cc_area[keep_cc] >= MIN_AREA]
    keep_cc = keep_cc[np.argsort(cc_owner[keep_cc], kind="stable")]  # keep placement order
    lut = np.zeros(n_cc + 1, np.int32)
    lut[keep_cc] = np.arange(1, keep_cc.size + 1, dtype=np.int32)
    old_id = np.r_[0, cc_owner[keep_cc]]
    return lut[cc], old_id


# ----------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------
def synth_nuclei(
    shape: tuple[int, int] = (256, 256),
    *,
    rng: np.random.Generator | int | None = None,
    style: SynthStyle | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate one synthetic fluorescence-nuclei image with exact instance labels.

    Args:
        shape: ``(height, width)`` of the image in pixels.
        rng: A numpy ``Generator`` (used and advanced in place), an integer seed,
            or ``None`` for fresh OS entropy.
        style: Appearance distribution; ``SynthStyle()`` if ``None``.

    Returns:
        ``(image, labels)``: ``image`` is uint8 or uint16 (chosen from
        ``style.dtype``), ``labels`` is int32 with 0 = background and
        consecutive instance ids ``1..N``; both have shape ``shape``.  Every
        label is one 4-connected region of at least ``MIN_AREA`` pixels;
        different labels may touch but never overlap.  The result is
        deterministic for a given integer seed.
    """
    style = SynthStyle() if style is None else style
    rng = np.random.default_rng(rng)
    h, w = int(shape[0]), int(shape[1])
    if h < 8 or w < 8:
        raise ValueError(f"shape must be at least 8x8, got {shape!r}")
    shape = (h, w)

    # ---- per-image parameters -------------------------------------------------
    d_med = _uniform(rng, style.diameter)
    density = _uniform(rng, style.density)
    p_touch = _uniform(rng, style.touching)
    irregularity = _uniform(rng, style.irregularity)
    mit_frac = _uniform(rng, style.mitotic)
    texture = _uniform(rng, style.texture)
    spots = _uniform(rng, style.spots)
    rim_image = rng.random() < style.rim_prob
    dyn = _uniform(rng, style.dynamic_range)
    blur = _uniform(rng, style.blur_sigma)
    haze = _uniform(rng, style.haze)
    illum_strength = _uniform(rng, style.illumination)
    snr = _loguniform(rng, style.snr)
    saturate = rng.random() < style.saturation_prob
    dtype = str(style.dtype[int(rng.integers(len(style.dtype)))])
    if dtype == "uint8":
        peak_adu, offset = _loguniform(rng, style.peak_uint8), _uniform(rng, style.offset_uint8)
    else:
        peak_adu, offset = _loguniform(rng, style.peak_uint16), _uniform(rng, style.offset_uint16)
        if dtype == "uint12":
            peak_adu, offset = peak_adu / 16, offset / 16
    cytoplasm = (
        style.cytoplasm_prob > 0 and rng.random() < style.cytoplasm_prob
    )  # no draw when off: old seeds, old images

    # ---- geometry ---------------------------------------------------------------
    raw, rho_map, raw_mitotic = _place_nuclei(shape, rng, style, d_med, density, p_touch, irregularity, mit_frac)
    labels, old_id = _clean_labels(raw)
    n = old_id.size - 1
    lab = labels
    inside = lab > 0
    rho = np.where(inside, rho_map, np.float32(1.0)).astype(np.float32)

    # ---- photometry (in photo-electrons) -----------------------------------------
    # peak: mean signal of the brightest interphase nucleus; sigma_bg: background noise std
    # peak_e = c * snr**2: small c -> photon-starved (shot noise dominates inside nuclei),
    # large c -> read-noise dominated.  bg_e: uniform autofluorescence / stray light.
    c = math.exp(rng.uniform(math.log(0.5), math.log(8.0)))
    peak_e = snr**2 * c
    bg_e = rng.uniform(0.0, 0.1) * peak_e
    read_e = math.sqrt(max((peak_e / snr) ** 2 - bg_e, 0.0))  # total background std = peak_e / snr

    mitotic = raw_mitotic[old_id]
    # per-nucleus brightness: log-spread over `dyn`, skewed towards bright
    amp = np.zeros(n + 1)
    amp[1:] = peak_e * dyn ** (-rng.beta(1.0, 2.5, n))
    amp[mitotic] = peak_e * rng.uniform(1.5, 2.5, int(mitotic.sum()))
    tex_amp = np.zeros(n + 1, np.float32)
    tex_amp[1:] = texture * rng.uniform(0.5, 1.5, n)
    tex_amp[mitotic] = rng.uniform(0.3, 0.6, int(mitotic.sum()))
    dome = np.zeros(n + 1, np.float32)
    dome[1:] = rng.uniform(0.0, 0.35, n)
    rim = np.zeros(n + 1, np.float32)
    if rim_image:
        rim[1:] = rng.uniform(0.1, 0.6, n)
    rim[mitotic] = 0.0
    rim_w = np.float32(rng.uniform(0.08, 0.16))
    edge = np.zeros(n + 1, np.float32)  # darkening towards the border: touching nuclei show a faint seam
    edge[1:] = rng.uniform(0.1, 0.5, n)

    # profile: optional dome (bright centre) + optional bright rim, soft shoulder at the edge
    rho2 = rho * rho
    profile = 1.0 - dome[lab] * rho2
    if rim_image:
        profile += rim[lab] * np.exp(-(((1.0 - rho) / rim_w) ** 2))
    profile *= 1.0 - edge[lab] * (rho2 * rho2) ** 2

    # chromatin speckle: two scales of band-limited noise, unit std
    sig_t = max(0.7, 0.05 * d_med)
    white = rng.standard_normal(shape).astype(np.float32)
    speck = ndi.gaussian_filter(white, sig_t) * (2.0 * math.sqrt(math.pi) * sig_t)
    speck += 0.6 * ndi.gaussian_filter(white, 2.5 * sig_t) * (2.0 * math.sqrt(math.pi) * 2.5 * sig_t)
    speck /= max(float(speck.std()), 1e-6)
    texture_f = np.maximum(1.0 + tex_amp[lab] * speck, 0.1)

    # nucleolus-like dark spots / chromocentre-like bright spots
    spot_f = 1.0
    if n and spots > 0:
        cand = np.flatnonzero(inside.ravel() & (rho.ravel() < 0.7) & ~mitotic[lab].ravel())
        n_spots = int(rng.poisson(spots * (n - mitotic.sum())))
        if cand.size and n_spots:
            sig_s = max(1.0, rng.uniform(0.06, 0.11) * d_med)
            p_dark = rng.random()
            dark = rng.random(n_spots) < p_dark
            weight = np.where(dark, -rng.uniform(0.3, 0.7, n_spots), rng.uniform(0.3, 0.9, n_spots))
            imp = np.zeros(h * w, np.float32)
            np.add.at(imp, rng.choice(cand, n_spots), weight)
            field = ndi.gaussian_filter(imp.reshape(shape), sig_s) * np.float32(2 * math.pi * sig_s**2)
            spot_f = np.maximum(1.0 + field, 0.15)

    base = (profile * texture_f * spot_f).astype(np.float32) * inside  # relative pattern, ~1 inside
    if style.seam[0] < 1.0 and n > 1:  # no draw when off: old seeds, old images
        base *= np.where(_contact(lab, max(1, round(d_med / 25))), np.float32(_uniform(rng, style.seam)), np.float32(1))

    # illumination: vignetting + linear gradient + smooth blotches, 1 at the brightest point
    yy = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    xx = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    vy, vx = (float(v) for v in rng.uniform(-0.6, 0.6, 2))
    gphi = rng.uniform(0, 2 * math.pi)
    wts = [float(v) for v in rng.dirichlet((1.0, 1.0, 1.0))]
    fall = (
        wts[0] * ((yy - vy) ** 2 + (xx - vx) ** 2)
        + wts[1] * (yy * math.sin(gphi) + xx * math.cos(gphi))
        + wts[2] * _smooth_noise(rng, shape, max(h, w) / 2.0)
    )
    fall = fall - fall.min()
    fall /= max(float(fall.max()), 1e-6)
    illum = (1.0 - illum_strength * fall).astype(np.float32)

    def render(a: np.ndarray) -> np.ndarray:
        return ndi.gaussian_filter(base * a[lab].astype(np.float32), blur)

    signal = render(amp)
    # haze: smooth out-of-focus glow of the nuclei plus large-scale blotches (no nucleus-like structure)
    haze_e = np.zeros(shape, np.float32)
    if haze > 0:
        field = _haze_field(rng, signal, max(2.0 * d_med, 0.08 * max(h, w)), max(3.0 * d_med, max(h, w) / 4.0))
        haze_e = np.float32(haze * peak_e) * field

    # guarantee visibility: mean contrast of every nucleus >= MIN_CONTRAST * local noise std
    if n:
        sigma_max = math.sqrt(bg_e + float(haze_e.max()) + read_e**2)
        area = np.bincount(lab.ravel(), minlength=n + 1).astype(np.float64)
        mean_c = np.bincount(lab.ravel(), weights=(illum * signal).ravel(), minlength=n + 1)
        mean_c = mean_c / np.maximum(area, 1)
        need = MIN_CONTRAST * sigma_max * 1.05
        boost = np.ones(n + 1)
        boost[1:] = np.maximum(1.0, need / np.maximum(mean_c[1:], 1e-9))
        if np.any(boost > 1.0):
            amp = amp * boost
            signal = render(amp)

    if cytoplasm and n:
        signal = random_cytoplasm(signal, lab, rng, _loguniform(rng, style.cytoplasm_level))

    # ---- camera --------------------------------------------------------------------
    expected = illum * (signal + haze_e + np.float32(bg_e))
    electrons = rng.poisson(np.maximum(expected, 0.0)).astype(np.float32)
    electrons += rng.normal(0.0, read_e, shape).astype(np.float32)
    # Exposure (gain, offset).  Usually the offset is >= k background-noise stds so that the noise
    # is not clipped at 0.  Normal exposures put the brightest interphase nucleus (mean) below 70 %
    # of the range (bright texture / mitotic nuclei may still clip); over-exposed ones put it at
    # 100-140 % so it clips, unless the background would then exceed half the range (low snr).
    top = _DTYPE_MAX[dtype]
    k = rng.uniform(2.0, 3.5) if rng.random() < 0.8 else 0.0
    sigma_e = peak_e / snr
    lab_flat = lab.ravel()
    bright_e = peak_e * (1.0 + (bg_e + float(haze_e.max())) / peak_e)
    if n and not mitotic[1:].all():
        level = np.bincount(lab_flat, weights=expected.ravel(), minlength=n + 1)[1:]
        level /= np.maximum(np.bincount(lab_flat, minlength=n + 1)[1:], 1)
        bright_e = float(level[~mitotic[1:]].max())
    bg_level_e = float(np.median(expected[~inside])) if not inside.all() else bg_e
    over = rng.uniform(1.0, 1.4)
    gain = min((over * top - offset) / bright_e, over * top / (bright_e + k * sigma_e))
    if not (saturate and max(offset, k * gain * sigma_e) + gain * bg_level_e <= 0.5 * top):
        gain = min(peak_adu / peak_e, (0.7 * top - offset) / bright_e, 0.7 * top / (bright_e + k * sigma_e))
    gain = max(gain, 1e-3 * top / peak_e)
    offset = max(offset, k * gain * sigma_e)
    image = np.clip(np.rint(offset + gain * electrons), 0, top).astype(np.uint8 if dtype == "uint8" else np.uint16)
    return image, labels.astype(np.int32, copy=False)


def synth_dataset(
    n: int,
    shape: tuple[int, int] = (256, 256),
    *,
    seed: int = 0,
    style: SynthStyle | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Generate ``n`` independent ``(image, labels)`` pairs with :func:`synth_nuclei`.

    Each item gets its own child seed spawned from ``seed``, so item ``i`` is the
    same whatever ``n`` is, and the whole list is deterministic for a given seed.

    Args:
        n: Number of images.
        shape: ``(height, width)`` of every image.
        seed: Base seed.
        style: Appearance distribution; ``SynthStyle()`` if ``None``.

    Returns:
        A list of ``n`` ``(image, labels)`` tuples as returned by :func:`synth_nuclei`.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    children = np.random.SeedSequence(seed).spawn(n)
    return [synth_nuclei(shape, rng=np.random.default_rng(s), style=style) for s in children]

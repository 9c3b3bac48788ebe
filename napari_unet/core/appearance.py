"""Hard cases rendered onto any labelled nuclei image: the looks of other labs and microscopes.

Each function takes an image (any real dtype, raw intensities) and its instance labels, and returns
a new float32 image that shows one thing the bundled model meets on other labs' images; the labels
stay true by construction (nuclei keep their outline, everything added outside them is background):

* `add_cytoplasm`: a faint, textured cytoplasm around the nuclei (bleed-through of a cytoplasmic
  fluorescent protein, autofluorescence, or a cytoplasmic channel averaged in), plus a few cell
  bodies whose nucleus is out of the plane.
* `add_chromatin`: heterochromatin texture and bright foci inside the nuclei (confocal, 40-63x).
* `condense`: some nuclei made several times brighter, with a blur halo around them (mitotic,
  apoptotic).
* `rescale`: the whole field at another magnification (labels by nearest neighbour).
* `camera`: another camera: offset, gain, shot and read noise, uint8 / uint12 / uint16, saturation.
* `hot_pixels`: isolated pixels far above everything else (hot camera pixels, cosmic rays).
* `uneven_illumination`: widefield vignetting and a background ramp.
* `bright_debris`: one bright out-of-focus blob (dust, debris) on the background.
* `defocus`: widefield blur of the whole field, or of some nuclei only (cells at other heights).
* `crowd`: the field's own nuclei copied against each other until they cover much of it (a confluent culture,
  a tissue section: touching and overlapping nuclei with no dark line between them). It changes the labels too.
* `mitotic_figures`: some nuclei replaced by the condensed chromosomes of a dividing cell (metaphase plates,
  prometaphase clusters): bright, irregular, smaller than the nucleus. It changes the labels too.

Three more render a second channel beside the nuclear stain, for the default channel's choice: `marker_stain`
(a marker of some of the nuclei: EdU, Ki67), `spot_stain` (FISH spots, DNA-damage foci) and `membrane_stain`.

`perturb` draws a random mix of these; the training recipe applies it to real and synthetic images,
and `benchmarks/hard_cases.py` applies each one alone, at fixed strengths, to score the model.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import expand_labels
from skimage.transform import resize

from .instances import median_diameter

__all__ = [
    "add_chromatin",
    "add_cytoplasm",
    "bright_debris",
    "camera",
    "condense",
    "crowd",
    "defocus",
    "dim_nuclei",
    "hot_pixels",
    "marker_stain",
    "membrane_stain",
    "mitotic_figures",
    "perturb",
    "random_cytoplasm",
    "rescale",
    "spot_stain",
    "uneven_illumination",
]


def _levels(image: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(background level, median nucleus signal above it) of a raw image."""
    img = np.asarray(image, np.float32)
    fg = labels > 0
    bg = float(np.median(img[~fg])) if (~fg).any() else float(img.min())
    sig = float(np.median(img[fg])) - bg if fg.any() else float(np.ptp(img))
    return bg, max(sig, 1e-6)


def _noise_sigma(img: np.ndarray) -> float:
    """The pixel noise of an image: the median absolute difference of horizontal neighbours, as a std."""
    d = np.diff(img, axis=1)
    return float(np.median(np.abs(d - np.median(d)))) * 1.4826 / math.sqrt(2)


def _band_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-filtered white noise with structures of ~`sigma` px."""
    f = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), max(sigma, 0.5))
    return f / max(float(f.std()), 1e-6)


def _pick(rng: np.random.Generator, n: int, fraction: float, at_least_one: bool = False) -> np.ndarray:
    """Which of the ids 0..n a render takes (a bool per id, 0 never): each with probability `fraction`; with
    `at_least_one`, one drawn at random where none was."""
    pick = np.zeros(n + 1, bool)
    pick[1:] = rng.random(n) < fraction
    if at_least_one and n and not pick.any():
        pick[1 + rng.integers(n)] = True
    return pick


def add_cytoplasm(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    level: float = 0.05,
    reach: float = 0.8,
    texture: float = 0.5,
    orphans: float = 0.1,
    exclude_nuclei: float = 0.0,
) -> np.ndarray:
    """Add a cytoplasm signal around every nucleus.

    Args:
        image, labels: Raw image and its nuclei labels.
        rng: Random generator.
        level: Mean cytoplasm signal relative to the median nucleus signal above background
            (0.02-0.1: nuclei 10-50x brighter; ~0.5-1: a cytoplasmic channel averaged in).
        reach: How far cells extend beyond their nucleus, in nucleus diameters (cells stop where
            they meet their neighbours, as a Voronoi partition does).
        texture: Relative std of the cytoplasm's granular / fibrous texture.
        orphans: Cell bodies without a visible nucleus, per nucleus (background in the labels).
        exclude_nuclei: 0 = the cytoplasm signal also lies over the nuclei (bleed-through of a
            protein in the whole cell); 1 = none over them (a strictly cytoplasmic stain).

    Returns:
        float32 image of the same shape.
    """
    img = np.asarray(image, np.float32)
    bg, sig = _levels(img, labels)
    d = median_diameter(labels) or 20.0
    shape = labels.shape
    seeds = labels.astype(np.int32, copy=True)
    n = int(labels.max())
    n_orphan = int(rng.poisson(orphans * max(n, 1)))
    if n_orphan:  # out-of-plane cells: a seed disk with no nucleus drawn, removed from the labels below
        free = np.flatnonzero((ndi.distance_transform_edt(labels == 0) > d).ravel())
        if free.size:
            yy, xx = np.unravel_index(rng.choice(free, min(n_orphan, free.size), replace=False), shape)
            for k, (y, x) in enumerate(zip(yy, xx), start=n + 1):
                r = max(2, int(d * rng.uniform(0.2, 0.4)))
                block = seeds[max(0, y - r) : y + r, max(0, x - r) : x + r]
                block[block == 0] = k
    dist = ndi.distance_transform_edt(seeds == 0)
    # irregular cell outlines: the reach varies smoothly over the field
    extent = reach * d * (0.5 + 0.5 * rng.uniform(0.5, 1.5) * (1 + 0.6 * _band_noise(rng, shape, d)))
    cells = expand_labels(seeds, distance=float(reach * d * 2.0))
    cells[dist > extent] = 0
    n_cells = int(cells.max())
    if n_cells == 0:
        return img
    cell_gain = np.exp(rng.normal(0.0, 0.35, n_cells + 1)).astype(np.float32)
    grain = _band_noise(rng, shape, rng.uniform(0.8, 0.15 * d + 1.0))
    tex = np.maximum(1.0 + texture * grain, 0.0)
    perinuclear = np.exp(-dist / max(reach * d, 1.0)).astype(np.float32) * rng.uniform(0.0, 1.0)
    cyto = (cells > 0) * cell_gain[cells] * tex * (1.0 + perinuclear)
    if exclude_nuclei > 0:
        cyto[labels > 0] *= 1.0 - exclude_nuclei
    cyto = ndi.gaussian_filter(cyto.astype(np.float32), rng.uniform(0.7, 2.0))
    cyto *= level * sig / max(float(cyto[cells > 0].mean()), 1e-6)
    return img + cyto


def add_chromatin(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, texture: float = 0.4, foci: float = 6.0
) -> np.ndarray:
    """Heterochromatin texture and bright foci (chromocentres) inside the nuclei.

    Args:
        texture: Relative std of the multiplicative chromatin texture.
        foci: Mean number of bright foci per nucleus.
    """
    img = np.asarray(image, np.float32)
    bg, sig = _levels(img, labels)
    d = median_diameter(labels) or 20.0
    inside = labels > 0
    tex = 1.0 + texture * _band_noise(rng, labels.shape, max(0.7, 0.06 * d))
    out = bg + (img - bg) * np.where(inside, np.maximum(tex, 0.2), 1.0)
    core = np.flatnonzero((ndi.distance_transform_edt(inside) > 0.12 * d).ravel())
    k = int(rng.poisson(foci * max(int(labels.max()), 1)))
    if core.size and k:
        imp = np.zeros(labels.size, np.float32)
        np.add.at(imp, rng.choice(core, k), rng.uniform(0.5, 2.0, k).astype(np.float32))
        s = max(0.8, rng.uniform(0.04, 0.08) * d)
        spots = ndi.gaussian_filter(imp.reshape(labels.shape), s) * np.float32(2 * math.pi * s * s)
        out += sig * spots * inside
    return out.astype(np.float32)


def condense(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    fraction: float = 0.1,
    gain: float = 4.0,
    halo: float = 0.3,
) -> np.ndarray:
    """Make a `fraction` of the nuclei `gain` x brighter, with a blur halo of `halo` x their signal."""
    img = np.asarray(image, np.float32)
    bg, _ = _levels(img, labels)
    sel = _pick(rng, int(labels.max()), fraction, at_least_one=True)[labels]
    extra = np.where(sel, (img - bg) * (gain - 1.0), 0.0).astype(np.float32)
    d = median_diameter(labels) or 20.0
    glow = ndi.gaussian_filter(extra, max(1.5, 0.25 * d))
    return img + extra + halo * glow * (labels == 0)


def dim_nuclei(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, fraction: float = 0.33, factor: float = 5.0
) -> np.ndarray:
    """Make a `fraction` of the nuclei `factor` x dimmer over the background (low expression, another cell-cycle
    stage), each with a 2 px margin of its glow (not into its neighbours). The dimmed pixels keep the image's
    noise: their own is divided too, so background-like noise (from the median absolute difference of
    neighbouring pixels) is added back."""
    img = np.asarray(image, np.float32)
    bg, _ = _levels(img, labels)
    sigma = _noise_sigma(img)
    pick = _pick(rng, int(labels.max()), fraction)
    sel = (ndi.grey_dilation(np.where(pick[labels], labels, 0), size=5) > 0) & ((labels == 0) | pick[labels])
    noise = rng.normal(0.0, sigma * math.sqrt(max(0.0, 1.0 - 1.0 / factor**2)), img.shape).astype(np.float32)
    return np.where(sel, bg + (img - bg) / factor + noise, img).astype(np.float32)


def defocus(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, fraction: float = 1.0, blur: float = 0.1
) -> np.ndarray:
    """Widefield defocus: a Gaussian blur of `blur` x the median nucleus diameter over the whole field
    (`fraction` 1), or over a `fraction` of the nuclei only (cells at other heights; their sharp signal is
    replaced by its blur, their neighbours keep theirs). The image's pixel noise, which a blur would smooth
    away, is drawn again where the blur was applied. The labels stay the in-focus outlines."""
    img = np.asarray(image, np.float32)
    sigma = max(0.5, blur * (median_diameter(labels) or 20.0))
    noise = _noise_sigma(img)
    if fraction >= 1:
        out = ndi.gaussian_filter(img, sigma)
        return out + rng.normal(0.0, noise, img.shape).astype(np.float32)
    bg, _ = _levels(img, labels)
    picked = _pick(rng, int(labels.max()), fraction)[labels]
    # The picked nuclei and the 2 px of their in-focus glow (not into a kept nucleus) are drawn again as the
    # background with the blurred signal and fresh noise; everywhere else (cytoplasm, neighbours) gains the blur.
    sharp = ndi.binary_dilation(picked, iterations=2) & ((labels == 0) | picked)
    glow = ndi.gaussian_filter(np.where(sharp, img - bg, 0.0).astype(np.float32), sigma)
    fresh = bg + glow + rng.normal(0.0, noise, img.shape).astype(np.float32)
    return np.where(sharp, fresh, img + glow).astype(np.float32)


def crowd(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    fill: float = 0.35,
    overlap: tuple[float, float] = (0.0, 0.15),
    tries: int = 4000,
    seamless: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Copies of the field's own nuclei packed against its nuclei until they cover `fill` of the field.

    Each copy (a whole nucleus not cut by the field's edge, its signal above the background with a soft 1 px
    rim, turned by a multiple of 90 degrees and maybe mirrored) is placed against a nucleus drawn at random,
    its centre (1 - o) x the sum of their equivalent radii away, o drawn from `overlap`: 0 touches, 0.15
    overlaps by about a third of a radius. The signal adds where they overlap, as nuclei above one another do
    in a widefield image or a thick section; the copy is on top, so it takes the labels there. A placement is
    refused when it leaves the field, lies more than a third on other nuclei, or covers more than 40 % of one
    (what a copy leaves of a nucleus may be in two parts, under one label).

    `seamless`: where they overlap the brighter signal is kept instead of the sum, so a copy that overlaps its
    neighbour by more than their dim rims leaves no darker line between them, as a seamless synthetic pair
    (`SynthStyle.seam` (1, 1)) and nuclei pressed together in a thick widefield section show none: only the
    shape tells them apart.

    Returns:
        (float32 image, int32 labels 1..N): the labels change with the image.
    """
    img = np.array(image, np.float32)
    lab = np.array(labels, np.int32)
    H, W = lab.shape
    bg, _ = _levels(img, lab)
    sources = []
    for i, box in enumerate(ndi.find_objects(lab), start=1):
        if box is None or box[0].start == 0 or box[1].start == 0 or box[0].stop == H or box[1].stop == W:
            continue
        ys = slice(max(0, box[0].start - 2), min(H, box[0].stop + 2))
        xs = slice(max(0, box[1].start - 2), min(W, box[1].stop + 2))
        mask = lab[ys, xs] == i
        if mask.sum() < 30:
            continue
        rim = ndi.gaussian_filter(ndi.binary_dilation(mask).astype(np.float32), 1.0)
        rim[rim < 0.01] = 0  # no faint square around the copy
        sources.append((np.clip(img[ys, xs] - bg, 0, None) * np.maximum(rim, mask), mask))
    if not sources:
        return img, lab
    areas = np.bincount(lab.ravel()).astype(np.int64)
    present = [int(i) for i in np.flatnonzero(areas[1:]) + 1]
    centres = dict(zip(present, ndi.center_of_mass(np.ones_like(lab), lab, present)))
    covered, target = int((lab > 0).sum()), fill * lab.size
    for _ in range(tries):
        if covered >= target:
            break
        signal, mask = sources[int(rng.integers(len(sources)))]
        k = int(rng.integers(4))
        signal, mask = np.rot90(signal, k), np.rot90(mask, k)
        if rng.random() < 0.5:
            signal, mask = signal[:, ::-1], mask[:, ::-1]
        t = present[int(rng.integers(len(present)))]
        angle = rng.uniform(0, 2 * np.pi)
        dist = (1 - rng.uniform(*overlap)) * (math.sqrt(areas[t] / np.pi) + math.sqrt(mask.sum() / np.pi))
        (ty, tx), (h, w) = centres[t], mask.shape
        y0, x0 = round(ty + dist * math.sin(angle) - h / 2), round(tx + dist * math.cos(angle) - w / 2)
        if y0 < 0 or x0 < 0 or y0 + h > H or x0 + w > W:
            continue
        region = lab[y0 : y0 + h, x0 : x0 + w]
        under = np.bincount(region[mask], minlength=areas.size)
        if under[1:].sum() > mask.sum() / 3 or np.any(under[1:] > 0.4 * np.maximum(areas[1:], 1)):
            continue
        new = areas.size
        view = img[y0 : y0 + h, x0 : x0 + w]
        if seamless:
            np.maximum(view, bg + signal, out=view, where=signal > 0)
        else:
            view += signal
        region[mask] = new
        areas -= under
        areas = np.append(areas, int(mask.sum()))
        covered += int(mask.sum()) - int(under[1:].sum())
        present.append(new)
        centres[new] = (y0 + h / 2, x0 + w / 2)
    kept = np.flatnonzero(areas[1:]) + 1
    lut = np.zeros(areas.size, np.int32)
    lut[kept] = np.arange(1, kept.size + 1, dtype=np.int32)
    return img, lut[lab]


def _ragged_bar(yy, xx, rng: np.random.Generator, d: float, a: float, b: float, t: float, oy=0.0, ox=0.0) -> np.ndarray:
    """A condensed chromosome plate: the mask of an ellipse of half-axes `a` x `b` px at angle `t`, centred at (`oy`,
    `ox`) on the grid (`yy`, `xx`), its edge ragged with 12-20 chromosome arms (discs of 0.04-0.07 x `d` on and up to
    0.1 x `d` outside it)."""
    u, v = (xx - ox) * math.cos(t) + (yy - oy) * math.sin(t), -(xx - ox) * math.sin(t) + (yy - oy) * math.cos(t)
    mask = (u / a) ** 2 + (v / b) ** 2 <= 1
    for _ in range(int(rng.integers(12, 21))):
        f, side = rng.uniform(-1, 1), rng.choice([-1.0, 1.0])  # where along the bar, which side
        pu, pv = f * a, side * (b * math.sqrt(max(0.0, 1 - f * f)) + rng.uniform(0, 0.1) * d)
        py, px, rad = (
            oy + pu * math.sin(t) + pv * math.cos(t),
            ox + pu * math.cos(t) - pv * math.sin(t),
            rng.uniform(0.04, 0.07) * d,
        )
        mask |= (yy - py) ** 2 + (xx - px) ** 2 <= rad * rad
    return mask


def mitotic_figures(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    fraction: float = 0.1,
    gain: tuple[float, float] = (2.0, 5.0),
    anaphase: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Replace a `fraction` of the nuclei (at least one) by mitotic figures: the nucleus and 2 px of its glow
    become the background around it with the image's noise, and the cell's condensed chromosomes are drawn at its
    centre, `gain` x the median nucleus signal, blurred by the optics (sigma 0.03 diameters, at least 0.7 px).

    A share `anaphase` of them are anaphase pairs: two plates 0.5-0.7 x the nucleus's diameter long and 0.12-0.2 x
    wide, parallel, their centres 0.6-0.8 diameters apart and never touching, each its own object (as annotators
    draw two daughter chromatin masses). Of the others, half are metaphase plates: a bar 0.7-0.9 diameters long and 0.16-0.28 wide at
    a random angle; both kinds of plate have edges ragged with chromosome arms (`_ragged_bar`). The rest are
    prometaphase clusters: 10-20 chromosomes (discs of 0.05-0.09 diameters) within 0.3 diameters of the centre,
    closed into one mass. A figure's hard mask is its label, as a hand annotator outlines the bright chromatin (a
    cluster's mask may be in a few parts, under one label). Neighbours keep their pixels and labels. With `anaphase`
    0, no number is drawn for it.

    Returns:
        (float32 image, int32 labels): the picked nuclei's labels become their figures; the second plate of a pair
        takes a new id after the image's last.
    """
    img = np.array(image, np.float32)
    lab = np.array(labels, np.int32)
    H, W = lab.shape
    bg, sig = _levels(img, lab)
    noise = _noise_sigma(img)
    next_id = int(lab.max()) + 1
    for k in np.flatnonzero(_pick(rng, int(lab.max()), fraction, at_least_one=True)):
        own = lab == k
        if not own.any():  # an id the labels skip
            continue
        d = 2 * math.sqrt(own.sum() / math.pi)
        cy, cx = ndi.center_of_mass(own)
        erase = ndi.binary_dilation(own, iterations=2) & ((lab == 0) | own)
        ring = ndi.binary_dilation(erase, iterations=4) & ~erase & (lab == 0)
        local = float(np.median(img[ring])) if ring.any() else bg
        img[erase] = local + rng.normal(0.0, noise, int(erase.sum())).astype(np.float32)
        lab[own] = 0
        pair = anaphase > 0 and rng.random() < anaphase
        r = int((0.85 if pair else 0.6) * d) + 3
        y0, y1, x0, x1 = max(0, int(cy) - r), min(H, int(cy) + r + 1), max(0, int(cx) - r), min(W, int(cx) + r + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        yy, xx = yy - cy, xx - cx
        free = lab[y0:y1, x0:x1] == 0
        if pair:  # two plates moving apart along the spindle, across which they lie
            t, half = rng.uniform(0, math.pi), rng.uniform(0.3, 0.4) * d
            parts = []
            for sign in (1.0, -1.0):
                a, b = rng.uniform(0.25, 0.35) * d, rng.uniform(0.06, 0.1) * d
                parts.append(
                    _ragged_bar(yy, xx, rng, d, a, b, t, sign * half * math.cos(t), -sign * half * math.sin(t))
                )
            parts[1] &= ~ndi.binary_dilation(parts[0])  # two objects: never touching
        elif rng.random() < 0.5:  # metaphase plate
            a, b, t = rng.uniform(0.35, 0.45) * d, rng.uniform(0.08, 0.14) * d, rng.uniform(0, math.pi)
            parts = [_ragged_bar(yy, xx, rng, d, a, b, t)]
        else:  # prometaphase cluster
            mask = np.zeros(yy.shape, bool)
            for _ in range(int(rng.integers(10, 21))):
                rad, ang = 0.3 * d * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
                mask |= (yy - rad * math.sin(ang)) ** 2 + (xx - rad * math.cos(ang)) ** 2 <= (
                    rng.uniform(0.05, 0.09) * d
                ) ** 2
            parts = [ndi.binary_closing(mask, iterations=max(1, round(0.06 * d)), border_value=0)]
        parts = [m & free for m in parts]
        mask = np.logical_or.reduce(parts)
        level = sig * rng.uniform(*gain) * (0.75 + 0.25 * rng.random(mask.shape).astype(np.float32))
        signal = ndi.gaussian_filter(np.where(mask, level, 0.0).astype(np.float32), max(0.7, 0.03 * d))
        img[y0:y1, x0:x1] += signal
        lab[y0:y1, x0:x1][parts[0]] = k
        if len(parts) > 1 and parts[1].any():
            lab[y0:y1, x0:x1][parts[1]] = next_id
            next_id += 1
    return img, lab


def _second_channel(image: np.ndarray, signal: np.ndarray, rng: np.random.Generator, peak: float) -> np.ndarray:
    """`signal` (0-1) scaled to `peak` x the image's 99.8th percentile over its background, on that background,
    with read noise of 2 % of the range."""
    img = np.asarray(image, np.float32)
    bg, top = np.percentile(img, [5.0, 99.8])
    rng_ = max(float(top - bg), 1e-6)
    out = bg + peak * rng_ * signal / max(float(signal.max()), 1e-6)
    return (out + rng.normal(0.0, 0.02 * rng_, img.shape)).astype(np.float32)


def marker_stain(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, share: float = 0.3, gain: float = 2.0
) -> np.ndarray:
    """A second channel that marks a `share` of the nuclei (EdU, Ki67, a transfected nuclear protein): their own
    pattern, `gain` x as bright as the nuclear stain, 2 px wider, on a dark background."""
    img = np.asarray(image, np.float32)
    bg, _ = _levels(img, labels)
    ids = np.unique(labels)[1:]
    marked = expand_labels(np.where(np.isin(labels, ids[rng.random(ids.size) < share]), labels, 0), 2) > 0
    signal = ndi.gaussian_filter(np.where(marked, np.maximum(img - bg, 0.0), 0.0), 0.7)
    return _second_channel(img, signal, rng, gain)


def spot_stain(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    per_nucleus: float = 4.0,
    sigma: float = 1.2,
    inside: bool = False,
    gain: float = 3.0,
) -> np.ndarray:
    """A second channel of diffraction-limited spots (`sigma` px), `per_nucleus` x as many as there are nuclei:
    over the whole field (mRNA FISH), or `inside` the nuclei only (DNA-damage foci, DNA FISH); their peaks `gain` x
    the nuclear stain's range."""
    img = np.asarray(image, np.float32)
    n = max(1, int(per_nucleus * max(int(labels.max()), 1)))
    where = np.flatnonzero((labels > 0).ravel()) if inside and (labels > 0).any() else np.arange(img.size)
    points = np.zeros(img.size, np.float32)
    points[rng.choice(where, min(n, where.size), replace=False)] = rng.uniform(0.5, 1.0, min(n, where.size))
    return _second_channel(img, ndi.gaussian_filter(points.reshape(img.shape), sigma), rng, gain)


def membrane_stain(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, reach: float = 0.5) -> np.ndarray:
    """A second channel of cell membranes: the outlines of cells grown `reach` nucleus diameters from their
    nuclei, about 2 px wide."""
    from skimage.segmentation import find_boundaries

    img = np.asarray(image, np.float32)
    cells = expand_labels(labels.astype(np.int32), reach * (median_diameter(labels) or 20.0))
    signal = ndi.gaussian_filter(find_boundaries(cells, mode="inner").astype(np.float32), 0.8)
    return _second_channel(img, signal, rng, 1.0)


def rescale(
    image: np.ndarray, labels: np.ndarray, factor: float | tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """The field at `factor` x the magnification (anti-aliased image, nearest-neighbour labels); a (y, x) pair
    stretches it, so that every nucleus is that much longer along one axis (elongated nuclei, aligned as in
    muscle or a wound edge, or pixels that are not square)."""
    fy, fx = (factor, factor) if np.isscalar(factor) else factor
    shape = (max(8, round(labels.shape[0] * fy)), max(8, round(labels.shape[1] * fx)))
    img = resize(np.asarray(image, np.float32), shape, order=1, anti_aliasing=min(fy, fx) < 1, preserve_range=True)
    lab = resize(labels, shape, order=0, anti_aliasing=False, preserve_range=True).astype(np.int32)
    return img.astype(np.float32), lab


def camera(
    image: np.ndarray,
    rng: np.random.Generator,
    dtype: str = "uint16",
    offset: float = 0.05,
    fill: float = 0.6,
    photons: float = 300.0,
    read_noise: float = 0.01,
) -> np.ndarray:
    """Re-expose `image` on another camera.

    Args:
        dtype: "uint8", "uint12" (stored as uint16, max 4095) or "uint16".
        offset: Camera offset as a fraction of the range.
        fill: Where the image's 99.9th percentile lands, as a fraction of the range (> 1 saturates).
        photons: Photo-electrons at the 99.9th percentile (shot noise; lower = noisier).
        read_noise: Gaussian read noise std as a fraction of the 99.9th percentile signal.

    Returns:
        An integer image of `dtype` (uint16 for uint12).
    """
    top = {"uint8": 255, "uint12": 4095, "uint16": 65535}[dtype]
    img = np.asarray(image, np.float32)
    lo, hi = np.percentile(img, [0.5, 99.9])
    rel = np.clip((img - lo) / max(float(hi - lo), 1e-6), 0, None)
    e = rng.poisson(rel * photons).astype(np.float32) / photons
    e += rng.normal(0.0, read_noise, img.shape).astype(np.float32)
    out = offset * top + e * fill * top
    return np.clip(np.rint(out), 0, top).astype(np.uint8 if dtype == "uint8" else np.uint16)


def hot_pixels(
    image: np.ndarray,
    rng: np.random.Generator,
    fraction: float = 3e-4,
    level: float | tuple[float, float] = 50.0,
    clusters: float = 0.0,
) -> np.ndarray:
    """Set a `fraction` of the pixels, at random, to `level` x the image's maximum (a (low, high) range: each
    pixel its own level, log-uniform); `clusters` of them in 2x2 squares (cosmic-ray hits)."""
    img = np.asarray(image, np.float32).copy()
    n = max(1, int(fraction * img.size))
    top = float(img.max())
    squares = int(clusters * n) // 4
    ys, xs = rng.integers(0, img.shape[0], n - 4 * squares), rng.integers(0, img.shape[1], n - 4 * squares)
    if squares:
        y0, x0 = rng.integers(0, img.shape[0] - 1, squares), rng.integers(0, img.shape[1] - 1, squares)
        ys = np.concatenate([ys, y0, y0, y0 + 1, y0 + 1])
        xs = np.concatenate([xs, x0, x0 + 1, x0, x0 + 1])
    if np.ndim(level):
        img[ys, xs] = top * np.exp(rng.uniform(np.log(level[0]), np.log(level[1]), ys.size))
    else:
        img[ys, xs] = level * top
    return img


def uneven_illumination(image: np.ndarray, labels: np.ndarray, edge: float = 0.3, ramp: float = 0.5) -> np.ndarray:
    """Vignetting (the gain falls to `edge` in the corners) plus a background ramp across the field that
    reaches `ramp` x the nuclei's contrast over the background at the right edge."""
    img = np.asarray(image, np.float32)
    _, contrast = _levels(img, labels)
    H, W = img.shape
    yy, xx = np.mgrid[:H, :W].astype(np.float32)
    r2 = ((yy - H / 2) ** 2 + (xx - W / 2) ** 2) / ((H / 2) ** 2 + (W / 2) ** 2)
    return img * (1 - (1 - edge) * r2) + ramp * contrast * xx / W


def bright_debris(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, area: float = 0.02, level: float = 10.0
) -> np.ndarray:
    """A blurred disc covering `area` of the field, `level` x the nuclei's contrast over the background, drawn on
    the background only (nuclei under it stay visible, so the labels stay true)."""
    img = np.asarray(image, np.float32)
    _, contrast = _levels(img, labels)
    H, W = img.shape
    r = max(2, int(math.sqrt(area * H * W / math.pi)))
    cy, cx = int(rng.integers(0, H)), int(rng.integers(0, W))
    yy, xx = np.ogrid[:H, :W]
    disc = ndi.gaussian_filter((((yy - cy) ** 2 + (xx - cx) ** 2) < r * r).astype(np.float32), max(1.0, r / 8))
    return np.where(labels > 0, img, img + disc * level * contrast)


def random_cytoplasm(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, level: float) -> np.ndarray:
    """`add_cytoplasm` at `level` with randomly drawn reach, texture and orphan cells; above 1/5 of the
    nuclear signal the stain may also be partly excluded from the nuclei (a cytoplasmic channel)."""
    reach, texture, orphans = rng.uniform(0.3, 1.3), rng.uniform(0.1, 0.8), rng.uniform(0.0, 0.3)
    exclude = rng.uniform(0.0, 1.0) if level > 0.2 else 0.0
    return add_cytoplasm(image, labels, rng, level, reach, texture, orphans, exclude)


def perturb(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    outliers: bool = False,
    dim_max: float = 12.0,
    defocus_p: float = 0.0,
    crowd_p: float = 0.0,
    seamless_p: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A random mix of the hard cases above, for training (each with its own probability).

    `outliers` also draws condensed nuclei up to 30x, dim nuclei (2 to `dim_max` x dimmer) and bright debris
    (the fine-tunes of 2026-12-05, not shipped); without it the draws are v2's, so v2's recipe stays
    reproducible. The same random numbers are drawn for any `dim_max`. With probability `defocus_p` the field
    is defocused before the camera (`defocus`: the whole field by 0.04-0.2 diameters, or a tenth to a half of
    the nuclei by 0.1-0.3); at 0, no number is drawn for it, so the other draws stay v2's. With probability
    `crowd_p` the field is first crowded (`crowd`: 25-55 % of it nuclei, centres up to 0-30 % closer than
    touching); at 0 nothing is drawn either. A share `seamless_p` of the crowded fields is crowded `seamless`
    (the brighter signal kept where nuclei overlap: no line between them, where the summed signal of the others
    draws a bright one); at 0 it draws nothing.
    """
    img, lab = np.asarray(image, np.float32), labels
    if crowd_p > 0 and rng.random() < crowd_p:
        fill, overlap = rng.uniform(0.25, 0.55), (0.0, rng.uniform(0.0, 0.3))
        seamless = seamless_p > 0 and rng.random() < seamless_p
        img, lab = crowd(img, lab, rng, fill=fill, overlap=overlap, seamless=seamless)
    if rng.random() < 0.25:  # lower magnification: small nuclei, later upscaled to the model's size
        img, lab = rescale(img, lab, float(np.exp(rng.uniform(np.log(0.35), np.log(0.8)))))
    if rng.random() < 0.35:
        img = add_chromatin(img, lab, rng, texture=rng.uniform(0.1, 0.6), foci=rng.uniform(0, 10))
    if not outliers:
        if rng.random() < 0.2:
            img = condense(img, lab, rng, rng.uniform(0.03, 0.2), rng.uniform(2.0, 6.0), rng.uniform(0.1, 0.5))
    else:
        if rng.random() < 0.3:
            gain = float(np.exp(rng.uniform(np.log(2.0), np.log(30.0))))
            img = condense(img, lab, rng, rng.uniform(0.02, 0.2), gain, rng.uniform(0.1, 0.5))
        if rng.random() < 0.25:
            img = dim_nuclei(
                img, lab, rng, rng.uniform(0.1, 0.5), float(np.exp(rng.uniform(np.log(2.0), np.log(dim_max))))
            )
        if rng.random() < 0.1:
            area = rng.uniform(0.005, 0.05)
            img = bright_debris(img, lab, rng, area, float(np.exp(rng.uniform(np.log(3.0), np.log(30.0)))))
    if rng.random() < 0.55:
        img = random_cytoplasm(img, lab, rng, float(np.exp(rng.uniform(np.log(0.015), np.log(0.6)))))
    if defocus_p > 0 and rng.random() < defocus_p:
        if rng.random() < 0.5:
            img = defocus(img, lab, rng, 1.0, rng.uniform(0.04, 0.2))
        else:
            img = defocus(img, lab, rng, rng.uniform(0.1, 0.5), rng.uniform(0.1, 0.3))
    if rng.random() < 0.6:
        dtype = ("uint8", "uint12", "uint16")[int(rng.integers(3))]
        img = camera(
            img,
            rng,
            dtype,
            offset=rng.uniform(0, 0.15),
            fill=rng.uniform(0.1, 1.1),
            photons=float(np.exp(rng.uniform(np.log(20), np.log(3000)))),
            read_noise=rng.uniform(0.0, 0.04),
        )
    return np.asarray(img, np.float32), lab

"""Intensity normalisation and axis handling: any image or stack -> a sequence of 2D float planes.

Axes use the letters T (time), Z (depth), C (channel), Y and X; the last two must be Y and X. Other
letters that tifffile reports (Q, I, S, ...) are read as extra plane axes, except S (samples), which is
a channel. Percentiles are taken once over the whole stack (from a strided sample when it is large)
so that empty planes of a z-stack stay dark instead of having their noise stretched to full range.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy import ndimage as ndi

from .errors import InputError

__all__ = [
    "InputError",
    "axes_from_names",
    "iter_planes",
    "normalize_plane",
    "percentile_range",
    "resolve_axes",
    "to_standard",
    "without_overlays",
]

PLANE_AXES = "TZ"


#: Axis names (any case) and the letter each means: xarray dims (bioio / aicsimageio name them T, C, Z, Y, X, S)
#: and napari's axis labels.
AXIS_NAMES = {"t": "T", "time": "T", "z": "Z", "y": "Y", "x": "X", "c": "C", "ch": "C", "channel": "C", "s": "C"}


def axes_from_names(names) -> str | None:
    """The axis letters that `names` (xarray dims, napari axis labels) spell, or None where any name is unknown
    (napari's default labels "-3", "-2", "-1"; xarray's "dim_0")."""
    letters = [AXIS_NAMES.get(str(n).lower()) for n in names]
    return "".join(letters) if letters and all(letters) else None


def _channels_last(shape: tuple[int, ...]) -> bool:
    """Whether the last axis of a 3D or 4D array of `shape` is a channel axis: it has at most 4 entries (RGB, RGBA,
    two channels: no image is 4 px wide; a (Y, X, 2) array was taken for Y planes of X x 2 px and segmented into
    noise), or at most 8 beside axes at least 8x longer (a five-channel (Y, X, 5) array was taken for 5 px wide
    planes: 12 objects of noise from a random array)."""
    return shape[-1] <= 4 or (shape[-1] <= 8 and min(shape[-3:-1]) >= 8 * shape[-1])


def resolve_axes(shape: tuple[int, ...], axes: str | None = None) -> str:
    """Check or guess the axes of an array of `shape`.

    Guessing: 2D -> YX; 3D -> YXC if the last axis is a channel axis (`_channels_last`), else ZYX; 4D -> ZYXC
    if it is, else CZYX... is ambiguous, so 4D and more need explicit axes unless the last axis is a small
    channel axis.
    """
    ndim = len(shape)
    if ndim < 2:
        raise InputError(f"need an image with at least 2 dimensions, got shape {tuple(shape)}")
    if axes is None:
        if ndim == 2:
            return "YX"
        if ndim == 3:
            return "YXC" if _channels_last(shape) else "ZYX"
        if ndim == 4 and _channels_last(shape):
            return "ZYXC"
        raise InputError(f"cannot guess the axes of a {ndim}-D image {tuple(shape)}: pass them (--axes), e.g. 'TZCYX'")
    axes = axes.upper().replace("S", "C")
    if len(axes) != ndim:
        raise InputError(f"axes '{axes}' has {len(axes)} letters but the image has {ndim} dimensions")
    if len(set(axes)) != len(axes):
        raise InputError(f"axes '{axes}' repeats a letter")
    if "Y" not in axes or "X" not in axes:
        raise InputError(f"axes '{axes}' must contain Y and X")
    if axes.count("C") > 1:
        raise InputError(f"axes '{axes}' has more than one channel axis")
    if not axes.replace("C", "").endswith("YX"):
        # The labels keep the image's axis order (without C), so Y and X must come last.
        raise InputError(f"axes '{axes}' must end in YX (a channel axis may follow: 'YXC'); transpose the image first")
    return axes


def to_standard(image, axes: str):
    """Reorder `image` to (planes..., [C,] Y, X) and return it with its new axes string."""
    plane_axes = [a for a in axes if a not in "CYX"]
    order = plane_axes + (["C"] if "C" in axes else []) + ["Y", "X"]
    perm = [axes.index(a) for a in order]
    if perm != list(range(len(axes))):
        image = image.transpose(perm) if hasattr(image, "transpose") else np.transpose(image, perm)
    return image, "".join(order)


def _sample_step(array, max_samples: int) -> int:
    """The stride of `_sample` along every axis."""
    return max(1, int(np.ceil((int(np.prod(array.shape)) / max_samples) ** (1 / max(array.ndim, 1)))))


def _sample(array, max_samples: int) -> np.ndarray:
    """A strided subsample of `array` (numpy, zarr or dask) with at most ~max_samples values."""
    step = _sample_step(array, max_samples)
    sub = np.asarray(array[tuple(slice(None, None, step) for _ in array.shape)])
    # float32 keeps 24 bits: wide integers (a large offset, 32/64-bit counts) are read as float64
    return sub.astype(np.float64 if sub.dtype.itemsize > 2 and sub.dtype.kind in "iu" else np.float32)


def percentile_range(array, low: float = 1.0, high: float = 99.8, max_samples: int = 2_000_000) -> tuple[float, float]:
    """Percentiles of `array` from a strided sample; NaNs ignored.

    Raises:
        InputError: the image is empty or holds no finite value.
    """
    if int(np.prod(array.shape)) == 0:
        raise InputError(f"the image is empty (shape {tuple(array.shape)})")
    sample = _sample(array, max_samples)
    finite = np.isfinite(sample)
    if not finite.any():
        raise InputError("the image holds no finite values (all NaN or infinite)")
    finite &= ~_fill(sample, finite, low, high)
    lo, top, hi = np.percentile(sample[finite], [low, SPIKE_CANDIDATES, high])
    # Hot pixels are told by their full-resolution neighbours: for a lazy image (zarr, a big TIFF) one more read,
    # of the chunks that hold the brightest 1 % of the sample.
    step = _sample_step(array, max_samples)
    where, median = isolated_spikes(sample, lo, top, array if step > 1 else None, step)
    if where[0].size:  # a second round without the first one's spikes: dimmer ones, and where hot lines cross
        rest = finite.copy()
        rest[where] = False
        again = sample.copy()
        again[where] = median
        lo, top = np.percentile(sample[rest], [low, SPIKE_CANDIDATES])
        more, _ = isolated_spikes(again, lo, top, array if step > 1 else None, step)
        where = tuple(np.concatenate([w, m]) for w, m in zip(where, more))
    if where[0].size >= SPIKES_MIN * sample.size:
        finite[where] = False
        lo, hi = np.percentile(sample[finite], [low, high])
    return float(lo), float(hi)


#: `percentile_range` leaves out the image's lowest value when at least `FILL_SHARE` of the pixels hold it and the
#: others start more than `FILL_GAP` of their range above it: a constant fill, not a background.
FILL_SHARE, FILL_GAP = 0.01, 0.1
#: ... and when the others take at least this many values (a mask's 0 is no fill).
FILL_LEVELS = 16


def _fill(sample: np.ndarray, finite: np.ndarray, low: float, high: float) -> np.ndarray:
    """The pixels of `sample` that hold a constant fill far below the rest of the image (a stitched mosaic's
    empty corners, an image padded to a square): with them the low percentile was the fill, and the real
    background reached the network at a quarter of the range (mnfinder val in a zero-filled canvas: AP@0.5
    0.930 -> 0.839). A clipped background is no fill: 2-90 % of the uint8 images of `../shared/data` sit at
    their lowest value, but the next values follow it closely."""
    values = sample[finite]
    lowest = values.min()
    at = values == lowest
    if at.mean() < FILL_SHARE or at.all():
        return np.zeros(sample.shape, bool)
    rest = values[~at]
    lo, hi = np.percentile(rest, [low, high])
    # ... and a mask (two levels) or a few-level image is no image on a fill: the rest must vary
    if lo - lowest <= FILL_GAP * (hi - lo) or np.unique(rest).size < FILL_LEVELS:
        return np.zeros(sample.shape, bool)
    return sample == lowest


#: `overlay_mask`: burned-in text and scale bars at the image's maximum (an exported figure), among the regions of
#: pixels above half the maximum's height over the background that hold pixels at the maximum. A stroke of text is
#: at most `OVERLAY_DEPTH` px from its edge everywhere, at least `OVERLAY_THIN` x its depth squared in area (a disc
#: is 3.1x, a 2:1 ellipse 6.3x, a stroke 20-40x) and at least `OVERLAY_FLAT` at the maximum (anti-aliased text 0.33
#: or more; the noisy saturated nuclei of the synthetic images 0.04-0.10, up to 0.5 for 8-12 px ones); text is
#: strokes in a line of at least `OVERLAY_STROKES`. A scale bar fills `OVERLAY_FILL` of its box and is
#: `OVERLAY_BAR` x as long as wide. Chosen on a probe (benchmarks/RESULTS.md, "Burned-in text and scale bars"): no
#: pixel of any image of `../shared/data` is taken for one, nor of their copies saturated until 3.9 % of the pixels
#: are at the maximum.
OVERLAY_DEPTH, OVERLAY_THIN, OVERLAY_FLAT, OVERLAY_STROKES, OVERLAY_FILL, OVERLAY_BAR = 2.5, 15.0, 0.3, 3, 0.9, 4
#: ... and their anti-aliased edges: this many px around them. An image with more than `OVERLAY_SHARE` of its pixels
#: at its maximum, or more than `OVERLAY_REGIONS` regions there, is saturated, not annotated.
OVERLAY_EDGE, OVERLAY_SHARE, OVERLAY_REGIONS = 2, 0.05, 2000


def overlay_mask(plane: np.ndarray) -> np.ndarray:
    """The pixels of a 2D plane that look like burned-in text or a scale bar at its maximum value, with
    `OVERLAY_EDGE` px of their edges; all False when there are none.

    At 16 bits such an annotation holds the high percentile (mnfinder val with a label at 65,535: AP@0.5 0.936 ->
    0.490), and as objects beside few nuclei it holds the size estimate (an 8-bit image at its own maximum: 1.00
    -> 0.21). Saturated nuclei are regions of another shape: round, or wider than a stroke.
    """
    x = np.asarray(plane)
    finite = np.isfinite(x) if x.dtype.kind == "f" else np.ones(x.shape, bool)
    none = np.zeros(x.shape, bool)
    if x.ndim != 2 or not finite.any():
        return none
    top = x[finite].max()
    at = x == top
    n_at = int(at.sum())
    if n_at < 8 or n_at > OVERLAY_SHARE * x.size:
        return none
    sample = _sample(x, 1_000_000)
    background = float(np.median(sample[np.isfinite(sample)]))
    bright = finite & (x >= background + 0.5 * (float(top) - background))
    regions, n = ndi.label(bright, structure=np.ones((3, 3)))
    ids = np.unique(regions[at])
    if ids.size > OVERLAY_REGIONS:
        return none
    every_box = ndi.find_objects(regions)
    boxes = [every_box[i - 1] for i in ids]
    area, depth, flat = np.empty(ids.size), np.empty(ids.size), np.empty(ids.size)
    for k, (i, box) in enumerate(zip(ids, boxes)):  # each region in its box: 0.1 s on a 4096^2 plane, not 5 s
        mine = regions[box] == i
        # the distance to the nearest pixel outside the region, within the image: its edges padded as inside
        sides = tuple((int(b.start == 0), int(b.stop == size)) for b, size in zip(box, x.shape))
        padded = np.pad(mine, 1, constant_values=sides)
        depth[k] = ndi.distance_transform_edt(padded)[1:-1, 1:-1][mine].max()
        area[k] = mine.sum()
        flat[k] = np.count_nonzero(at[box] & mine) / area[k]  # drawn in one value: a third or more of a stroke
    height, width = (np.array([b[k].stop - b[k].start for b in boxes]) for k in (0, 1))
    long, short = np.maximum(height, width), np.minimum(height, width)
    thin = (depth <= OVERLAY_DEPTH) & (area >= 8) & (area >= OVERLAY_THIN * depth**2)
    strokes = thin & (flat >= OVERLAY_FLAT)
    bars = (area >= OVERLAY_FILL * height * width) & (long >= OVERLAY_BAR * short) & (long >= 20)
    # Text: strokes in a line, each beside at least two others (overlapping rows, within two heights)
    y0, x0 = (np.array([b[k].start for b in boxes]) for k in (0, 1))
    overlap = np.minimum.outer(y0 + height, y0 + height) - np.maximum.outer(y0, y0)
    beside = (overlap >= 0.5 * np.minimum.outer(height, height)) & (
        np.abs(np.subtract.outer(x0 + width / 2, x0 + width / 2)) <= 2 * np.add.outer(height, height)
    )
    text = strokes & ((beside & strokes).sum(1) - 1 >= OVERLAY_STROKES - 1)
    # ... and beside them, what is thin or drawn in one value: thin glyphs, dots, colons, the thicker parts
    keep = bars | text | ((thin | (flat >= OVERLAY_FLAT)) & (beside & text).any(1))
    if not keep.any():
        return none
    lut = np.zeros(n + 1, bool)
    lut[ids[keep]] = True
    return ndi.binary_dilation(lut[regions], iterations=OVERLAY_EDGE)


#: `without_overlays` looks for burned-in annotations in images held in memory up to this many pixels.
OVERLAY_MAX_PIXELS = 2**26


def without_overlays(image, n_plane_axes: int = 0, channels=(None,)) -> tuple[np.ndarray, int]:
    """`image` (planes..., [C,] Y, X) with the `overlay_mask` pixels of every plane of `channels` (None: no C axis)
    set to NaN (no data, taken as background), as a float32 copy; and how many pixels that is. An image that is not
    a numpy array, or is larger than `OVERLAY_MAX_PIXELS`, or has none, is returned as it is. Segmenting
    (`iter_planes`) and retraining (`train.train_iter`) both take them out."""
    if not isinstance(image, np.ndarray) or image.size > OVERLAY_MAX_PIXELS:
        return image, 0
    found, pixels = {}, image.view(np.ndarray)  # read as a plain array (a subclass may index its own way)
    for idx in np.ndindex(*image.shape[:n_plane_axes]):
        for c in channels:
            key = idx + ((c,) if c is not None else ())
            if (mask := overlay_mask(pixels[key])).any():
                found[key] = mask
    if not found:
        return image, 0
    out = pixels.astype(np.float32)
    for key, mask in found.items():
        out[key][mask] = np.nan
    return out, sum(int(m.sum()) for m in found.values())


#: `normalize_plane` clips to +-this (in units of the [lo, hi] range). Bright nuclei above the high percentile
#: keep their contrast (training images stay well inside it), but a hot pixel does not reach the network at 70x
#: the range: 200 hot pixels at 50x the brightest nucleus took mnfinder val from AP@0.5 0.930 to 0.260 unclipped,
#: 0.930 clipped at 10 (5: 0.922; the clean, bright-condensed, saturated and gamma rows unchanged at 3-10).
CLIP = 10.0


def normalize_plane(plane, lo: float, hi: float, spikes: bool = True) -> np.ndarray:
    """Map [lo, hi] to [0, 1], clipped to `CLIP` above; NaN/inf and values more than `FILL_GAP` under 0 (a fill:
    no data, `_fill`) -> 0; with `spikes`, pixels above `hi` that stand far over their neighbours
    (`isolated_spikes`: hot camera pixels) take their neighbours' median.

    A constant image (hi <= lo) maps to zeros rather than amplifying nothing into noise.
    """
    x = np.asarray(plane)
    scale = 1.0 / (hi - lo) if hi > lo else 0.0
    if x.dtype.itemsize > 2 and x.dtype.kind in "iu":  # float32 keeps 24 bits: subtract first, in float64
        x = ((x - lo) * scale).astype(np.float32)
    else:
        x = (x.astype(np.float32) - np.float32(lo)) * np.float32(scale)
    if not np.isfinite(x).all():
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    x[x < -FILL_GAP] = 0.0  # far under the background: a fill, no data (`_fill`); taken as background
    if spikes:  # in rounds: where a hot row and a hot column cross, a pixel's neighbours are hot until replaced
        for _ in range(SPIKE_ROUNDS):
            where, median = isolated_spikes(x, 0.0, 1.0)
            if not where[0].size:
                break
            x[where] = median
    return np.clip(x, -CLIP, CLIP, out=x)


#: `isolated_spikes`: a pixel is a spike (a hot camera pixel, a cosmic ray) when it stands over the background
#: more than this many times as high as the 4th brightest of its 8 neighbours (so pairs and 2x2 squares count
#: too). A nucleus's bright pixels have bright neighbours: the optics spread every point over several pixels.
#: Chosen on a probe (benchmarks/RESULTS.md, "Hot pixels"): with the 2nd brightest, 2x2 squares stayed; at a
#: ratio of 2 a squared image (gamma 2) lost a nucleus.
SPIKE_RATIO, SPIKE_RANK = 2.5, 4
#: `percentile_range` looks for spikes among the pixels above this percentile, and leaves them out of the
#: percentiles when they are at least `SPIKES_MIN` of the sample (fewer cannot move the high percentile much).
SPIKE_CANDIDATES, SPIKES_MIN = 99.0, 2e-4
#: `normalize_plane` replaces spikes in up to this many rounds, each with the last one's replaced (a crossing of
#: a hot row and a hot column falls in three).
SPIKE_ROUNDS = 3


def _points(array, coords: tuple[np.ndarray, ...]) -> np.ndarray:
    """The values of `array` at integer coordinates (one array per axis), in one read: an array in memory's
    fancy indexing, a zarr array's coordinate selection, a dask array's vindex, an `io.FileArray`'s file's."""
    if isinstance(array, np.ndarray):
        return array[coords]
    if hasattr(array, "perm") and hasattr(array, "data"):  # io.FileArray: axes reordered lazily
        source = [None] * len(coords)
        for c, axis in zip(coords, array.perm):
            source[axis] = c
        return _points(array.data, tuple(source))
    if hasattr(array, "get_coordinate_selection"):
        return np.asarray(array.get_coordinate_selection(coords))
    out = array.vindex[coords]
    return np.asarray(out.compute() if hasattr(out, "compute") else out)


def isolated_spikes(
    x: np.ndarray, background: float, level: float, full: np.ndarray | None = None, step: int = 1
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """The pixels of `x` (..., Y, X) at or above `level` that stand over `background` more than `SPIKE_RATIO` x as
    high as the `SPIKE_RANK`-th brightest of their 8 neighbours (mirrored at the edges): lone hot pixels, pairs
    and 2x2 squares far brighter than their surroundings. Returns their indices and the median of each one's
    neighbours. With `full`, `x` is `full` read every `step` pixels and the neighbours are `full`'s.

    Hot pixels hide from the percentiles only while they are rare: at 0.3 % of the pixels at 50x the nuclei's
    level they hold the 99.8th percentile, every nucleus reaches the network under a fiftieth of its level and
    mnfinder val scored AP@0.5 0.000; at 1 % at 3x, 0.049 (benchmarks/RESULTS.md, "Hot pixels").
    """
    flat = np.flatnonzero(x >= level)  # 2x faster than np.nonzero on a plane with few
    full, step = (x, 1) if full is None else (full, step)
    H, W = full.shape[-2:] if full.ndim >= 2 else (0, 0)
    if flat.size == 0 or H < 2 or W < 2:
        return tuple(np.empty(0, np.intp) for _ in range(x.ndim)), np.empty(0, x.dtype)
    where = np.unravel_index(flat, x.shape)
    *lead, ys, xs = (w * step for w in where)
    dy, dx = (np.array([d for d in np.ndindex(3, 3) if d != (1, 1)]) - 1).T[:, :, None]  # the 8 neighbours
    yy, xx = np.abs(ys + dy), np.abs(xs + dx)  # mirrored at the edges, the edge pixel not repeated
    yy, xx = np.where(yy >= H, 2 * H - 2 - yy, yy), np.where(xx >= W, 2 * W - 2 - xx, xx)
    values = _points(full, (*(np.broadcast_to(i, yy.shape).ravel() for i in lead), yy.ravel(), xx.ravel()))
    around = np.sort(values.reshape(8, -1).T.astype(x.dtype, copy=False), 1)
    spike = x[where] - background > SPIKE_RATIO * np.maximum(around[:, -SPIKE_RANK] - background, 0)
    return tuple(w[spike] for w in where), (0.5 * (around[spike, 3] + around[spike, 4])).astype(x.dtype)


#: `nuclear_channel`: a channel whose lightly smoothed pixels keep less of its variance than this holds no
#: spatial structure, only noise (white noise keeps 1 / (4 pi) = 0.08 under a Gaussian of 1 px; real stains
#: keep 0.9 or more, a nuclear stain 3 noise sigmas above its background 0.5-0.6).
STRUCTURE_MIN = 0.25
#: ... and an integer channel spanning fewer grey levels than this (1st to 99.8th percentile) holds no stain:
#: a camera's dark offset, JPEG ringing in the empty channels of a colour picture, a binary mask.
LEVELS_MIN = 8


def _middle_window(image, n_plane_axes: int, c: int, side: int = 1024) -> np.ndarray:
    """A central `side` x `side` window of channel `c`'s middle plane, float32, non-finite values filled."""
    plane = tuple(n // 2 for n in image.shape[:n_plane_axes])
    H, W = image.shape[-2:]
    y0, x0 = max(0, (H - side) // 2), max(0, (W - side) // 2)
    x = np.asarray(image[(*plane, c, slice(y0, y0 + side), slice(x0, x0 + side))], np.float32)
    return np.where(np.isfinite(x), x, np.nanmedian(x) if np.isfinite(x).any() else 0.0)


def _cleaned(x: np.ndarray) -> np.ndarray:
    """A channel's window (`_middle_window`) normalised as it would be segmented (`percentile_range`,
    `normalize_plane`: hot pixels replaced), clipped to [0, 1]. Hot pixels at 50x the nuclei held most of a
    nuclear stain's variance, so that a smoothing took it away and the stain was passed over as noise; with 1 % of
    the pixels hot they held its high percentile too."""
    return np.clip(normalize_plane(x, *percentile_range(x)), 0.0, 1.0)


def _has_signal(x: np.ndarray, clean: np.ndarray, integer: bool) -> bool:
    """Whether a channel's window `x` (`_middle_window`; `clean`: `_cleaned`; `integer`: of an integer image)
    shows spatial structure above noise."""
    import scipy.ndimage as ndi

    lo, hi = np.percentile(x, [1.0, 99.8])
    if integer and hi - lo < LEVELS_MIN:
        return False
    var = float(clean.var())
    return var > 0 and float(ndi.gaussian_filter(clean, 1.0).var()) >= STRUCTURE_MIN * var


#: `hole_share` counts holes of at least this many px (a nucleus-sized gap, not noise in a nuclear stain).
HOLE_MIN = 16


def _foreground(clean: np.ndarray) -> np.ndarray:
    """A channel's foreground: Otsu on its `_cleaned` window lightly smoothed; all False on a flat window."""
    import scipy.ndimage as ndi
    from skimage.filters import threshold_otsu

    sm = ndi.gaussian_filter(clean, 1.0)
    return sm > threshold_otsu(sm) if np.ptp(sm) > 0 else np.zeros(sm.shape, bool)


def hole_share(x: np.ndarray, fg: np.ndarray | None = None) -> float:
    """The share of a plane's filled foreground (`_foreground` of `x`, or `fg`) that is holes of at least
    `HOLE_MIN` px. A cytoplasmic stain that spares the nuclei leaves a hole at each one; a nuclear stain's
    objects are solid. With mnfinder (33 images) and BBBC007 (14) as the nuclear channel and a cytoplasm
    rendered around their nuclei as the other: 0-0.011 against 0.067-0.246 (benchmarks/RESULTS.md)."""
    import scipy.ndimage as ndi

    fg = _foreground(_cleaned(np.asarray(x, np.float32))) if fg is None else fg
    filled = ndi.binary_fill_holes(fg)
    sizes = np.bincount(ndi.label(filled & ~fg)[0].ravel())[1:]
    return float(sizes[sizes >= HOLE_MIN].sum() / max(int(filled.sum()), 1))


def typical_area(fg: np.ndarray) -> int:
    """The area of a foreground's typical part: half of the foreground lies in parts at least this large (the
    area-weighted median, so that specks of noise do not count)."""
    import scipy.ndimage as ndi

    areas = np.sort(np.bincount(ndi.label(fg)[0].ravel())[1:])
    if areas.size == 0:
        return 0
    cum = np.cumsum(areas)
    return int(areas[np.searchsorted(cum, cum[-1] / 2)])


#: `nuclear_channel`: a channel whose typical object (`typical_area`) is smaller than this many px is a spot stain
#: (FISH, foci): diffraction-limited spots of 0.8-1.2 px sigma measure 9-21 px. Nuclei measure more down to 5 px
#: across, which the model still segments (BBBC007 at 0.25x: 22-26 px, AP@0.5 0.679); at 30, 8 of its 14 images
#: beside a cytoplasm were passed over, at 24 2 (benchmarks/RESULTS.md, "The default channel beside spots").
SPOT_AREA = 24
#: ... and a chosen channel whose foreground lies at least `SUBSET_SHARE` inside another channel's, which is
#: `SUBSET_GROWTH` x larger with objects of the same size (typical area at most `SUBSET_SIZE` x), marks a subset of
#: the nuclei (EdU, Ki67, a transfected protein): the other channel, the one that marks them all, is taken.
SUBSET_SHARE, SUBSET_GROWTH, SUBSET_SIZE = 0.75, 1.2, 2.0


def nuclear_channel(image, n_plane_axes: int, n_c: int) -> int:
    """The channel of a (planes..., C, Y, X) image that looks most like a nuclear stain.

    A nuclear stain is strongly two-level: compact bright nuclei on a dark background, so Otsu's
    separability (between-class / total variance of the percentile-normalised intensities) is
    high; a cytoplasmic or membrane stain, graded and textured, and an empty channel score lower.
    Channels that hold no signal (`_has_signal`) are passed over first, since pure noise, and the few
    grey levels of a dark channel, can look two-level too. A flat cytoplasm with dark holes at the nuclei
    is two-level as well, and beat the nuclear stain on 3 of 30 mnfinder train composites (AP@0.5 0): the
    share of a channel's foreground in holes (`hole_share`) is taken off its separability.

    Two kinds of stain are more two-level than the nuclear one and are passed over: spots (`SPOT_AREA`: FISH,
    DNA-damage foci), and a marker of some of the nuclei (`SUBSET_SHARE`: EdU, Ki67). Beside the 47 clean real
    images of `../shared/data` they were chosen on 15-24 and 10-44 composites, now on 0-12 and 0-4
    (`benchmarks/default_channel.py`; benchmarks/RESULTS.md, "The default channel beside spots and markers")."""
    stats = channel_stats(image, n_plane_axes, n_c)
    candidates = [c for c in stats if stats[c]["area"] >= SPOT_AREA] or list(stats)
    best = max(candidates, key=lambda c: stats[c]["score"])
    while True:  # from a marker of some nuclei to the stain of all of them (a superset of a superset: the largest)
        fg, size = stats[best]["fg"], int(stats[best]["fg"].sum())
        wider = [
            c
            for c in candidates
            if int(stats[c]["fg"].sum()) >= SUBSET_GROWTH * size
            and int((stats[c]["fg"] & fg).sum()) >= SUBSET_SHARE * size > 0
            and stats[c]["area"] <= SUBSET_SIZE * stats[best]["area"]
        ]
        if not wider:
            return best
        best = max(wider, key=lambda c: int(stats[c]["fg"].sum()))


def channel_stats(image, n_plane_axes: int, n_c: int) -> dict[int, dict]:
    """What `nuclear_channel` weighs, for each channel that holds a stain (`_has_signal`; all when none does), on
    the central window of its middle plane (`_middle_window`, `_cleaned`): ``score`` (Otsu's separability less
    `hole_share`), ``fg`` (`_foreground`) and ``area`` (its `typical_area`)."""
    from skimage.filters import threshold_otsu

    windows = [_middle_window(image, n_plane_axes, c) for c in range(n_c)]
    clean = [_cleaned(w) for w in windows]
    integer = np.issubdtype(image.dtype, np.integer)
    candidates = [c for c in range(n_c) if _has_signal(windows[c], clean[c], integer)] or list(range(n_c))
    stats = {}
    for c in candidates:
        x, fg = clean[c], _foreground(clean[c])
        score = -1.0
        if np.ptp(x) > 0:
            above = x > threshold_otsu(x)
            w = above.mean()
            between = w * (1 - w) * (x[above].mean() - x[~above].mean()) ** 2 if 0 < w < 1 else 0.0
            score = float(between / max(float(x.var()), 1e-12)) - hole_share(x, fg)
        stats[c] = {"score": score, "fg": fg, "area": typical_area(fg)}
    return stats


def auto_channel(image, n_plane_axes: int, n_intensity: int) -> int:
    """The channel that `iter_planes` segments by default (`channel=None`) of a (planes..., C, Y, X) image whose
    first `n_intensity` channels hold intensities (`intensity_channels`)."""
    return nuclear_channel(image, n_plane_axes, n_intensity) if n_intensity > 1 else 0


def default_channel(image, axes: str) -> int:
    """The channel that `iter_planes` segments by default of an image with axes `axes` (a C among them)."""
    std, std_axes = to_standard(image, axes)
    k = std_axes.index("C")
    return auto_channel(std, k, intensity_channels(std.shape[k], axes))


def colour_channel(image, channel: int | str | None = None) -> int | str:
    """The channel of a (planes..., Y, X, C) colour image (a napari RGB layer) to take as it is segmented:
    `channel` when given (an index or ``"mean"``), else the default one (`default_channel`)."""
    return channel if channel is not None else default_channel(image, "TZ"[5 - image.ndim :] + "YXC")


def colour_plane(data: np.ndarray, channel: int | str) -> np.ndarray:
    """`channel` (`colour_channel`) of a (..., Y, X, C) colour array: an index, or ``"mean"`` of R, G and B."""
    return data[..., :3].mean(axis=-1) if channel == "mean" else data[..., channel]


def intensity_channels(n_c: int, axes: str) -> int:
    """How many of an image's `n_c` channels hold intensities: channel-last with 4 entries is RGBA, whose alpha
    channel is opacity, not a stain."""
    return 3 if n_c == 4 and axes.endswith("YXC") else n_c


def iter_planes(
    image, axes: str | None = None, channel: int | str | None = None, *, low: float = 1.0, high: float = 99.8
) -> tuple[tuple[int, ...], str, Planes]:
    """Split an image or stack into normalised 2D planes, lazily.

    Args:
        image: numpy array, or any lazy array (zarr, dask) with `shape`, `ndim` and slicing.
        axes: Axis letters (see module docstring); guessed when None.
        channel: Index along the channel axis to segment; ``"mean"`` merges channels (mean of the
            channels, each normalised on its own); None picks the channel that looks most like a
            nuclear stain (`nuclear_channel`). `Planes.channel` says what was used.
        low, high: Normalisation percentiles.

    Burned-in text and scale bars (`overlay_mask`) of an image in memory are left out as no data;
    `Planes.overlay_pixels` says how many pixels that was.

    Returns:
        (spatial shape: the image's shape without the channel axis, the standard axes without C,
        `Planes`: iterable of (plane index, normalised float32 YX plane), read lazily).
    """
    if not hasattr(image, "shape") or not hasattr(image, "ndim"):
        image = np.asarray(image)
    dtype = getattr(image, "dtype", None)
    if dtype is not None and not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)):
        raise InputError(f"the image has a non-numeric dtype ({dtype})")
    if np.issubdtype(dtype, np.complexfloating):
        raise InputError("the image is complex-valued; take its magnitude first")
    axes = resolve_axes(tuple(image.shape), axes)
    image, std = to_standard(image, axes)
    if 0 in image.shape:
        raise InputError(f"the image is empty (shape {tuple(image.shape)})")
    has_c = "C" in std
    n_plane_axes = len(std) - (3 if has_c else 2)
    plane_shape = tuple(image.shape[:n_plane_axes])
    if has_c:
        n_c = image.shape[n_plane_axes]
        # Neither the average nor the automatic choice uses RGBA's alpha (channel=3 still selects it explicitly).
        n_intensity = intensity_channels(n_c, axes)
        if channel == "mean":
            channels = list(range(n_intensity))
        elif channel is None:
            channels = [auto_channel(image, n_plane_axes, n_intensity)]
        elif isinstance(channel, str) or not -n_c <= channel < n_c:
            raise InputError(f"channel {channel} does not exist: the image has {n_c} channels")
        else:
            channels = [channel % n_c]
    elif channel not in (None, 0, "mean"):
        raise InputError(f"channel {channel} requested but the image has no channel axis")
    image, overlay = without_overlays(image, n_plane_axes, channels if has_c else [None])
    if has_c:
        ranges = {c: percentile_range(image[(slice(None),) * n_plane_axes + (c,)], low, high) for c in channels}
    else:
        ranges = {None: percentile_range(image, low, high)}
    spatial = plane_shape + tuple(image.shape[-2:])
    out_axes = std.replace("C", "")
    planes = Planes(image, plane_shape, ranges if has_c else None, ranges.get(None))
    planes.channel = (channels[0] if len(channels) == 1 else "mean") if has_c else None
    planes.frame_axis = std.index("T") if "T" in std else None
    planes.overlay_pixels = overlay
    return spatial, out_axes, planes


class Planes:
    """The normalised 2D planes of a stack: iterate for (plane index, plane), load one with `at`, or
    read any window of one lazily through `view`.

    Holds only the (possibly lazy) image and the normalisation, so it pickles: a dask worker gets
    the same planes, normalised exactly as on the client.
    """

    def __init__(self, image, plane_shape: tuple[int, ...], channel_ranges: dict | None, range_: tuple | None):
        self.image = image  # (planes..., [C,] Y, X)
        self.channel_ranges = channel_ranges  # {channel: (lo, hi)} with a channel axis, else None
        self.range = range_  # (lo, hi) without one
        self.channel: int | str | None = None  # the channel used: an index, "mean", or None (no C axis)
        self.indices = list(np.ndindex(*plane_shape)) if plane_shape else [()]
        self.plane_shape = tuple(image.shape[-2:])
        self.frame_axis: int | None = None  # where a time-lapse's T is in a plane's index
        self.frame_high: dict[int, float] = {}  # time point -> its high level moved (`with_high`)
        self.overlay_pixels = 0  # burned-in annotation left out (`overlay_mask`)

    def load(self, idx: tuple[int, ...], window: tuple[slice, slice] = (slice(None), slice(None))) -> np.ndarray:
        """Plane `idx` (or its `window`), normalised float32; reads only that window of a lazy image. Hot pixels
        are told from their neighbours, so a window read with a step keeps them (`normalize_plane`)."""
        spikes = all(w.step in (None, 1) for w in window)
        ranges = self.channel_ranges if self.channel_ranges is not None else {None: self.range}
        factor = self.frame_high.get(idx[self.frame_axis], 1.0) if self.frame_high else 1.0
        acc = None
        for c, (lo, hi) in ranges.items():
            plane = self.image[idx + ((c,) if c is not None else ()) + window]
            p = normalize_plane(plane, lo, hi if factor == 1.0 else lo + factor * (hi - lo), spikes=spikes)
            acc = p if acc is None else acc + p
        return acc / len(ranges) if len(ranges) > 1 else acc

    def with_high(self, factor: float = 1.0, frames: dict[int, float] | None = None) -> Planes:
        """The same planes with every high level moved to low + `factor` x (high - low), and a time-lapse's
        frames `frames` (time point -> factor) moved by their own factor instead."""

        def moved(r):
            return (r[0], r[0] + factor * (r[1] - r[0]))

        ranges = None if self.channel_ranges is None else {c: moved(r) for c, r in self.channel_ranges.items()}
        out = Planes(self.image, (), ranges, None if self.range is None else moved(self.range))
        out.indices, out.channel, out.frame_axis = self.indices, self.channel, self.frame_axis
        out.frame_high = {t: f / factor for t, f in (frames or {}).items()}
        return out

    def __iter__(self) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
        for idx in self.indices:
            yield idx, self.load(idx)

    def at(self, idx: tuple[int, ...]) -> np.ndarray:
        return self.load(idx)

    def view(self, idx: tuple[int, ...]) -> PlaneView:
        return PlaneView(self, idx)

    def median_level(self, max_samples: int = 250_000) -> float:
        """The median pixel of the middle plane, normalised: near 0 for bright objects on a dark background."""
        return float(np.median(_sample(self.view(self.indices[len(self.indices) // 2]), max_samples)))

    def most_contrasted(self, candidates: int = 9, max_samples: int = 250_000) -> tuple[int, ...]:
        """Index of the plane with the widest spread of intensities among up to `candidates` evenly spaced.

        Out-of-focus or empty planes of a z-stack have little spread; the plane with most is where
        objects are sharpest, so that is where their size can be measured.
        """
        picks = np.unique(np.linspace(0, len(self.indices) - 1, min(candidates, len(self.indices))).astype(int))
        spread = [float(np.std(_sample(self.view(self.indices[k]), max_samples))) for k in picks]
        return self.indices[picks[int(np.argmax(spread))]]


class PlaneView:
    """One normalised plane read lazily: ``view[y0:y1, x0:x1]`` (steps allowed) loads only that window."""

    def __init__(self, planes: Planes, idx: tuple[int, ...]):
        self.planes, self.idx = planes, idx
        self.shape = planes.plane_shape
        self.ndim = 2
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, key) -> np.ndarray:
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, slice) for k in key)):
            raise TypeError("a plane view takes two slices, e.g. view[0:512, 0:512]")
        return self.planes.load(self.idx, key)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self.planes.load(self.idx)
        return out if dtype is None else out.astype(dtype)

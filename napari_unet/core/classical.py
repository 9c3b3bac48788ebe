"""Classical nuclei segmentation baseline: Otsu threshold + distance-transform watershed.

This is the pipeline a biologist would assemble in Fiji or scikit-image, and the baseline the
U-Net is compared with. It works on 2-D single-channel images of bright nuclei on a dark
background.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import gaussian, threshold_otsu
from skimage.morphology import reconstruction
from skimage.segmentation import relabel_sequential, watershed

__all__ = ["classical_segment", "normalize_percentile"]

_LOG_EPS = 0.1  # offset (in normalised units) before the log, tames background noise


def normalize_percentile(image: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """Scale an image so that its ``low``/``high`` percentiles map to 0/1 (not clipped).

    Args:
        image: Input image of any real dtype.
        low: Lower percentile.
        high: Upper percentile.

    Returns:
        A float32 array of the same shape.
    """
    img = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(img, [low, high])
    if hi <= lo:
        hi = lo + 1.0
    return (img - lo) / (hi - lo)


def classical_segment(
    image: np.ndarray,
    *,
    sigma: float = 2.0,
    min_size: int = 30,
    footprint: np.ndarray | None = None,
    h: float | None = None,
    log_threshold: bool = False,
) -> np.ndarray:
    """Segment nuclei with smoothing, Otsu thresholding and a distance-transform watershed.

    Steps: percentile normalisation (1 %-99.8 %), Gaussian smoothing, Otsu threshold (on
    linear intensities by default, see ``log_threshold``), hole filling, removal of foreground
    components smaller than ``min_size``, Euclidean distance transform (lightly smoothed),
    seeds at its local maxima (``peak_local_max``, at least ``min_distance`` apart) that also
    sit on a maximum rising at least ``h`` above the saddle to its neighbours (h-maxima),
    watershed on the negative distance inside the mask, and removal of objects smaller than
    ``min_size`` pixels.

    ``min_distance`` and ``h`` follow the object size: the typical nucleus radius ``r`` is
    estimated as the median, over connected foreground components, of each component's largest
    inscribed radius (the maximum of its distance transform), so touching nuclei do not inflate
    it. Every foreground component keeps at least one seed.

    Args:
        image: 2-D single-channel image (any real dtype).
        sigma: Standard deviation of the Gaussian smoothing, in pixels.
        min_size: Objects with fewer pixels are removed (also applied to the mask before the
            watershed).
        footprint: Optional boolean footprint for the local-maximum search; overrides the
            size-derived ``min_distance = max(2, round(r / 2))``.
        h: Minimum height (in pixels of distance) of a distance maximum above the saddle to
            its neighbour for it to become a separate seed (h-maxima); peaks on the same
            h-dome share one seed. ``None``: ``max(1, 0.1 * r)``; ``0`` disables the filter.
        log_threshold: Compute the Otsu threshold on log intensities (a CellProfiler option)
            instead of linear ones. This keeps dim nuclei beside bright (e.g. mitotic) ones and
            gives fuller outlines: on the mnfinder gold labels AP@0.5 rises from about 0.68
            to 0.86, but on bbbc007, whose silver labels were made with a linear Otsu
            threshold, it falls from 0.95 to 0.72 (objects come out about 1.4x larger).

    Returns:
        int32 instance labels of the same shape, 0 for background, ids 1..n.

    Raises:
        ValueError: If ``image`` is not 2-D.
    """
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"classical_segment expects a 2-D image, got shape {img.shape}")
    out = np.zeros(img.shape, np.int32)
    if img.size == 0:
        return out

    norm = normalize_percentile(img)
    smooth = gaussian(norm, sigma=sigma) if sigma > 0 else norm
    if float(smooth.max()) <= float(smooth.min()):
        return out
    if log_threshold:
        # Otsu on log intensities: dim nuclei next to bright mitotic
        # ones are not lost to a threshold pulled up by the bright tail.
        logged = np.log(np.clip(smooth, 0.0, None) + _LOG_EPS)
        mask = logged > threshold_otsu(logged)
    else:
        mask = smooth > threshold_otsu(smooth)
    mask = ndi.binary_fill_holes(mask)
    mask = _drop_small(ndi.label(mask)[0], min_size) > 0
    if not mask.any():
        return out

    dist = ndi.distance_transform_edt(mask)
    comps, n_comp = ndi.label(mask)
    comp_max = ndi.maximum(dist, comps, np.arange(1, n_comp + 1))
    radius = float(np.median(comp_max)) if n_comp else 1.0

    dist_s = gaussian(dist.astype(np.float32), sigma=max(1.0, 0.1 * radius))
    if h is None:
        h = max(1.0, 0.1 * radius)

    if footprint is None:
        min_distance = max(2, int(round(0.5 * radius)))
        peaks = peak_local_max(dist_s, min_distance=min_distance, labels=comps, exclude_border=False)
    else:
        peaks = peak_local_max(dist_s, footprint=footprint, labels=comps, exclude_border=False)

    markers = np.zeros(img.shape, np.int32)
    if h > 0:
        # h-maxima: tops of the distance "domes" that rise at least h above every saddle.
        # A peak must sit on one, and peaks on the same dome share one seed id.
        recon = reconstruction(dist_s - h, dist_s, method="dilation")
        domes, _ = ndi.label((dist_s - recon) >= h - 1e-4)
        ids = domes[tuple(peaks.T)] if len(peaks) else np.zeros(0, np.int32)
        markers[tuple(peaks[ids > 0].T)] = ids[ids > 0]
    elif len(peaks):
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # Components without a seed get one at their distance maximum.
    seeded = np.zeros(n_comp + 1, bool)
    seeded[comps[markers > 0]] = True
    missing = np.flatnonzero(~seeded[1:]) + 1
    if missing.size:
        start = int(markers.max()) + 1
        for k, pos in enumerate(ndi.maximum_position(dist_s, comps, missing)):
            markers[pos] = start + k

    labels = watershed(-dist_s, markers, mask=mask)
    labels = _drop_small(labels, min_size)
    out[:] = relabel_sequential(labels)[0]
    return out


def _drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Zero the objects of a label image that have fewer than ``min_size`` pixels."""
    if min_size <= 1:
        return labels
    areas = np.bincount(labels.ravel())
    small = areas < min_size
    small[0] = False
    if small.any():
        labels = labels.copy()
        labels[small[labels]] = 0
    return labels

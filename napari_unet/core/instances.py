"""Class probabilities -> instance labels, and instance labels -> three-class training targets.

Seeds are the connected components of confident object interior; they grow by watershed over the
interior probability into the foreground (interior or boundary), so the boundary class acts as the
barrier between touching objects. The watershed runs in bands of rows with a margin, on globally
numbered seeds, which bounds memory on very large planes and keeps ids consistent across bands.
Pairs that look like one object cut in two (a long shared border, a convex union) are then rejoined.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label as connected_parts
from skimage.measure import regionprops
from skimage.segmentation import expand_labels, watershed

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
#: `merge_cut_objects`: a pair is one object cut in two from this shared border (x the smaller one's
#: equivalent diameter) and this solidity of their union.
CUT_BORDER, CUT_SOLIDITY = 0.7, 0.85
#: ... and at most this many times the area of a typical object (two nuclei pressed together are about twice it).
CUT_UNION = 1.8
#: `refine_outlines`: the trim levels tried above a model's own, and how steep (x the steepest) a higher level's
#: outlines must be to be taken (`steepest_level`).
LEVEL_STEPS, STEEPNESS = (0.0, 0.1, 0.2, 0.35), 0.9
#: `split_joined_seeds`: a seed this many times a typical seed's area, and less solid than this, is tried at
#: these higher interior levels; it is split where it falls into parts of at least `JOIN_PART` x the typical
#: seed each (benchmarks/RESULTS.md, "Seeds of two nuclei joined").
JOIN_AREA, JOIN_SOLIDITY, JOIN_PART, JOIN_LEVELS = 1.6, 0.85, 0.5, (0.6, 0.7, 0.8)
#: Given a typical object's diameter (`segment.typical_diameter`), the typical seed and object those rules
#: compare with are these shares of its disc, not the medians of the array at hand, so that every block of a
#: plane decides alike. Measured at the estimated diameter, the median seed is 0.50-0.60 of the disc and
#: the median object 0.86-0.95 (by set; 0.42-1.07 by image); the object's share was chosen on mnfinder val and
#: synthetic validation (benchmarks/RESULTS.md, "Blocks that decide alike").
SEED_SHARE, OBJECT_SHARE = 0.58, 0.85


def inner_boundaries(labels: np.ndarray) -> np.ndarray:
    """Object pixels (voxels) with a face neighbour of another id (0 included), as skimage's
    ``find_boundaries(labels, mode="inner")`` gives them (the array's edge is no boundary), by comparing
    shifted views: the same mask, 8x faster on a 2048^2 plane (0.055 -> 0.007 s)."""
    out = np.zeros(labels.shape, bool)
    for axis in range(labels.ndim):
        a, b = [slice(None)] * labels.ndim, [slice(None)] * labels.ndim
        a[axis], b[axis] = slice(1, None), slice(None, -1)
        differ = labels[tuple(a)] != labels[tuple(b)]
        out[tuple(a)] |= differ
        out[tuple(b)] |= differ
    out &= labels > 0
    return out


def label_areas(labels: np.ndarray, n: int | None = None) -> np.ndarray:
    """Pixels (voxels) of each id 0..max (at least 0..`n`): `np.bincount` of the labels, counted from a sort
    (`np.unique`), which numpy's SIMD sort makes 3x faster on an int32 plane of 2048^2 (0.016 -> 0.005 s,
    benchmarks/RESULTS.md) than bincount's cast to int64."""
    ids, counts = np.unique(labels, return_counts=True)
    out = np.zeros(max(int(ids[-1]) + 1 if ids.size else 1, 0 if n is None else n + 1), np.int64)
    out[ids] = counts
    return out


def min_object_size(diameter: float) -> int:
    """Smallest object kept, px: 10 % of the area of a typical object, at least 8."""
    return max(8, int(0.1 * np.pi / 4 * diameter**2))


def equivalent_diameter(area):
    """Diameter of the disc of `area` px (a number or an array)."""
    return 2 * np.sqrt(np.asarray(area, dtype=np.float64) / np.pi)


def median_diameter(labels: np.ndarray) -> float | None:
    """Equivalent diameter of the median object of `labels`, px (None when there is none)."""
    areas = label_areas(labels)[1:]
    areas = areas[areas > 0]
    return float(equivalent_diameter(np.median(areas))) if areas.size else None


def labels_from_probabilities(
    probs: np.ndarray,
    *,
    min_size: int = 30,
    seed_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    band: int = 1024,
    margin: int = 96,
    merge_cuts: bool = True,
    split_seeds: bool = True,
    typical_diameter: float | None = None,
) -> np.ndarray:
    """Seeded watershed on (3, H, W) probabilities (uint8 0..255 or float 0..1).

    Args:
        probs: Background, interior, boundary probabilities.
        min_size: Objects with fewer pixels are removed.
        seed_threshold: Interior probability above which a pixel seeds an object.
        mask_threshold: Foreground (1 - background) probability above which a pixel can be claimed.
        band, margin: Rows per watershed band and the context rows above and below each band.
        merge_cuts: Rejoin pairs that look like one object cut in two (`merge_cut_objects`).
        split_seeds: Split seeds that join the interiors of two touching objects (`split_joined_seeds`).
        typical_diameter: A typical object's diameter, px: the typical seed and object of those two rules follow
            from it (`SEED_SHARE`, `OBJECT_SHARE`), so that the labels of a block do not depend on what else the
            block holds. None: the medians of these probabilities' seeds and objects.

    Returns:
        int32 labels (H, W), 0 = background, ids 1..N consecutive.
    """
    scale = 255.0 if probs.dtype == np.uint8 else 1.0
    interior = probs[INTERIOR]
    seeds, n = ndi.label(interior > seed_threshold * scale)
    seeds = seeds.astype(np.int32, copy=False)
    disc = None if typical_diameter is None else np.pi / 4 * typical_diameter**2
    if split_seeds:
        n = split_joined_seeds(seeds, n, interior, scale, None if disc is None else SEED_SHARE * disc)
    out = np.zeros(interior.shape, np.int32)
    if n == 0:
        return out
    H = interior.shape[0]
    for y0 in range(0, H, band):
        a, b = max(0, y0 - margin), min(H, y0 + band + margin)
        fg = probs[BACKGROUND, a:b] < (1.0 - mask_threshold) * scale
        fg |= seeds[a:b] > 0
        # Flood from high to low interior probability; ints keep the priority queue small.
        elevation = (scale - interior[a:b]).astype(np.int16 if scale == 255.0 else np.float32)
        ws = watershed(elevation, seeds[a:b], mask=fg)
        y1 = min(H, y0 + band)
        out[y0:y1] = ws[y0 - a : y1 - a]
    del seeds
    if merge_cuts:
        merge_cut_objects(out, typical=None if disc is None else OBJECT_SHARE * disc)
    return remove_small(out, min_size)


def split_joined_seeds(
    seeds: np.ndarray, n: int, interior: np.ndarray, scale: float = 1.0, typical: float | None = None
) -> int:
    """Split, in place, the seeds that hold two touching nuclei's interiors joined by a bridge; returns the seed count.

    Touching nuclei often share one region of interior probability above the seed threshold, and the watershed
    then makes one object of both: merges are most of what the crowded, defocused and dense synthetic rows of
    the hard-case suite lose. A seed is tried when it is `JOIN_AREA` x the typical seed's area or more and not
    solid (solidity under `JOIN_SOLIDITY`: two interiors meet in a waist). It is split at the first of
    `JOIN_LEVELS` where the interior falls into two or more parts of at least `JOIN_PART` x the typical seed
    each; its other pixels go to the nearest part (a watershed on the interior inside the seed). A large,
    solid seed is one large nucleus, and a seed with foci or texture falls into smaller parts, so both stay
    whole (a threshold of 0.6 everywhere cut textured and condensed nuclei at their foci).

    Args:
        seeds: int32 seed labels 1..n, modified in place.
        n: Number of seeds.
        interior: Interior probability, 0..`scale` (uint8 with `scale` 255, or float with 1).
        typical: A typical seed's area, px; None: the median seed's (then at least 3 seeds are needed).
    """
    if n == 0 or (typical is None and n < 3):
        return n
    area = label_areas(seeds, n)
    if typical is None:
        typical = float(np.median(area[1:]))
    boxes = ndi.find_objects(seeds)
    for i in np.flatnonzero(area[1:] >= JOIN_AREA * typical) + 1:
        box = boxes[i - 1]
        mine = seeds[box] == i
        if regionprops(mine.astype(np.uint8))[0].solidity >= JOIN_SOLIDITY:
            continue
        for level in JOIN_LEVELS:
            parts, m = ndi.label(mine & (interior[box] > level * scale))
            if m < 2:
                continue
            big = np.flatnonzero(np.bincount(parts.ravel())[1:] >= JOIN_PART * typical) + 1
            if big.size < 2:
                continue
            cores = np.where(np.isin(parts, big), parts, 0)
            split = watershed(-interior[box].astype(np.float32), cores, mask=mine)
            region = seeds[box]
            for j, b in enumerate(big[1:]):
                region[split == b] = n + 1 + j
            n += big.size - 1
            break
    return n


def border_ratio(P: np.ndarray, Q: np.ndarray) -> float:
    """Shared border of two touching masks / the smaller one's equivalent diameter."""
    border = (P & ndi.binary_dilation(Q)).sum() + (Q & ndi.binary_dilation(P)).sum()
    return float(0.5 * border / equivalent_diameter(min(P.sum(), Q.sum())))


def union_solidity(P: np.ndarray, Q: np.ndarray) -> float:
    """Solidity (area / convex area) of the union of two masks."""
    return float(regionprops((P | Q).astype(np.uint8))[0].solidity)


def pair_shape(P: np.ndarray, Q: np.ndarray) -> tuple[float, float]:
    """(`border_ratio`, `union_solidity`) of two touching masks."""
    return border_ratio(P, Q), union_solidity(P, Q)


def merge_cut_objects(
    labels: np.ndarray,
    min_interface: float = CUT_BORDER,
    min_solidity: float = CUT_SOLIDITY,
    band: int = 1024,
    max_union: float = CUT_UNION,
    typical: float | None = None,
) -> np.ndarray:
    """Rejoin touching objects that look like one nucleus cut in two, in place.

    A pair is merged when the border they share is long (at least `min_interface` of the smaller one's
    equivalent diameter), their union is convex (solidity at least `min_solidity`) and no larger than
    `max_union` times the typical object: two nuclei pressed together also meet along a long border, but
    their union is about twice a typical nucleus, where the halves of one nucleus make one. Two nuclei that
    touch meet along a short border in a waist; a nucleus the network cut along a false boundary line
    leaves two halves with a long, straight border and a convex union. Each object joins at most one
    other, longest border first, so a chain never collapses into one object. Measured on v2's
    predictions (benchmarks/RESULTS.md): of the adjacent pairs, 7 of 12 cuts rejoined against 2 of 20
    true pairs merged on mnfinder val, 28 of 60 against 5 of 92 on BBBC007; the size guard (1.8, chosen on
    the selection sets) keeps 234 of the 303 true pairs the rule joined on dense synthetic nuclei apart.
    """
    H = labels.shape[0]
    edges = []
    for y0 in range(0, H, band):
        rows, down = labels[y0 : y0 + band], labels[y0 : y0 + band + 1]
        for a, b in ((rows[:, :-1], rows[:, 1:]), (down[:-1], down[1:])):
            m = (a != b) & (a > 0) & (b > 0)
            edges.append(np.sort(np.stack([a[m], b[m]], 1), 1))
    edges = np.concatenate(edges).astype(np.int64)
    if not len(edges):
        return labels
    pairs, contacts = np.unique(edges, axis=0, return_counts=True)
    area = label_areas(labels)
    dmin = equivalent_diameter(np.minimum(area[pairs[:, 0]], area[pairs[:, 1]]))
    keep = contacts >= 0.5 * min_interface * dmin  # cheap filter: each border pixel gives 1-2 contacts
    if typical is None:
        typical = np.median(area[1:][area[1:] > 0])
    keep &= area[pairs[:, 0]] + area[pairs[:, 1]] <= max_union * typical
    boxes = ndi.find_objects(labels)
    candidates = []
    for p, q in pairs[keep]:
        bp, bq = boxes[p - 1], boxes[q - 1]
        crop = tuple(slice(min(u.start, v.start), max(u.stop, v.stop)) for u, v in zip(bp, bq))
        P, Q = labels[crop] == p, labels[crop] == q
        length = border_ratio(P, Q)  # the convex hull only for the pairs with a long border
        if length >= min_interface and union_solidity(P, Q) >= min_solidity:
            candidates.append((length, int(p), int(q)))
    lut = np.arange(area.size, dtype=labels.dtype)
    joined = set()
    for _, p, q in sorted(candidates, reverse=True):
        if p not in joined and q not in joined:
            lut[q] = p
            joined.update((p, q))
    if joined:
        for y0 in range(0, H, band):
            labels[y0 : y0 + band] = lut[labels[y0 : y0 + band]]
    return labels


def group_quantile(values: np.ndarray, groups: np.ndarray, q: float, n: int) -> np.ndarray:
    """The `q` quantile (lower value) of `values` in each group 0..n; NaN for an empty group."""
    out = np.full(n + 1, np.nan, np.float32)
    if values.size == 0:
        return out
    counts = np.bincount(groups, minlength=n + 1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    has = counts > 0
    ordered = values[np.lexsort((values, groups))]
    out[has] = ordered[starts[has] + np.floor(q * (counts[has] - 1)).astype(np.int64)]
    return out


def object_brightness(labels: np.ndarray, image: np.ndarray, n: int) -> np.ndarray:
    """Each object's bright level, the 75th percentile of its pixels (index 0..n; NaN where absent)."""
    fg = labels > 0
    return group_quantile(np.asarray(image, np.float32)[fg], labels[fg], 0.75, n)


def steepest_level(
    labels: np.ndarray,
    image: np.ndarray,
    background: np.ndarray,
    bright: np.ndarray,
    diameter: float,
    step: int,
    levels,
) -> float:
    """The trim level at which the image's objects have their steepest outlines: the lowest of `levels` whose
    outlines are at least `STEEPNESS` x as steep as the steepest's.

    At each level, an object's outline is the edge of its pixels above background + level x (bright -
    background) within 0.15 diameters of its untrimmed outline (so that chromatin texture inside does not
    count); its steepness is the mean gradient magnitude there (Gaussian, sigma 1 px of the full image),
    averaged over the objects (0 for an object with no such edge). A sharp edge is about equally steep at every level, so the lowest wins. A blurred one is steepest at
    half its contrast (a Gaussian-blurred step is 0.58x as steep at 15 % as at 50 %), so defocused images
    are trimmed to their nuclei's half-maximum instead of their blur. `labels` and `image` are subsampled by
    `step`.
    """
    n = background.size - 1
    gradient = ndi.gaussian_gradient_magnitude(image, 1.0 / step)
    inside = labels > 0
    r = 0.15 * diameter / step  # within r of the outline: not eroded away by a disc of radius r
    dy, dx = np.ogrid[-int(r) : int(r) + 1, -int(r) : int(r) + 1]
    core = inside & ~inner_boundaries(labels)
    near = inside & ~ndi.binary_erosion(core, structure=dy**2 + dx**2 <= r**2, border_value=1)
    steepness = []
    for level in levels:
        cut = background + level * (bright - background)
        kept = inside & (image > np.where(np.isfinite(cut), cut, np.inf)[labels])
        edge = kept & ~ndi.binary_erosion(kept) & near
        total = np.bincount(labels[edge], weights=gradient[edge], minlength=n + 1)[1:]
        count = np.bincount(labels[edge], minlength=n + 1)[1:]
        steepness.append(float(np.mean(total / np.maximum(count, 1))))
    steep = np.asarray(steepness)
    return float(levels[int(np.argmax(steep >= STEEPNESS * steep.max()))])


def refine_outlines(
    labels: np.ndarray,
    image: np.ndarray,
    diameter: float,
    level: float,
    *,
    min_part: float = 0.2,
    steepest: bool = True,
) -> np.ndarray:
    """Trim each object's dim rim: pixels below `level` of its own contrast over its local background.

    An object's bright level is the 75th percentile of its pixels; its background the median of the
    free pixels within a quarter diameter whose nearest object it is. Both levels are read on every
    other row and column when objects are at least 12 px across (0.8 -> 0.4 s on a 2048^2 plane of
    715 nuclei). Pixels under background + `level` x (bright - background) are dropped when they reach
    the object's edge (dark holes inside stay), and so are parts cut off that are under `min_part` of
    the object's largest part. Only shrinks: an object that would keep under half its area, or has no
    free pixels around it, or no contrast, is left as it is. Why: the network draws dim nuclei with
    their blur halo (outlines 1.3x the area of BBBC007's, 1.18x at 0.25x magnification); the level is
    chosen on the selection sets (`benchmarks/outline_threshold.py --levels`).

    With `steepest`, `level` is the lowest of the levels tried (`LEVEL_STEPS` above it), and the image's
    objects take the one where their outlines are steepest (`steepest_level`): defocused images are trimmed
    further (benchmarks/RESULTS.md: blurred fields 0.858 -> 0.887 and 0.773 -> 0.843, BBBC007 0.716 -> 0.741;
    mnfinder and synthetic sets unchanged; 4x magnification -0.016).

    Returns:
        New int32 labels with the same ids.
    """
    n = int(labels.max())
    if n == 0 or level <= 0:
        return labels
    img = np.asarray(image, np.float32)
    step = 2 if diameter >= 12 else 1
    sub_labels, sub_img = labels[::step, ::step], img[::step, ::step]
    free = sub_labels == 0
    nearest = expand_labels(sub_labels, max(1, round(0.25 * diameter / step)))
    ring = free & (nearest > 0)
    background = group_quantile(sub_img[ring], nearest[ring], 0.5, n)
    bright = object_brightness(sub_labels, sub_img, n)
    if steepest:
        level = steepest_level(sub_labels, sub_img, background, bright, diameter, step,
                               [lv for d in LEVEL_STEPS if (lv := level + d) < 1])  # fmt: skip
    inside = labels > 0
    cut = background + level * (bright - background)
    cut[~(np.isfinite(cut) & (bright > background))] = -np.inf
    kept = np.where(img > cut[labels], labels, 0)
    parts = connected_parts(kept, connectivity=1)
    owner = np.zeros(int(parts.max()) + 1, np.int64)
    owner[parts.ravel()] = kept.ravel()
    size = np.bincount(parts.ravel())
    size[0] = 0
    largest = np.zeros(n + 1, np.int64)
    np.maximum.at(largest, owner, size)
    keep_part = size >= min_part * largest[owner]
    keep_part[0] = False
    kept = np.where(keep_part[parts], labels, 0)
    # What was dropped but does not reach the object's edge is a dark hole (a nucleolus): give it back. Parts of
    # one mask, not of each object: dropped pixels of two objects touch only on both objects' edges, so joining
    # them changes no part's answer (and a binary labelling is 3x faster than skimage's of the ids).
    dropped, m = ndi.label(inside & (kept == 0))
    reaches_edge = np.zeros(m + 1, bool)
    reaches_edge[dropped[inner_boundaries(labels) & (dropped > 0)]] = True
    reaches_edge[0] = True
    kept = np.where(reaches_edge[dropped], kept, labels)
    lost = np.bincount(labels[(kept == 0) & inside], minlength=n + 1)
    too_much = lost > 0.5 * label_areas(labels, n)
    too_much[0] = False
    return np.where(too_much[labels], labels, kept).astype(np.int32)


def remove_small(labels: np.ndarray, min_size: int, band: int = 1024) -> np.ndarray:
    """Drop objects under `min_size` px and renumber the rest 1..N, in place, band by band."""
    counts = label_areas(labels)
    keep = counts >= min_size
    keep[0] = False
    lut = np.zeros(counts.size, labels.dtype)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=labels.dtype)
    for y0 in range(0, labels.shape[0], band):
        labels[y0 : y0 + band] = lut[labels[y0 : y0 + band]]
    return labels


def class_targets(labels: np.ndarray, boundary_width: int = 2) -> np.ndarray:
    """Three-class targets from instance labels: 0 background, 1 interior, 2 boundary.

    The boundary is the inner edge of every object, `boundary_width` px thick, so touching objects
    are always separated by boundary pixels of both.
    """
    labels = np.asarray(labels)
    target = (labels > 0).astype(np.uint8)
    edge = inner_boundaries(labels)
    if boundary_width > 1:
        edge = ndi.binary_dilation(edge, iterations=boundary_width - 1) & (labels > 0)
    target[edge] = BOUNDARY
    return target


def border_weights(labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """The paper's border weight term w0 * exp(-(d1 + d2)^2 / (2 sigma^2)) on background pixels.

    d1 and d2 are the distances to the nearest and second-nearest object. Each object's distance map
    is computed only in its bounding box grown by 3 sigma + the object size scale, where the term is
    not negligible, so the cost grows with the number of objects, not with their product.
    Class balancing is applied separately (see the loss).

    Returns:
        float32 (H, W); 0 on objects and far from pairs of objects.
    """
    labels = np.asarray(labels)
    H, W = labels.shape
    d1 = np.full((H, W), np.inf, np.float32)
    d2 = np.full((H, W), np.inf, np.float32)
    reach = int(np.ceil(3 * sigma))
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        y0, y1 = max(0, sl[0].start - reach), min(H, sl[0].stop + reach)
        x0, x1 = max(0, sl[1].start - reach), min(W, sl[1].stop + reach)
        d = ndi.distance_transform_edt(labels[y0:y1, x0:x1] != i).astype(np.float32)
        a, b = d1[y0:y1, x0:x1], d2[y0:y1, x0:x1]
        closer = d < a
        b[:] = np.where(closer, a, np.minimum(b, d))
        a[:] = np.where(closer, d, a)
    w = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    w[labels > 0] = 0
    w[~np.isfinite(w)] = 0
    return w.astype(np.float32)


def overlap_counts(prev: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The overlaps of two label planes (or matching parts of them), to be summed over parts.

    Returns:
        (pair keys ``prev_id << 32 | cur_id``, their pixel counts, (ids, areas) of both planes as one
        array pair with keys ``id`` for `prev` and ``-id`` for `cur`).
    """
    both = (prev > 0) & (cur > 0)
    keys, inter = np.unique((prev[both].astype(np.int64) << 32) | cur[both].astype(np.int64), return_counts=True)
    ids, areas = np.unique(np.concatenate([prev[prev > 0].astype(np.int64), -cur[cur > 0].astype(np.int64)]),
                           return_counts=True)  # fmt: skip
    return keys, inter, ids, areas


def sum_counts(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Sum (keys, counts) pairs from several parts into one (unique keys, summed counts)."""
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    keys, inv = np.unique(np.concatenate([k for k, _ in parts]), return_inverse=True)
    return keys, np.bincount(inv, weights=np.concatenate([c for _, c in parts])).astype(np.int64)


def plane_links(pair_keys, inter, ids, areas, iou_threshold: float) -> dict[int, int]:
    """Which object of a plane takes which id of the previous one: {cur_id: prev_id}, one-to-one, IoU above the
    threshold, the best-overlapping pair first (from `overlap_counts`, summed over parts by `sum_counts`)."""
    area = dict(zip(ids.tolist(), areas.tolist()))
    best: dict[int, tuple[float, int]] = {}
    for key, n in zip(pair_keys.tolist(), inter.tolist()):
        p, c = key >> 32, key & 0xFFFFFFFF
        iou = n / (area[p] + area[-c] - n)
        if iou > iou_threshold and iou > best.get(c, (0.0, 0))[0]:
            best[c] = (iou, p)
    links, used = {}, set()
    for c, (_, p) in sorted(best.items(), key=lambda kv: -kv[1][0]):
        if p not in used:  # one-to-one: the best-overlapping object wins
            links[c] = p
            used.add(p)
    return links


def apply_links(labels: np.ndarray, links: dict[int, int]) -> np.ndarray:
    """`labels` with each id in `links` replaced by its value, other ids unchanged (in place where possible)."""
    if not links:
        return labels
    cur = np.fromiter(links, np.int64)
    lo, hi = int(cur.min()), int(cur.max())
    lut = np.arange(lo, hi + 1, dtype=np.int64)
    lut[cur - lo] = np.fromiter(links.values(), np.int64)
    inside = (labels >= lo) & (labels <= hi)
    labels[inside] = lut[labels[inside] - lo]
    return labels


def link_planes(labels: np.ndarray, iou_threshold: float = 0.3) -> np.ndarray:
    """Give an object the id of the object it overlaps best in the previous plane (IoU > threshold).

    Args:
        labels: (N, H, W) labels with ids unique across planes.

    Returns:
        Labels where linked objects share one id across planes; ids renumbered 1..M.
    """
    out = labels.copy()
    for z in range(1, out.shape[0]):
        out[z] = apply_links(out[z], plane_links(*overlap_counts(out[z - 1], out[z]), iou_threshold))
    _, inverse = np.unique(out, return_inverse=True)
    return inverse.reshape(out.shape).astype(np.int32)


def merge_keep_painted(old: np.ndarray, new: np.ndarray, trusted: np.ndarray, overlap: float = 0.2) -> np.ndarray:
    """A fresh prediction that keeps everything the user vouched for.

    Objects the user touched are kept whole from `old`, and so is every trusted pixel (including
    painted-over background). New objects that overlap those by more than `overlap` of their area are
    dropped (they are the same objects); the others are clipped around them. New ids never collide.
    """
    old = np.asarray(old)
    keep_ids = np.unique(old[trusted])
    keep_ids = keep_ids[keep_ids > 0]
    keep = trusted | np.isin(old, keep_ids)
    out = np.where(keep, old, 0).astype(np.int32)
    new = np.asarray(new)
    if new.max(initial=0) == 0:
        return out
    n = int(new.max()) + 1
    area = np.bincount(new.ravel(), minlength=n)
    clash = np.bincount(new[keep].ravel(), minlength=n)
    dropped = clash > overlap * np.maximum(area, 1)
    dropped[0] = True
    place = ~keep & ~dropped[new]
    offset = int(old.max(initial=0))
    out[place] = new[place] + offset
    return out

"""Image or stack -> instance labels: the one pipeline behind the API, the CLI and the widget.

`segment_iter` is a generator: it yields `Progress` after every batch of tiles and returns a
`SegmentResult`, so a napari worker can show progress and stop between batches, while `segment`
simply runs it to the end.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.transform import resize

from .blockwise import DEFAULT_BLOCK, TileReuse, finish_block, plan_blocks, predict_block, stitch_blocks
from .device import describe, select_device
from .errors import InputError
from .instances import (
    equivalent_diameter,
    labels_from_probabilities,
    link_planes,
    min_object_size,
    object_brightness,
)
from .jobs import Notice, drain, in_threads, map_in_threads, overlapped, relay
from .model import UNet
from .modelfile import ModelInfo
from .normalize import iter_planes
from .predict import InferenceModel, predict_plane
from .scores import MEASURES, doubt_map, object_measures


@dataclass
class Progress:
    """Where a segmentation run is: plane `plane` of `planes`, tile `done` of `total` in it."""

    plane: int
    planes: int
    done: int
    total: int
    message: str = ""

    @property
    def fraction(self) -> float:
        return (self.plane + (self.done / self.total if self.total else 1.0)) / max(self.planes, 1)


@dataclass
class SegmentResult:
    labels: np.ndarray
    device: str
    diameter: float
    probabilities: np.ndarray | None = None  # uint8 foreground probability, 255 = 1.0
    axes: str = "YX"
    extra: dict = field(default_factory=dict)
    #: {label id: confidence in [0, 1]} (`core.scores`; an object linked across planes: its lowest plane).
    scores: dict[int, float] = field(default_factory=dict)
    #: (plane index, label id, score) for every object of every plane (stacks: what a CSV lists).
    plane_scores: list[tuple[tuple[int, ...], int, float]] = field(default_factory=list)
    doubt: np.ndarray | None = None  # uint8 per-pixel doubt (`core.scores.doubt_map`), when asked


def model_info(model: UNet) -> ModelInfo:
    info = getattr(model, "info", None)
    return info if isinstance(info, ModelInfo) else ModelInfo(config=model.config)


#: Candidate object diameters (px) that the size estimate tries: 5-200 px, a factor 1.41 apart.
CANDIDATE_DIAMETERS = tuple(float(5 * 2 ** (k / 2)) for k in range(11))


def _busiest_windows(plane: np.ndarray, side: int, count: int = 1) -> list[tuple[int, int]]:
    """Top-left corners of up to `count` non-overlapping `side` x `side` windows, the one holding the most
    above-Otsu pixels first."""
    H, W = plane.shape
    if side >= H and side >= W:
        return [(0, 0)]
    f = max(1, min(H, W) // 128)
    small = plane[::f, ::f]
    fg = (small > threshold_otsu(small)).astype(np.float32) if np.ptp(small) > 0 else np.ones_like(small)
    k = max(1, side // f)
    density = ndi.uniform_filter(fg, size=k, mode="constant")
    corners = []
    for _ in range(count):
        cy, cx = np.unravel_index(int(np.argmax(density)), density.shape)
        if corners and density[cy, cx] <= 0:
            break
        y0 = int(np.clip(cy * f - side // 2, 0, max(0, H - side)))
        x0 = int(np.clip(cx * f - side // 2, 0, max(0, W - side)))
        corners.append((y0, x0))
        density[
            max(0, (y0 - side) // f) : (y0 + 2 * side) // f + 1, max(0, (x0 - side) // f) : (x0 + 2 * side) // f + 1
        ] = 0
    return corners


#: `measure_at` pools the objects of up to `MAX_WINDOWS` windows until `MIN_OBJECTS` whole ones are in.
MIN_OBJECTS, MAX_WINDOWS = 5, 4


@dataclass
class Measured:
    """What `measure_at` found at one candidate size."""

    diameter: float | None  # median diameter of the objects measured, plane px (None: nothing found)
    n: int  # objects measured
    centres: np.ndarray  # (n, 2) their centres, plane px
    #: (y0, x0, sy, sx, foreground of every object found) per crop: its px are plane px x (sy, sx)
    views: list[tuple[int, int, float, float, np.ndarray]] = field(default_factory=list)

    def share_inside(self, points: np.ndarray) -> float | None:
        """The share of `points` (plane px) that fall on an object found here, among those inside its crops;
        None when no point is inside a crop."""
        inside = seen = 0
        for y0, x0, sy, sx, fg in self.views:
            yy = np.floor((points[:, 0] - y0) * sy).astype(int)
            xx = np.floor((points[:, 1] - x0) * sx).astype(int)
            ok = (yy >= 0) & (yy < fg.shape[0]) & (xx >= 0) & (xx < fg.shape[1])
            seen += int(ok.sum())
            inside += int(fg[yy[ok], xx[ok]].sum())
        return inside / seen if seen else None


def _segment_window(infer, plane, window, scale, model_diameter, mask_threshold, **instances):
    """(labels, the window as the network saw it) of the `side` x `side` window at (`y0`, `x0`) of `plane`
    (`window`), rescaled by `scale` and segmented untrimmed (`instances`: `labels_from_probabilities` options)."""
    y0, x0, side = window
    sub = np.asarray(plane[y0 : y0 + side, x0 : x0 + side], np.float32)
    if abs(scale - 1.0) > 0.02:
        size = (max(8, round(sub.shape[0] * scale)), max(8, round(sub.shape[1] * scale)))
        sub = resize(sub, size, order=1, anti_aliasing=scale < 1, preserve_range=True).astype(np.float32)
    probs = drain(predict_plane(infer, sub))
    labels = labels_from_probabilities(
        probs, min_size=min_object_size(model_diameter), mask_threshold=mask_threshold, **instances
    )
    return labels, sub


def measure_at(
    infer: InferenceModel,
    plane: np.ndarray,
    model_diameter: float,
    diameter: float,
    side: int = 320,
    mask_threshold: float = 0.5,
) -> Measured:
    """Segment busy crops of `plane` as if its objects were `diameter` px across.

    Each crop is `side` px once rescaled, so every candidate costs about the same. In a sparse field the
    busiest crop may hold a nucleus or two, too few to measure (a field with 1 % of its area in nuclei was
    estimated at 4.5 px for 23 px nuclei): the next busiest crops are added until `MIN_OBJECTS` objects
    that the crop's edge does not cut are in, `MAX_WINDOWS` crops at most.
    """
    scale = model_diameter / diameter
    crop = max(16, int(round(side / scale)))
    inner_areas, all_areas, inner_centres, all_centres, views = [], [], [], [], []
    for y0, x0 in _busiest_windows(plane, crop, MAX_WINDOWS):
        h, w = min(crop, plane.shape[0] - y0), min(crop, plane.shape[1] - x0)
        # No rejoining here: at a far too small candidate scale it glues clumps of tiny nuclei into whole-looking
        # objects, and one mnfinder image at 0.33x was estimated at 6.3x its size (without: 0.98x). Joined seeds
        # are not split here either: the size contract was measured without that.
        labels, _ = _segment_window(infer, plane, (y0, x0, crop), scale, model_diameter, mask_threshold,
                                    merge_cuts=False, split_seeds=False)  # fmt: skip
        sy, sx = labels.shape[0] / h, labels.shape[1] / w
        views.append((y0, x0, sy, sx, labels > 0))
        areas = np.bincount(labels.ravel())
        ids = np.flatnonzero(areas[1:]) + 1
        centres = np.array(ndi.center_of_mass(labels > 0, labels, ids)).reshape(-1, 2) / (sy, sx) + (y0, x0)
        inner = ~np.isin(ids, np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]])
        all_areas.extend(areas[ids])
        all_centres.extend(centres)
        inner_areas.extend(areas[ids[inner]])  # objects cut by the crop's edge look smaller
        inner_centres.extend(centres[inner])
        if len(inner_areas) >= MIN_OBJECTS:
            break
    use, where = (inner_areas, inner_centres) if len(inner_areas) >= 3 else (all_areas, all_centres)
    if not use:
        return Measured(None, 0, np.zeros((0, 2)), views)
    found = float(equivalent_diameter(np.median(use))) / scale
    return Measured(found, len(use), np.array(where, float).reshape(-1, 2), views)


def _plateaus(indices: list[int]) -> list[list[int]]:
    """Runs of consecutive candidate indices, finest first."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


#: A candidate that sees the whole plane as fewer than this many of its diameters across does not put the next
#: finer candidate's `MIN_OBJECTS` or more objects on a plateau by measuring them the same: shrunk that far, a crowded
#: field comes out as a few objects that fill it, whatever the nuclei. Clumps of 16 px nuclei copied into a 400^2
#: BBBC007 field measured 103 and 106 px at the 113 and 160 px candidates, and a fine-tune took them for the nuclei.
FIELD_DIAMETERS = 3


#: `_seen_whole_from_below` wants this many consecutive candidates that measure the same objects above themselves.
SEEN_WHOLE_RUN = 3


def _seen_whole_from_below(measured: list[Measured], agrees) -> int | None:
    """The coarsest candidate of the last run of `SEEN_WHOLE_RUN` or more consecutive candidates that all measure
    the same objects (`agrees`), each at least 1.3x larger than itself, with `MIN_OBJECTS` objects or more; None
    when there is none.

    Such objects are whole: fragments follow the candidate, and these do not. They can still miss a consistent
    candidate of their own, where the crop of the candidate near their size also holds smaller nuclei that pull
    its median down (a field of 27 px nuclei beside 75 px ones: 28-57 px candidates measured 75 px on the large
    ones, the 80 px candidate 42 px on both kinds, and the estimate fell to a plateau of the large nuclei's
    fragments at 14 px)."""
    best, run = None, 0
    for i, (d, m) in enumerate(zip(CANDIDATE_DIAMETERS, measured)):
        if m.diameter is None or m.diameter < 1.3 * d:
            run = 0
        else:
            run = run + 1 if run and agrees(i - 1, m.diameter) else 1
        if run >= SEEN_WHOLE_RUN and m.n >= MIN_OBJECTS:
            best = i
    return best


def estimate_diameter(infer: InferenceModel, plane: np.ndarray, info: ModelInfo) -> float:
    """Median object diameter in `plane`, px, from the model's own view at several scales.

    Every candidate diameter in `CANDIDATE_DIAMETERS` is tried: the crop is rescaled as if its
    objects had that size, segmented, and the objects found are measured. A candidate is
    *consistent* when what is found is within a factor 1.3 of it. Too coarse a candidate finds
    objects larger than itself; too fine a one either finds whole objects, larger than itself, or
    shatters them into fragments of about its own size, which look consistent (the failure of a
    single refined guess, which locked onto 6 px on 35 px textured nuclei). So the estimate is
    the measurement at the *largest* consistent candidate, measured again at its own size (`_refined`).
    A candidate also needs two objects, unless it is *stable*: the next coarser candidate measures
    the same objects (within 1.25x), as whole objects do and fragments or clumps, which follow the
    candidate, do not. That keeps an image with a single whole nucleus in view from falling back to
    its fragments (crops of 192^2 at 1x and 448^2 at 2.5x of mnfinder train images: estimates off by
    more than 1.5x 21.6 % -> 14.8 %; full images unchanged). Whole objects measure the same at two neighbouring
    candidates, so the largest consistent candidate *on such a plateau* is taken where there is one: in a field
    crowded with touching nuclei, a far too coarse candidate shrinks the clumps into objects of about its own
    size, consistent but alone (one crowded mnfinder val render was estimated at 4.3x its nuclei, then 1.0x).
    A coarser candidate that sees the whole plane as only a few of its diameters does not make a plateau of many
    objects (`FIELD_DIAMETERS`). Two plateaus are two kinds of whole objects. The coarser wins, unless it rests
    on fewer than `MIN_OBJECTS` objects in all the crops it was measured on while a finer plateau holds at least
    that many, most of them beside the coarser one's objects rather than inside them as fragments or foci are:
    a bright blob of debris over 5 % of a BBBC007 field, alone at the coarsest candidates, was taken for
    the nuclei (84-132 px for 20 px nuclei on 10 of 14 images). A coarser plateau of many objects stays:
    nuclei in a bright textured cytoplasm have a finer plateau of the cytoplasm's grains beside them.
    Objects that several finer candidates all measure at one size above themselves are whole too
    (`_seen_whole_from_below`); where that size is more than 1.3x the chosen plateau's, it is the coarser kind
    and wins (a field of two nucleus sizes, whose large nuclei never made a plateau of their own).
    Falls back to the model's training diameter (no rescaling) when nothing is found.
    """
    # Objects are measured untrimmed (no `refine_outlines`): the model's diameter is that of its training labels,
    # whose outlines the untrimmed network follows (area ratio 1.03 on mnfinder val). Measured trimmed, the
    # estimate came out smaller and mnfinder val fell from 0.921 to 0.906.
    model_diameter, mask_threshold = info.diameter, info.mask_threshold
    # The candidates are independent: on a CPU, `AT_ONCE` at a time in threads.
    at_once = AT_ONCE if infer.device.type == "cpu" and torch.get_num_threads() > 1 else 1
    measured = map_in_threads(
        lambda d: measure_at(infer, plane, model_diameter, d, mask_threshold=mask_threshold),
        CANDIDATE_DIAMETERS,
        at_once,
    )

    def agrees(j: int, found: float) -> bool:  # candidate j measures the same objects (within 1.25x)
        other = measured[j].diameter if 0 <= j < len(measured) else None
        return other is not None and abs(np.log(other / found)) < np.log(1.25)

    consistent, on_plateau = [], []
    for i, (d, m) in enumerate(zip(CANDIDATE_DIAMETERS, measured)):
        if m.diameter is None or abs(np.log(m.diameter / d)) >= np.log(1.3):
            continue
        if m.n >= 2 or agrees(i + 1, m.diameter):
            consistent.append(i)
            coarser = agrees(i + 1, m.diameter) and (
                m.n < MIN_OBJECTS or min(plane.shape) >= FIELD_DIAMETERS * CANDIDATE_DIAMETERS[i + 1]
            )
            if agrees(i - 1, m.diameter) or coarser:
                on_plateau.append(i)
    seen_whole = _seen_whole_from_below(measured, agrees)
    if not consistent and seen_whole is None:
        return float(model_diameter)
    runs = _plateaus(on_plateau)
    chosen = runs[-1] if runs else [consistent[-1]] if consistent else [seen_whole]
    if seen_whole is not None and measured[seen_whole].diameter > 1.3 * measured[chosen[-1]].diameter:
        chosen = [seen_whole]  # it has `MIN_OBJECTS`, so no finer plateau takes its place below
    for run in reversed(runs[:-1]):
        if max(measured[i].n for i in chosen) >= MIN_OBJECTS:
            break
        finer = max(run, key=lambda i: measured[i].n)
        if measured[finer].n < MIN_OBJECTS:
            continue
        inside = measured[chosen[-1]].share_inside(measured[finer].centres)
        if inside is not None and inside < 0.5:
            chosen = run
    guess = float(measured[chosen[-1]].diameter)
    return float(np.clip(_refined(infer, plane, info, guess), 4, 400))


#: `_refined` measures at most this many times.
REFINE_PASSES = 4


def _refined(infer: InferenceModel, plane: np.ndarray, info: ModelInfo, guess: float) -> float:
    """The candidates' `guess` measured again at its own size, on busy crops of the whole plane.

    A measurement is taken when it lands within 1.3x of the size it was made at. One that lands further is
    measured again at what it found, `REFINE_PASSES` times at most; where none lands, the guess stays. On a
    field of cells in a quarter-bright cytoplasm, the cells made the coarsest plateau (2.1-2.9x the nuclei),
    and each pass came nearer the nuclei (98 -> 65 -> 40 -> 33 px for 38 px nuclei); on a crowded BBBC007
    field the clumps did (90 -> 58 -> 31 -> 20 -> 17 px for 17 px nuclei). One pass kept the first step of
    each, 1.7x and 3.4x. The passes drift downward there, past the nuclei in a bright cytoplasm, where
    AP@0.5 falls fast under the true size (0.91 at 1.05x, 0.57 at 0.87x), so after more than one pass the
    estimate is the geometric mean of the last pass's size and what it found. A debris field whose pass swung
    between the nuclei and the debris (41 -> 115 -> 42 -> 89 px for 38 px nuclei) keeps the guess instead of
    115 px. benchmarks/RESULTS.md, "The refining pass repeated"."""
    at = guess
    for n in range(REFINE_PASSES):
        found = measure_at(infer, plane, info.diameter, at, mask_threshold=info.mask_threshold).diameter
        if found is None:
            break
        if abs(np.log(found / at)) < np.log(1.3):
            return found if n == 0 else float(np.sqrt(found * at))
        at = found
    return guess


def estimate_on_planes(infer: InferenceModel, planes, info: ModelInfo) -> float:
    """The object diameter of a stack, px: `estimate_diameter` on its most contrasted plane, without TTA."""
    best = planes.most_contrasted() if len(planes.indices) > 1 else planes.indices[0]
    return estimate_diameter(replace(infer, tta=False), planes.view(best), info)


def typical_diameter(infer: InferenceModel, plane, info: ModelInfo, diameter: float, blocks: int) -> float | None:
    """A typical object's diameter, px, for the seed split and the rejoin of the instance step on a big `plane`:
    the objects of its busiest crops, segmented at `diameter` (`measure_at`; `diameter` where none is found).
    None for a plane of at most `DEFAULT_BLOCK` px a side that is segmented as one block (`blocks`): it takes
    its own medians.

    Those rules compare with a typical seed and object. A plane's own medians are only known once it is
    segmented, so a plane cut into blocks was decided block by block, and its labels depended on the block size
    (AP@0.5 0.989-0.999 against the whole plane). One value measured on the plane first makes every block, and
    the plane segmented whole, decide alike. It is measured rather than taken from `diameter`, since a given
    diameter can be wrong (at 0.7x the estimate, mnfinder val scores 0.872 with the medians, 0.860 with this and
    0.829 with the disc of the given diameter). Small planes keep their medians: measuring costs about 0.025 s,
    15-20 % of a 512^2 plane (benchmarks/RESULTS.md, "Blocks that decide alike")."""
    if blocks == 1 and max(plane.shape) <= DEFAULT_BLOCK:
        return None
    found = measure_at(replace(infer, tta=False), plane, info.diameter, diameter, mask_threshold=info.mask_threshold)
    return float(found.diameter) if found.diameter else float(diameter)


#: The median bright level (`instances.object_brightness`) of the nuclei of an image normalised by its 1st and
#: 99.8th percentiles: 0.48 on mnfinder train (30 images: 0.34-0.74), 0.51 on mnfinder val, 0.54 on BBBC007.
NUCLEUS_LEVEL = 0.48
#: `segment` normalises again when the objects of its first pass sit below this median level, a quarter of
#: the usual: bright debris over 5 % of the field, or 3-5 % of nuclei 20-40x brighter than the rest, move the
#: high percentile onto themselves and leave the nuclei at 0.03-0.05. Chosen on the hard-case rows
#: (benchmarks/RESULTS.md, "Nuclei far below the normalised range"): at a third (0.16) the 5x condensed row
#: lost 0.007; at a quarter no row loses.
LEVEL_FLOOR = NUCLEUS_LEVEL / 4


#: `segment_iter` tells the user when the image's median pixel sits above this in its normalised range: the
#: background is brighter than the objects (dark nuclei on a bright field: an inverted image, brightfield, H&E),
#: which the model does not segment (mnfinder val inverted: AP@0.5 0.002, without a word). Every real image of
#: `../shared/data` and every hard-case row: 0.000-0.27, the synthetic rows up to 0.68; the same real images
#: inverted: 0.83-1.0 (benchmarks/RESULTS.md, "An inverted image").
BRIGHT_BACKGROUND = 0.75


def input_notes(planes) -> list[str]:
    """What to tell the user about the input before segmenting it: an image whose background is brighter than its
    objects (`BRIGHT_BACKGROUND`), and burned-in annotation left out (`normalize.overlay_mask`)."""
    notes = []
    if (median := planes.median_level()) > BRIGHT_BACKGROUND:
        notes.append(
            f"the background is brighter than the objects (median pixel at {median:.2f} of the range): the model "
            "segments bright nuclei on a dark background (fluorescence); if the nuclei are dark, invert the image"
        )
    if planes.overlay_pixels:
        notes.append(
            f"{planes.overlay_pixels} px of burned-in text or scale bar at the image's maximum were left out "
            "(taken as background)"
        )
    return notes


def renormalised(planes, level: float, by_frame: dict[int, float]):
    """(`planes` normalised again, or None; the dim time points -> their factor) for objects whose median bright
    level is `level` over the image and `by_frame[t]` in each time point.

    The nuclei sit far below the normalised range when bright debris or a few very bright condensed nuclei set the
    high percentile (`level` under `LEVEL_FLOOR`): the high level moves to them. A time-lapse's frames whose nuclei
    sit far below the rest (the stain bleaches over time) move on their own.
    """
    dim = {t: lv / NUCLEUS_LEVEL for t, lv in by_frame.items() if lv < LEVEL_FLOOR} if level >= LEVEL_FLOOR else {}
    if level >= LEVEL_FLOOR and not dim:
        return None, {}
    return (planes.with_high(level / NUCLEUS_LEVEL) if not dim else planes.with_high(frames=dim)), dim


#: `preview_levels` reads the objects of a window of this side (px at the model's scale) of a plane.
PREVIEW_SIDE = 512


def window_level(infer: InferenceModel, planes, idx: tuple[int, ...], info: ModelInfo, diameter: float) -> np.ndarray:
    """The bright levels (`object_brightness`) of the objects that the network finds in the busiest window of
    plane `idx`, segmented at `diameter` (untrimmed)."""
    scale = info.diameter / diameter
    side = max(32, round(PREVIEW_SIDE / scale))
    view = planes.view(idx)
    ((y0, x0),) = _busiest_windows(view, side)
    labels, sub = _segment_window(infer, view, (y0, x0, side), scale, info.diameter, info.mask_threshold)
    bright = object_brightness(labels, sub, int(labels.max()))
    return bright[np.isfinite(bright)]


def preview_levels(infer: InferenceModel, planes, info: ModelInfo, diameter: float) -> tuple[float, dict[int, float]]:
    """`renormalised`'s `level` and `by_frame`, read before a run from one window of a plane (`window_level`): of
    every time point's middle plane for a time-lapse, else of the most contrasted plane.

    A run written block by block (`bigrun`) is too large to run twice, as `segment_iter` does when its first pass
    finds the nuclei far below the range; it decides from this preview instead, at about 0.09 s a plane read."""
    if planes.frame_axis is None:
        return _median_level([window_level(infer, planes, planes.most_contrasted(), info, diameter)]), {}
    frames: dict[int, list[tuple[int, ...]]] = {}
    for idx in planes.indices:
        frames.setdefault(idx[planes.frame_axis], []).append(idx)
    bright = {t: window_level(infer, planes, idx[len(idx) // 2], info, diameter) for t, idx in frames.items()}
    return _median_level(list(bright.values())), {t: _median_level([b]) for t, b in bright.items()}


def renormalised_before(infer: InferenceModel, planes, info: ModelInfo, diameter: float):
    """`renormalised` from `preview_levels`, for runs too large to run twice (block runs to OME-Zarr). Yields a
    `Notice` when it moves the range; returns the planes to segment."""
    level, by_frame = preview_levels(infer, planes, info, diameter)
    again, dim = renormalised(planes, level, by_frame)
    if again is None:
        return planes
    yield Notice(renormalised_text(level, sorted(dim)), "info")
    return again


def renormalised_note(result: SegmentResult) -> str:
    """What the CLI's summary and the Segment widget's status say when `segment` ran its second pass, else ""."""
    return renormalised_text(
        result.extra.get("nucleus_level", LEVEL_FLOOR), result.extra.get("frames_normalised_again")
    )


def renormalised_text(level: float, frames) -> str:
    """`renormalised_note` for objects of median bright `level` and the dim time points `frames` (sorted)."""
    if level < LEVEL_FLOOR:
        return "normalised again (nuclei far below the image's range)"
    if frames:
        return f"{len(frames)} dim time point{'s' if len(frames) > 1 else ''} normalised again (from t={frames[0]})"
    return ""


#: On a CPU, what runs at once in threads, each with its share of torch's threads (1: nothing does). The
#: instance step is single-threaded, so one item's watershed runs while the other's network does:
#: - a stack's planes of one block each, this many at a time: 32 x 512^2 on 2 cores 2.85 -> 2.0 s;
#: - the blocks of a larger plane, a block's instance step while the next block's network runs
#:   (`jobs.overlapped`, with about one block's memory): 8192^2 in memory 28.1 -> 21.7 s;
#: - the size estimate's candidate sizes, this many at a time: 0.30 -> 0.23 s on a mnfinder image.
#: The labels are identical (benchmarks/RESULTS.md, "Two planes at a time").
AT_ONCE = 2


@dataclass
class _PlaneDone:
    labels: np.ndarray  # ids 1..n_objects
    n_objects: int
    scores: dict[int, float]
    bright: np.ndarray  # the objects' bright levels (`object_brightness`), finite ones
    probabilities: np.ndarray | None  # of its one block, with `measures`
    measures: dict[str, np.ndarray]


def _segment_plane(
    k, idx, lab, planes, infer, info, used_diameter, n_planes, probs_out, doubt_out, *, block, min_score, tile,
    overlap, batch_size, measures, merge_cuts, threads,
):  # fmt: skip
    """Segment plane `idx` (the `k`-th) into `lab`, ids from 1, block by block; neighbouring blocks share their
    seam tiles. With `threads`, a block's instance step runs in a thread while the network predicts the next
    block (`jobs.overlapped`). Yields `Progress`; returns a `_PlaneDone`."""
    scale = info.diameter / used_diameter
    plan = plan_blocks(planes.plane_shape, used_diameter, scale, block)
    typical = typical_diameter(infer, planes.view(idx), info, used_diameter, len(plan))
    if measures and len(plan) > 1:
        raise InputError("measures are computed on planes of one block only; pass a larger block")
    reuse = TileReuse(plan, infer, scale=scale, tile=tile, overlap=overlap)
    outputs, last = {}, {}

    def predict(b):
        t0 = time.perf_counter()
        gen = predict_block(planes, idx, plan, b, infer, scale=scale, tile=tile, overlap=overlap,
                            batch_size=batch_size, reuse=reuse)  # fmt: skip
        return (yield from relay(gen, lambda dt: block_progress(k, n_planes, b, len(plan), *dt))), t0

    def finish(b, value):
        out = finish_block(
            planes, idx, plan, b, *value, min_size=min_object_size(used_diameter), mask_threshold=info.mask_threshold,
            probabilities=probs_out is not None or doubt_out is not None or measures, merge_cuts=merge_cuts,
            outline_level=info.outline_level, diameter=used_diameter, typical=typical,
        )  # fmt: skip
        y0, y1, x0, x1 = plan.block(b).core
        lab[y0:y1, x0:x1] = out.labels  # local ids until the plane is stitched
        if out.probabilities is not None:
            if probs_out is not None:
                probs_out[idx][y0:y1, x0:x1] = 255 - out.probabilities[0]
            if doubt_out is not None:
                doubt_out[idx][y0:y1, x0:x1] = doubt_map(out.probabilities)
        last["probs"] = out.probabilities  # the benchmark times the scoring alone on them
        out.labels = out.probabilities = None  # the strips and sums are all stitching needs
        outputs[b] = out

    yield from overlapped(list(range(len(plan))), predict, finish, threads=threads and len(plan) > 1)
    stitched = stitch_blocks(plan, outputs, first_id=1, min_score=min_score)
    for b, lut in stitched.luts.items():
        y0, y1, x0, x1 = plan.block(b).core
        lab[y0:y1, x0:x1] = lut[lab[y0:y1, x0:x1]]
    last_probs = last["probs"] if measures else None
    # of the objects kept (one block: its probabilities are the plane's)
    found = object_measures(lab, last_probs, MEASURES)[1] if measures else {}
    # Every other row and column is plenty for a median; at most ~4 Mpx of a big plane.
    step = max(2 if used_diameter >= 12 else 1, int(np.ceil(np.sqrt(lab.size / 4e6))))
    bright = object_brightness(lab[::step, ::step], planes.load(idx, (slice(None, None, step),) * 2), int(lab.max()))
    return _PlaneDone(lab, stitched.n_objects, stitched.scores, bright[np.isfinite(bright)], last_probs, found)


def _segment_planes(
    planes, spatial, infer, info, used_diameter, n_planes, *, tile, overlap, batch_size, probabilities, doubt,
    measures, block, merge_cuts, min_score,
):  # fmt: skip
    """One pass of `segment_iter` over every plane. Returns (labels, probabilities, doubt, plane scores,
    measures, last probabilities, the median bright level of the objects of every plane: `NUCLEUS_LEVEL`
    where there are fewer than `MIN_OBJECTS`, and of a time-lapse's frames, {time point: level})."""
    # A single plane is returned as computed; stacks are assembled in one preallocated array.
    labels = np.zeros(spatial, np.int32) if n_planes > 1 else None
    probs_out = np.zeros(spatial, np.uint8) if probabilities else None
    doubt_out = np.zeros(spatial, np.uint8) if doubt else None
    one = partial(
        _segment_plane, planes=planes, infer=infer, info=info, used_diameter=used_diameter, n_planes=n_planes,
        probs_out=probs_out, doubt_out=doubt_out, block=block, min_score=min_score, tile=tile, overlap=overlap,
        batch_size=batch_size, measures=measures, merge_cuts=merge_cuts,
    )  # fmt: skip
    cpu = infer.device.type == "cpu" and torch.get_num_threads() > 1 and AT_ONCE > 1 and not measures
    one_block = len(plan_blocks(planes.plane_shape, used_diameter, info.diameter / used_diameter, block)) == 1
    at_once = AT_ONCE if cpu and n_planes > 1 and one_block else 1  # two planes' memory: a block each
    jobs = [
        one(k, idx, labels[idx] if labels is not None else np.zeros(planes.plane_shape, np.int32), threads=cpu)
        for k, idx in enumerate(planes.indices)
    ]
    if at_once > 1:
        done = yield from in_threads(jobs, at_once)
    else:
        done = []
        for job in jobs:
            done.append((yield from job))
    plane_scores: list[tuple[tuple[int, ...], int, float]] = []
    all_measures: dict[str, list[float]] = {}
    offset = 0
    for idx, plane in zip(planes.indices, done):
        if offset:  # ids unique across planes, in plane order
            plane.labels[plane.labels > 0] += offset
        plane_scores += [(tuple(int(i) for i in idx), i + offset, v) for i, v in plane.scores.items()]
        for name, values in plane.measures.items():
            all_measures.setdefault(name, []).extend(values.tolist())
        offset += plane.n_objects
    if labels is None:
        labels = done[0].labels
    frames: dict[int, list[np.ndarray]] = {}
    if planes.frame_axis is not None:
        for idx, plane in zip(planes.indices, done):
            frames.setdefault(idx[planes.frame_axis], []).append(plane.bright)
    by_frame = {t: _median_level(b) for t, b in frames.items()}
    level = _median_level([plane.bright for plane in done])
    return labels, probs_out, doubt_out, plane_scores, all_measures, done[-1].probabilities, level, by_frame


def _median_level(bright: list[np.ndarray]) -> float:
    """The median of the objects' bright levels, `NUCLEUS_LEVEL` where there are fewer than `MIN_OBJECTS`."""
    values = np.concatenate(bright)
    return float(np.median(values)) if values.size >= MIN_OBJECTS else NUCLEUS_LEVEL


def block_progress(
    plane: int, planes: int, block: int, blocks: int, done: int, total: int, message: str = ""
) -> Progress:
    """Progress at tile `done` of `total` in block `block` of `blocks` of a plane (tiles as is for one block;
    blocks differ in size, so with several each counts as 1000 steps)."""
    if blocks == 1:
        return Progress(plane, planes, done, total, message)
    return Progress(
        plane, planes, block * 1000 + 1000 * done // total, blocks * 1000, message or f"block {block + 1}/{blocks}"
    )


def segment_iter(
    image,
    model: UNet,
    *,
    device: str | torch.device = "auto",
    diameter: float | None = None,
    channel: int | str | None = None,
    axes: str | None = None,
    tile: int | None = None,
    overlap: int = 32,
    batch_size: int | None = None,
    link_iou: float | None = None,
    probabilities: bool = False,
    precision: str = "auto",
    tta: bool = False,
    doubt: bool = False,
    measures: bool = False,
    block: int | None = DEFAULT_BLOCK,
    merge_cuts: bool = True,
    min_score: float | None = None,
) -> Generator[Progress, None, SegmentResult]:
    """Segment a 2D image or a stack, plane by plane. See `napari_unet.segment` for the arguments.

    Yields:
        `Progress` after every batch of tiles.

    Returns:
        `SegmentResult` with int32 labels of the image's spatial shape (channel axis removed);
        ids are unique across planes, and shared by linked objects when `link_iou` is set; every
        object's confidence score; with `doubt`, the per-pixel doubt map; with `measures`, every
        candidate measure of `core.scores.object_measures` in ``extra["measures"]`` (benchmarks).
    """
    if diameter is not None and not (np.isfinite(diameter) and diameter > 0):
        raise InputError(f"diameter must be a positive number of pixels, got {diameter}")
    dev = select_device(device)
    info = model_info(model)
    min_score = info.min_score if min_score is None else min_score
    spatial, out_axes, planes = iter_planes(image, axes, channel)
    n_planes = int(np.prod(spatial[:-2])) if len(spatial) > 2 else 1
    for note in input_notes(planes):
        yield Notice(note)
    infer = InferenceModel.prepare(model, dev, precision, tta=tta)
    used_diameter = diameter
    if used_diameter is None:  # once per stack, on the plane where objects are sharpest
        yield Progress(0, n_planes, 0, 1, "estimating object size")
        used_diameter = estimate_on_planes(infer, planes, info)
    run = partial(
        _segment_planes, spatial=spatial, infer=infer, info=info, used_diameter=used_diameter, n_planes=n_planes,
        tile=tile, overlap=overlap, batch_size=batch_size, probabilities=probabilities, doubt=doubt,
        measures=measures, block=block, merge_cuts=merge_cuts, min_score=min_score,
    )  # fmt: skip
    labels, probs_out, doubt_out, plane_scores, all_measures, last_probs, level, by_frame = yield from run(planes)
    again, dim = renormalised(planes, level, by_frame)
    if again is not None:
        yield Progress(0, n_planes, 0, 1, "the nuclei are far below the image's range: normalising again")
        labels, probs_out, doubt_out, plane_scores, all_measures, last_probs, *_ = yield from run(again)
    if link_iou is not None and labels.ndim > 2:
        flat = labels.reshape(-1, *labels.shape[-2:])
        linked = link_planes(flat, link_iou)
        fg = flat > 0
        new_id = np.zeros(int(flat.max()) + 1, np.int64)
        new_id[flat[fg]] = linked[fg]  # every old id has exactly one new id
        plane_scores = [(z, int(new_id[i]), v) for z, i, v in plane_scores]
        labels = linked.reshape(labels.shape)
    scores: dict[int, float] = {}
    for _, i, v in plane_scores:
        scores[i] = min(v, scores.get(i, v))
    extra = {"channel": planes.channel, "nucleus_level": level, "frames_normalised_again": sorted(dim)}
    if measures:
        extra["measures"] = {k: np.asarray(v) for k, v in all_measures.items()}
        extra["class_probabilities"] = last_probs
    return SegmentResult(
        labels.reshape(spatial), describe(dev), float(used_diameter or info.diameter), probs_out, out_axes, extra,
        scores=scores, plane_scores=plane_scores, doubt=doubt_out,
    )  # fmt: skip

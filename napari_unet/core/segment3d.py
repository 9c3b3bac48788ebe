"""Z-stacks as 3D objects: the 2D network's class probabilities fused into a volume, then a 3D watershed.

Two ways to get the volume of probabilities, measured against each other and against linking 2D
objects plane to plane in `benchmarks/segment_3d.py`:

* ``"xy"``: the network on every XY plane (the cost of plane-by-plane segmentation);
* ``"xyz"``: also on XZ and YZ slices of the stack resampled to isotropic voxels (Z stretched by the
  anisotropy), every `stride` px (the ones between interpolated), the three views averaged, as
  Cellpose does with its flows: context across Z at about 3x the plane-by-plane cost.

Instances grow from seeds (3D connected regions of very confident interior) through the foreground by
a seeded watershed over the interior probability, so the boundary class separates touching nuclei in
3D as it does in 2D; objects smaller than a tenth of a typical nucleus's volume are dropped.

A stack is segmented in blocks with halos of two diameters, in Y and X as planes are and, for a deep
stack, in Z too (`StackPlan`), stitched across every seam by `core.blockwise`: working memory follows
the block, not the stack (`segment_3d_iter` returns the labels of the whole stack in memory, 4 bytes a voxel;
`bigrun.segment_to_zarr_iter` with ``mode="3d"`` writes them block by block into an OME-Zarr).
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from .blockwise import MIN_HALO_NET_PX, BlockOutput, BlockPlan, block_output, plan_blocks, square_sums, stitch_blocks
from .device import describe, select_device
from .errors import InputError, ThinStackError
from .instances import BACKGROUND, INTERIOR, label_areas, remove_small
from .io import ANISOTROPY_RANGE
from .jobs import Notice, drain, relay
from .normalize import iter_planes
from .predict import InferenceModel, predict_plane
from .scores import doubt_map
from .segment import Progress, SegmentResult, estimate_on_planes, input_notes, model_info
from .tiling import linear_taps

FUSIONS = ("xy", "xyz")
#: Seeds are the 3D connected regions of fused interior probability above this (chosen on synthetic
#: stacks of other seeds than the benchmark's: benchmarks/RESULTS.md, "Z-stacks as 3D objects").
SEED_THRESHOLD = 0.9
#: A seed under this share of the smallest object kept (`min_size`, a tenth of a typical nucleus) is dropped
#: when its region of confident interior holds a larger seed: an island of interior over `SEED_THRESHOLD` at
#: the edge of a nucleus otherwise grew into an object of its own, and cut a box-shaped notch out of the demo
#: stack's nuclei where the score floor dropped it (benchmarks/RESULTS.md, "Small seeds in 3D").
MIN_SEED = 0.5
#: Block side in Y and X, px: about 50 bytes a voxel of working memory, so a 32-plane block of
#: 512^2 with its halos (~700^2) needs about 0.8 GB (benchmarks/segment_3d.py measures it).
BLOCK_3D = 512
#: Block depth, planes, for a block of BLOCK_3D^2: deeper stacks are cut in Z too, with a halo of two
#: diameters in Z (~35 planes each side at anisotropy 2). By default (``block_z="auto"``) a narrower block
#: gets as many more planes as keep its core within the same BLOCK_3D^2 x BLOCK_3D_Z voxels, so a stack
#: narrower than BLOCK_3D pays for fewer Z halos at the same working memory (benchmarks/RESULTS.md).
BLOCK_3D_Z = 64


@dataclass(frozen=True)
class StackPlan:
    """How a (Z, Y, X) stack is cut: `slabs` of `z_core` planes (the last one smaller), each cut in Y and X as
    `plane` cuts a plane. Block ``index`` is block ``index % len(plane)`` of slab ``index // len(plane)``."""

    plane: BlockPlan
    depth: int
    z_core: int
    z_halo: int
    z_strip: int  # half-depth of the matching strip across a Z seam, planes

    @property
    def slabs(self) -> int:
        return math.ceil(self.depth / self.z_core)

    def __len__(self) -> int:
        return self.slabs * len(self.plane)

    def z_range(self, slab: int) -> tuple[int, int, int, int]:
        """(z0, z1) of the slab's core and (rz0, rz1) of its region."""
        z0, z1 = slab * self.z_core, min(self.depth, (slab + 1) * self.z_core)
        return z0, z1, max(0, z0 - self.z_halo), min(self.depth, z1 + self.z_halo)

    def core(self, index: int) -> tuple[slice, slice, slice]:
        """The (Z, Y, X) slices of block `index`'s core in the stack."""
        slab, b = divmod(index, len(self.plane))
        z0, z1, _, _ = self.z_range(slab)
        y0, y1, x0, x1 = self.plane.block(b).core
        return slice(z0, z1), slice(y0, y1), slice(x0, x1)

    @property
    def seam_reach(self) -> int:
        """How far ahead, in block indices, a block's seams reach (a slab)."""
        return len(self.plane)

    def seams(self, index: int) -> list[tuple[str, int, str]]:
        """As `BlockPlan.seams`, and the seam with the same block of the next slab."""
        slab, b = divmod(index, len(self.plane))
        base = slab * len(self.plane)
        out = [(f, base + j, o) for f, j, o in self.plane.seams(b)]
        return out + [("back", index + len(self.plane), "front")] if slab + 1 < self.slabs else out


def plan_stack(
    shape: tuple[int, int, int],
    diameter: float,
    scale: float,
    anisotropy: float,
    block: int | None,
    block_z: int | str | None,
) -> StackPlan:
    """Cut a (Z, Y, X) stack: Y and X as `blockwise.plan_blocks` does, Z into near-equal slabs of at most
    `block_z` planes (None: one slab; ``"auto"``: as many as keep a core within BLOCK_3D^2 x BLOCK_3D_Z
    voxels), with a halo of two diameters (and the network's context) in Z."""
    Z, Y, X = shape
    plane = plan_blocks((Y, X), diameter, scale, block)
    if block_z == "auto":
        block_z = max(BLOCK_3D_Z, BLOCK_3D * BLOCK_3D * BLOCK_3D_Z // math.prod(plane.core_shape))
    z_halo = int(math.ceil(max(2 * diameter, MIN_HALO_NET_PX / scale) / anisotropy))
    z_strip = max(2, int(math.ceil(diameter / anisotropy)))
    if block_z is None or Z <= block_z:
        return StackPlan(plane, Z, Z, z_halo, z_strip)
    if block_z < 2 * z_strip:
        raise InputError(f"block_z ({block_z} planes) must be at least twice the Z strip ({z_strip} planes)")
    return StackPlan(plane, Z, math.ceil(Z / math.ceil(Z / block_z)), z_halo, z_strip)


def labels_from_probabilities_3d(
    probs: np.ndarray, *, min_size: int, seed_threshold: float = SEED_THRESHOLD, mask_threshold: float = 0.5
) -> np.ndarray:
    """Seeded 3D watershed on (3, Z, Y, X) uint8 probabilities; int32 labels 1..N.

    Seeds are the connected regions of very confident interior (the cores of two touching nuclei stay
    apart there, where at 0.5 they often touch across planes), less the islands under `MIN_SEED` x `min_size`
    that share their region of confident interior (> 0.5) with a larger seed; a region without a seed gets one
    of its own (a dim nucleus). They grow over the interior probability into the foreground, so the boundary
    class separates touching nuclei as in 2D.
    """
    interior = probs[INTERIOR]
    seeds, n = ndi.label(interior > seed_threshold * 255)
    core = interior > 127
    regions, m = ndi.label(core)
    seeded = np.empty(0, np.int64)  # the regions that keep a seed
    if n:
        size = label_areas(seeds, n)[1:]
        region = np.asarray(ndi.maximum(regions, seeds, np.arange(1, n + 1)), np.int64)  # each seed's region
        largest = np.zeros(m + 1, np.int64)
        np.maximum.at(largest, region, size)
        island = (size < MIN_SEED * min_size) & (size < largest[region])
        if island.any():  # in place: a byte a voxel for the mask, not a second int32 volume
            seeds[np.isin(seeds, np.flatnonzero(island) + 1)] = 0
        seeded = region[~island]
    missing = np.setdiff1d(np.arange(1, m + 1), seeded)
    if missing.size:
        extra = np.isin(regions, missing)
        seeds[extra] = regions[extra] + n
    del regions
    mask = (probs[BACKGROUND] < (1.0 - mask_threshold) * 255) | core
    labels = watershed((255 - interior).astype(np.int16), seeds, mask=mask)
    return fill_plane_holes(remove_small(labels.astype(np.int32, copy=False), min_size))


#: Connectivity within an XY plane only: `fill_plane_holes` fills each plane's holes, which include
#: every cavity enclosed in 3D.
_XY = ndi.generate_binary_structure(2, 1)[None]


def fill_plane_holes(labels: np.ndarray) -> np.ndarray:
    """Give each object the background it encloses in an XY plane, in place; returns `labels`.

    Dark nucleoli inside a nucleus fall below the fused foreground in the side views (their resampled planes
    blur them with the dark gaps between nuclei), so 3D objects had holes that 2D ones do not: 53 object
    planes, 1,297 voxels, of the cells3d sample stack (benchmarks/RESULTS.md). Other objects stay as they are.
    """
    for i, box in enumerate(ndi.find_objects(labels), 1):
        if box is not None:
            part = labels[box]
            obj = part == i
            part[ndi.binary_fill_holes(obj, structure=_XY) & ~obj & (part == 0)] = i
    return labels


def _fill_between(part: np.ndarray, axis: int, done: np.ndarray) -> None:
    """Linearly interpolate, in place and slice by slice, the slices of `part` along `axis` not in `done` (sorted)."""
    view = np.moveaxis(part, axis, 0)  # a view: writing to it writes `part`
    for lo, hi in zip(done[:-1], done[1:]):
        a, b = view[lo].astype(np.float32), view[hi].astype(np.float32)
        for k in range(lo + 1, hi):
            f = (k - lo) / (hi - lo)
            view[k] = np.round(a * (1 - f) + b * f).astype(part.dtype)


def _resample_z(volume: np.ndarray, n_out: int) -> np.ndarray:
    """Linear resampling along axis -3 (Z) to `n_out` planes, pixel centres aligned."""
    i0, i1, f = linear_taps(volume.shape[-3], n_out, 0, n_out)
    f = f[:, None, None]
    return volume[..., i0, :, :] * (1 - f) + volume[..., i1, :, :] * f


def segment_3d_iter(
    image,
    model,
    *,
    anisotropy: float = 1.0,
    fusion: str = "xy",
    device: str | torch.device = "auto",
    diameter: float | None = None,
    channel: int | str | None = None,
    axes: str | None = None,
    tile: int | None = None,
    overlap: int = 32,
    batch_size: int | None = None,
    precision: str = "auto",
    tta: bool = False,
    min_score: float | None = None,
    block: int | None = BLOCK_3D,
    block_z: int | str | None = "auto",
    doubt: bool = False,
    probabilities: bool = False,
) -> Generator[Progress, None, SegmentResult]:
    """Segment a ZYX stack into 3D objects. Yields `Progress`; returns a `SegmentResult` (labels Z, Y, X).

    Args:
        anisotropy: Z step / XY pixel size (from the voxel size), at least 1 (a stack with coarser XY
            than Z is not supported).
        fusion: ``"xy"`` or ``"xyz"`` (see the module docstring).
        min_score: Objects scored below `core.scores.score_floor` of all the stack's scores are dropped, but for
            bright ones (`core.scores.kept_objects`; None: the model's `ModelInfo.min_score`).
        block: Stacks wider than this (px, in Y or X) are segmented in columns of blocks,
            with halos of two diameters, and stitched as planes are (`core.blockwise`): memory is bounded
            by the block, not the stack. None: one block.
        block_z: Stacks deeper than this (planes) are cut in Z too (`StackPlan`), with halos of two diameters
            in Z; None: all of Z in each block; ``"auto"``: BLOCK_3D_Z planes for a block of BLOCK_3D^2,
            more for a narrower one (`plan_stack`).
        doubt: Also return the per-voxel doubt map of the fused probabilities (`SegmentResult.doubt`).
        probabilities: Also return the fused foreground probability (uint8, 255 = 1; `SegmentResult.probabilities`).
        Other arguments: as `core.segment.segment_iter`.
    """
    if fusion not in FUSIONS:
        raise InputError(f"fusion must be one of {', '.join(FUSIONS)}, got '{fusion}'")
    check_anisotropy(anisotropy)
    dev = select_device(device)
    info = model_info(model)
    min_score = info.min_score if min_score is None else min_score
    spatial, out_axes, planes = iter_planes(image, axes, channel)
    if out_axes != "ZYX":
        raise InputError(f"3D objects need a ZYX stack, got axes '{out_axes}' (segment each time point on its own)")
    Z, Y, X = spatial
    for note in input_notes(planes):
        yield Notice(note)
    infer = InferenceModel.prepare(model, dev, precision, tta=tta)
    if diameter is None:
        yield Progress(0, 1, 0, 1, "estimating object size")
        diameter = estimate_on_planes(infer, planes, info)
    check_depth(Z, anisotropy, diameter)
    scale = info.diameter / diameter
    plan = plan_stack((Z, Y, X), diameter, scale, anisotropy, block, block_z)
    outputs = {}
    doubt_out = np.zeros(spatial, np.uint8) if doubt else None
    probs_out = np.zeros(spatial, np.uint8) if probabilities else None
    params = block_params(diameter, scale, anisotropy, info.mask_threshold, fusion=fusion, tile=tile,
                          overlap=overlap, batch_size=batch_size, probabilities=doubt or probabilities)  # fmt: skip
    for i in range(len(plan)):
        where = f"block {i + 1}/{len(plan)}" if len(plan) > 1 else ""
        outputs[i] = yield from relay(
            segment_3d_block_iter(planes, (), plan, i, infer, **params),
            lambda dt, i=i, where=where: Progress(0, 1, i * 1000 + 1000 * dt[0] // dt[1], len(plan) * 1000, where),
        )
        if outputs[i].probabilities is not None:
            if doubt:
                doubt_out[plan.core(i)] = doubt_map(outputs[i].probabilities)
            if probabilities:
                probs_out[plan.core(i)] = 255 - outputs[i].probabilities[0]
            outputs[i].probabilities = None
    stitched = stitch_blocks(plan, outputs, min_score=min_score)
    labels = np.zeros(spatial, np.int32)
    for i, lut in stitched.luts.items():
        labels[plan.core(i)] = lut[outputs[i].labels]
    return SegmentResult(
        labels, describe(dev), float(diameter), probs_out, out_axes,
        {"channel": planes.channel, "fusion": fusion, "anisotropy": anisotropy, "blocks": len(plan),
         "slabs": plan.slabs},
        scores=stitched.scores, plane_scores=[((), i, v) for i, v in stitched.scores.items()], doubt=doubt_out,
    )  # fmt: skip


#: `check_depth`: 3D objects need a stack at least this many nucleus diameters deep. Measured (bundled model):
#: the sample's 512^2 plane repeated in Z at anisotropy 1, 3 planes (0.1 diameters) gave 39 3D objects where
#: the plane holds 59, 8 planes (0.27) 57; 3 planes of the cells3d sample (0.07) gave 0 where they hold 16; the
#: cells3d demo stack (24 planes, 0.56) gives its 13 nuclei.
MIN_DEPTH = 0.25


def check_depth(planes: int, anisotropy: float, diameter: float) -> None:
    """Refuse 3D objects in a stack less deep than `MIN_DEPTH` nuclei (`planes` x `anisotropy` px against
    `diameter` px): its side views are too thin for the network, and the objects thin out or vanish."""
    depth = planes * anisotropy
    if depth < MIN_DEPTH * diameter:
        raise ThinStackError(
            f"the stack is {planes} planes deep ({depth:.0f} px at anisotropy {anisotropy:g}), under a quarter "
            f"of a nucleus ({diameter:.0f} px): segment its planes one by one (untick 3D objects, --2d, mode='2d')"
        )


#: What the CLI's summary and the Segment widget's status say after `or_planes` fell back to planes.
THIN_NOTE = "planes one by one (too few planes for 3D objects)"


def or_planes(job, mode: dict, planes: dict | None = None) -> Generator:
    """`job(mode)`, a segmentation job asked for 3D objects by default (a file's voxel size, the widget's
    default tick), or where the stack is too thin for them (`check_depth`, raised before anything is written)
    `job(planes)`: its planes one by one, with ``extra["thin"]`` set. 3D objects asked for explicitly are refused."""
    try:
        return (yield from job(mode))
    except ThinStackError:
        result = yield from job(planes or {})
        result.extra["thin"] = True
        return result


def check_anisotropy(anisotropy: float) -> None:
    lo, hi = ANISOTROPY_RANGE
    if not (np.isfinite(anisotropy) and lo <= anisotropy <= hi):
        raise InputError(f"anisotropy (Z step / XY pixel size) must be from {lo:g} to {hi:g}, got {anisotropy}")


def block_params(diameter, scale, anisotropy, mask_threshold, **options) -> dict:
    """The keyword arguments of `segment_3d_block_iter` for a stack of objects `diameter` px across."""
    voxel_volume = np.pi / 6 * diameter**3 / anisotropy  # a typical nucleus, in voxels
    return dict(scale=scale, anisotropy=anisotropy, min_size=max(8, int(0.1 * voxel_volume)),
                mask_threshold=mask_threshold, **options)  # fmt: skip


def segment_3d_block_iter(
    planes,
    plane: tuple[int, ...],
    plan: StackPlan,
    index: int,
    infer,
    *,
    scale: float,
    anisotropy: float,
    min_size: int,
    mask_threshold: float,
    fusion: str = "xyz",
    tile: int | None = None,
    overlap: int = 32,
    batch_size: int | None = None,
    probabilities: bool = False,
) -> Generator[tuple[int, int], None, BlockOutput]:
    """Segment block `index` of a stack (`planes`, a `normalize.Planes` of a ZYX stack; `plane` is ``()``):
    its region is read plane by plane, its views predicted and fused, its 3D instances grown. Yields (views
    done, total); returns its `BlockOutput` (with its core's fused probabilities when `probabilities`).
    The same signature as `blockwise.segment_block_iter`, so that `bigrun` runs either."""
    t0 = time.perf_counter()
    slab, b = divmod(index, len(plan.plane))
    blk = plan.plane.block(b)
    z0, z1, rz0, rz1 = plan.z_range(slab)
    ry0, ry1, rx0, rx1 = blk.region
    window = (slice(ry0, ry1), slice(rx0, rx1))
    volume = np.stack([planes.load(plane + (z,), window) for z in range(rz0, rz1)])
    probs = yield from _fused_probabilities(volume, infer, scale, anisotropy, fusion, tile, overlap, batch_size)
    del volume
    lab = labels_from_probabilities_3d(probs, min_size=min_size, mask_threshold=mask_threshold)
    s = plan.z_strip
    z_strips = {face: slice(z - s - rz0, z + s - rz0) for face, z, has in
                (("front", z0, slab > 0), ("back", z1, slab + 1 < plan.slabs)) if has}  # fmt: skip
    out = block_output(plan.plane, blk, lab, probs, probabilities=probabilities,
                       z_core=slice(z0 - rz0, z1 - rz0), z_strips=z_strips)  # fmt: skip
    # Each object's intensities, read again plane by plane: the region's volume was let go for the probabilities.
    cy0, cy1, cx0, cx1 = blk.core
    core = (slice(cy0, cy1), slice(cx0, cx1))
    out.bright = sum(square_sums(out.labels[z - z0], planes.load(plane + (z,), core), out.n) for z in range(z0, z1))
    out.index, out.seconds = index, time.perf_counter() - t0
    return out


def _fused_probabilities(volume, infer, scale, anisotropy, fusion, tile, overlap, batch_size):
    """uint8 (3, Z, h, w) probabilities of a (Z, h, w) volume: its XY planes, and with ``"xyz"`` its XZ / YZ
    slices at cubic voxels, averaged. Yields (views done, total)."""
    Z, Y, X = volume.shape
    zi = max(1, int(round(Z * anisotropy)))
    # XZ and YZ slices every `stride` px, the ones between interpolated: measured without loss, and it
    # keeps the two side views at about twice the XY view's cost whatever the anisotropy.
    stride = max(2, int(round(anisotropy)))
    sampled = {"xy": np.arange(Z), "xz": np.unique(np.r_[0:Y:stride, Y - 1]), "yz": np.unique(np.r_[0:X:stride, X - 1])}
    views = [(v, sampled[v]) for v in (("xy", "xz", "yz") if fusion == "xyz" else ("xy",))]
    total, done = sum(len(ks) for _, ks in views), 0
    acc = np.zeros((3, Z, Y, X), np.float32)
    iso = _resample_z(volume, zi) if fusion == "xyz" else None
    for view, ks in views:
        part = np.zeros((3, Z if view == "xy" else zi, Y, X), np.uint8)
        for k in ks:
            if view == "xy":
                part[:, k] = _predict(infer, volume[k], scale, tile, overlap, batch_size)
            elif view == "xz":
                part[:, :, k, :] = _predict(infer, iso[:, k, :], scale, tile, overlap, batch_size)
            else:
                part[:, :, :, k] = _predict(infer, iso[:, :, k], scale, tile, overlap, batch_size)
            done += 1
            yield done, total
        if view == "xy":
            acc += part
        else:
            _fill_between(part, 2 if view == "xz" else 3, ks)
            for c in range(3):  # channel by channel: one float copy of a channel at a time
                acc[c] += _resample_z(part[c].astype(np.float32), Z)
        del part
    del iso
    return np.clip(acc / len(views) + 0.5, 0, 255).astype(np.uint8)


def _predict(infer, plane, scale, tile, overlap, batch_size) -> np.ndarray:
    """The network's uint8 probabilities (3, h, w) of one 2D view."""
    view = np.ascontiguousarray(plane)
    return drain(predict_plane(infer, view, scale=scale, tile=tile, overlap=overlap, batch_size=batch_size))

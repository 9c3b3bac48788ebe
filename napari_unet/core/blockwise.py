"""The one big-data engine: a plane in blocks with halos, instances per block, stitched global ids.

A plane is cut into a grid of *cores* that tile it exactly; each block is segmented on its core
grown by a halo of at least two object diameters, so every object that touches the core is seen
whole and with context. A block keeps only its core: every output pixel comes from exactly one
block, so objects can never overlap or be doubled. An object cut by a seam is in the cores of two
(or four) blocks; each of them saw it whole, so their two versions overlap almost exactly in a strip
across the seam, and they are merged there (overlap > half the smaller one's part of the strip).
Merges are the connected components of that graph (scipy), and the final ids are numbered in
block order, so the labels do not depend on the order in which blocks finish.

A block's work is a pure function of the picklable `BlockJob` (the planes, the prepared network
settings, the block), so the same code runs in this process, or on dask.distributed workers. The
result of a block is small beyond its core labels (strips, per-object sums), which is what lets a
run record finished blocks and resume (`core.bigrun`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .instances import label_areas, labels_from_probabilities, refine_outlines
from .scores import certainty_map, kept_objects

#: Default block core, px: ~4.8 Mpx a block with its halo (about 150 MB of working memory, and
#: about 13 % of the pixels predicted twice at the default halo).
DEFAULT_BLOCK = 2048
#: The halo is at least this many network pixels (the network's context), and two object diameters.
MIN_HALO_NET_PX = 96
FACES = ("top", "bottom", "left", "right")


@dataclass(frozen=True)
class Block:
    """One block of a plane: its core (what it writes) and its region (what it reads), (y0, y1, x0, x1)."""

    index: int
    row: int
    col: int
    core: tuple[int, int, int, int]
    region: tuple[int, int, int, int]


@dataclass(frozen=True)
class BlockPlan:
    """How one (H, W) plane is cut: `rows` x `cols` cores of `core_shape` (the last ones smaller)."""

    shape: tuple[int, int]
    core_shape: tuple[int, int]
    halo: int
    strip: int  # half-width of the matching strip across a seam, px

    @property
    def rows(self) -> int:
        return math.ceil(self.shape[0] / self.core_shape[0])

    @property
    def cols(self) -> int:
        return math.ceil(self.shape[1] / self.core_shape[1])

    def __len__(self) -> int:
        return self.rows * self.cols

    def block(self, index: int) -> Block:
        r, c = divmod(index, self.cols)
        (H, W), (bh, bw), h = self.shape, self.core_shape, self.halo
        y0, x0 = r * bh, c * bw
        y1, x1 = min(H, y0 + bh), min(W, x0 + bw)
        return Block(index, r, c, (y0, y1, x0, x1), (max(0, y0 - h), min(H, y1 + h), max(0, x0 - h), min(W, x1 + h)))

    def blocks(self) -> list[Block]:
        return [self.block(i) for i in range(len(self))]

    def core(self, index: int) -> tuple[slice, slice]:
        """The (Y, X) slices of block `index`'s core in the plane."""
        y0, y1, x0, x1 = self.block(index).core
        return slice(y0, y1), slice(x0, x1)

    @property
    def seam_reach(self) -> int:
        """How far ahead, in block indices, a block's seams reach (a block row)."""
        return self.cols

    def neighbour(self, b: Block, face: str) -> int | None:
        r, c = b.row + {"top": -1, "bottom": 1}.get(face, 0), b.col + {"left": -1, "right": 1}.get(face, 0)
        return r * self.cols + c if 0 <= r < self.rows and 0 <= c < self.cols else None

    def seams(self, index: int) -> list[tuple[str, int, str]]:
        """Block `index`'s seams with its next neighbours: (its face, the neighbour, the neighbour's face)."""
        b = self.block(index)
        return [(f, j, o) for f, o in (("right", "left"), ("bottom", "top")) if (j := self.neighbour(b, f)) is not None]


def plan_blocks(shape: tuple[int, int], diameter: float, scale: float, block: int | None = DEFAULT_BLOCK) -> BlockPlan:
    """Cut a plane of `shape` into near-equal cores of at most `block` px (None: one block).

    The halo is two object `diameter`s and at least `MIN_HALO_NET_PX` network pixels (`scale` is
    network px per image px); the matching strip reaches one diameter to each side of a seam.
    """
    H, W = shape
    halo = int(math.ceil(max(2 * diameter, MIN_HALO_NET_PX / scale)))
    if block is None or (H <= block and W <= block):
        return BlockPlan((H, W), (H, W), halo, 0)
    if block < 2 * halo:
        raise ValueError(f"block ({block} px) must be at least twice the halo ({halo} px)")
    core = (math.ceil(H / math.ceil(H / block)), math.ceil(W / math.ceil(W / block)))
    return BlockPlan((H, W), core, halo, max(2, int(math.ceil(diameter))))


@dataclass
class BlockOutput:
    """What one block found: core labels with local ids 1..n, strips across its seams, per-object sums."""

    index: int
    labels: np.ndarray  # int32 (core h, core w), local ids 1..n
    n: int
    strips: dict[str, np.ndarray] = field(default_factory=dict)  # face -> local ids (0 = not this core's)
    area: np.ndarray | None = None  # (n + 1,) core pixels of each local id
    certainty: np.ndarray | None = None  # (n + 1,) sum of certainty over those pixels
    probabilities: np.ndarray | None = None  # uint8 (3, core h, core w), when asked
    seconds: float = 0.0
    #: (n + 1,) sum of the squared normalised intensity over those pixels (None: not read; `scores.kept_objects`)
    bright: np.ndarray | None = None


def _strip_window(plan: BlockPlan, b: Block, face: str) -> tuple[slice, slice]:
    """The strip across `face` of block `b`, in region coordinates: the core's rows (or columns) x 2 strip."""
    (y0, y1, x0, x1), (ry0, _, rx0, _), s = b.core, b.region, plan.strip
    if face in ("left", "right"):
        x = x0 if face == "left" else x1
        return slice(y0 - ry0, y1 - ry0), slice(x - s - rx0, x + s - rx0)
    y = y0 if face == "top" else y1
    return slice(y - s - ry0, y + s - ry0), slice(x0 - rx0, x1 - rx0)


class TileReuse:
    """Network tiles that neighbouring blocks of one plane share, predicted once each.

    A block predicts the tiles of the whole plane's grid that reach into it (halo included), so the tiles
    along a seam belong to two or four blocks: with 2048 px blocks of a 4096^2 plane, 100 tile predictions
    instead of the plane's 81. Run the blocks in index order with one `TileReuse` as `tiling.stitch`'s
    cache: it keeps only the tiles that another block reads, each until the last block that reads it is
    done, so at most about two rows of tiles across the plane are held (float32, 3 x 480^2 each at the
    default tile). A plan of one block keeps nothing. With `blocks`, only those blocks (in that order) run:
    what a dask task of consecutive blocks shares.
    """

    def __init__(self, plan: BlockPlan, infer, *, scale: float, tile: int | None = None, overlap: int = 32,
                 blocks: list[int] | None = None):  # fmt: skip
        from .predict import window_tiles

        self.tiles: dict[tuple[int, int], np.ndarray] = {}
        self.last: dict[tuple[int, int], int] = {}  # the last block that reads each tile
        self.shared: set[tuple[int, int]] = set()  # the tiles more than one block reads
        for i in range(len(plan)) if blocks is None else blocks:
            for key in window_tiles(infer, plan.shape, plan.block(i).region, scale=scale, tile=tile,
                                    overlap=overlap):  # fmt: skip
                if key in self.last:
                    self.shared.add(key)
                self.last[key] = i

    def __contains__(self, key) -> bool:
        return key in self.tiles

    def __getitem__(self, key) -> np.ndarray:
        return self.tiles[key]

    def update(self, predicted: dict) -> None:
        """Keep the predicted tiles that a later block reads."""
        self.tiles.update((k, v) for k, v in predicted.items() if k in self.shared)

    def done(self, index: int) -> None:
        """Drop the tiles that no block after `index` reads."""
        for key in [k for k in self.tiles if self.last[k] <= index]:
            del self.tiles[key]


def segment_block_iter(
    planes,
    plane: tuple[int, ...],
    plan: BlockPlan,
    index: int,
    infer,
    *,
    scale: float,
    min_size: int,
    mask_threshold: float,
    tile: int | None = None,
    overlap: int = 32,
    batch_size: int | None = None,
    probabilities: bool = False,
    merge_cuts: bool = True,
    reuse: TileReuse | None = None,
    outline_level: float = 0.0,
    diameter: float = 0.0,
    typical: float | None = None,
) -> Generator[tuple[int, int], None, BlockOutput]:
    """Segment block `index` of plane `plane` of `planes` (`normalize.Planes`). Yields (tiles done, total).

    `reuse`: the tiles this plane's blocks share, when they run one after another in this process.
    `outline_level`: trim each object's dim rim (`instances.refine_outlines`, objects `diameter` px across).
    `typical`: a typical object's diameter for the seed split and the rejoin (`segment.typical_diameter`; None:
    the block's own medians). Its two halves, `predict_block` and `finish_block`, also run apart (`jobs.overlapped`)."""
    t0 = time.perf_counter()
    probs = yield from predict_block(
        planes, plane, plan, index, infer, scale=scale, tile=tile, overlap=overlap, batch_size=batch_size, reuse=reuse
    )
    return finish_block(
        planes, plane, plan, index, probs, t0, min_size=min_size, mask_threshold=mask_threshold,
        probabilities=probabilities, merge_cuts=merge_cuts, outline_level=outline_level, diameter=diameter,
        typical=typical,
    )  # fmt: skip


def predict_block(
    planes, plane, plan: BlockPlan, index: int, infer, *, scale, tile, overlap, batch_size, reuse
) -> Generator[tuple[int, int], None, np.ndarray]:
    """The network's half of `segment_block_iter`: the block's uint8 class probabilities."""
    from .predict import predict_window

    probs = yield from predict_window(
        infer, lambda ys, xs: planes.load(plane, (ys, xs)), plan.shape, plan.block(index).region,
        scale=scale, tile=tile, overlap=overlap, batch_size=batch_size,
        cache=reuse,
    )  # fmt: skip
    if reuse is not None:
        reuse.done(index)
    return probs


def finish_block(
    planes, plane, plan: BlockPlan, index: int, probs: np.ndarray, t0: float, *, min_size, mask_threshold,
    probabilities, merge_cuts, outline_level, diameter, typical=None,
) -> BlockOutput:  # fmt: skip
    """The instance half of `segment_block_iter`: labels from the probabilities, trimmed, and what the block
    leaves for stitching (`t0`: when the block started, for its `seconds`)."""
    b = plan.block(index)
    lab = labels_from_probabilities(
        probs, min_size=min_size, mask_threshold=mask_threshold, merge_cuts=merge_cuts, typical_diameter=typical
    )
    ry0, ry1, rx0, rx1 = b.region
    image = planes.load(plane, (slice(ry0, ry1), slice(rx0, rx1)))
    if outline_level > 0:
        lab = refine_outlines(lab, image, diameter, outline_level)
    out = block_output(plan, b, lab, probs, probabilities=probabilities, image=image)
    out.seconds = time.perf_counter() - t0
    return out


def block_output(
    plan: BlockPlan,
    b: Block,
    lab: np.ndarray,
    probs: np.ndarray,
    *,
    probabilities: bool = False,
    z_core: slice | None = None,
    z_strips: dict[str, slice] | None = None,
    image: np.ndarray | None = None,
) -> BlockOutput:
    """What block `b` leaves for stitching, from its labels of its region (..., h, w) and probabilities
    (3, ..., h, w): the core, renumbered, the strips across its seams and per-object sums. Leading axes
    (a 3D block's Z) are carried along: stitching only counts overlaps.

    A 3D block cut in Z too (`segment3d.StackPlan`) gives its core's planes of the region (`z_core`) and
    the planes of its strips across its Z seams (`z_strips`, face -> planes of the region). `image`: the
    region's normalised intensities, as `lab`, for each object's `bright` sum (None: left to the caller).
    """
    ry0, _, rx0, _ = b.region
    y0, y1, x0, x1 = b.core
    yx = (slice(y0 - ry0, y1 - ry0), slice(x0 - rx0, x1 - rx0))
    core = (Ellipsis if z_core is None else z_core, *yx)
    # Keep the objects with pixels in the core, renumbered 1..n in raster order of the region.
    present = label_areas(lab[core], int(lab.max())) > 0
    present[0] = False
    local = np.zeros(present.size, np.int32)
    local[present] = np.arange(1, int(present.sum()) + 1, dtype=np.int32)
    n = int(present.sum())
    core_labels = local[lab[core]]
    strips = {
        face: local[lab[(core[0], *_strip_window(plan, b, face))]]
        for face in FACES
        if plan.strip and plan.neighbour(b, face) is not None
    }
    strips.update({face: local[lab[(zs, *yx)]] for face, zs in (z_strips or {}).items()})
    core_probs = probs[(slice(None), *core)]
    area = label_areas(core_labels, n)
    cert = np.bincount(core_labels.ravel(), weights=certainty_map(core_probs).ravel(), minlength=n + 1)
    bright = None if image is None else square_sums(core_labels, image[core], n)
    probs_kept = np.ascontiguousarray(core_probs) if probabilities else None
    return BlockOutput(b.index, core_labels, n, strips, area, cert, probs_kept, bright=bright)


def square_sums(labels: np.ndarray, image: np.ndarray, n: int) -> np.ndarray:
    """(n + 1,) the sum of `image` squared over each id 0..n of `labels` (`BlockOutput.bright`)."""
    x = np.asarray(image, np.float64)
    return np.bincount(labels.ravel(), weights=(x * x).ravel(), minlength=n + 1)


def seam_pairs(plan: BlockPlan, outputs: dict[int, BlockOutput], offsets: np.ndarray, strips=None) -> np.ndarray:
    """(2, K) provisional global ids to merge: the same object seen by the blocks on both sides of a seam.

    Two objects are one when they share more than half of the smaller one's pixels in the strip.
    `strips(i)` gives block i's strips (default: ``outputs[i].strips``); blocks are visited in raster
    order, so a loader with a cache of two block rows reads every block's strips once.
    """
    strips = strips or (lambda i: outputs[i].strips)
    pairs = []
    for i in sorted(outputs):
        out = outputs[i]
        for face, j, other in plan.seams(i):
            if face not in strips(i):
                continue
            a, c = strips(i)[face].ravel(), strips(j)[other].ravel()
            both = (a > 0) & (c > 0)
            if not both.any():
                continue
            ab, inter = np.unique(np.stack([a[both], c[both]]), axis=1, return_counts=True)
            area_a = np.bincount(a, minlength=out.n + 1)[ab[0]]
            area_c = np.bincount(c, minlength=outputs[j].n + 1)[ab[1]]
            keep = inter > 0.5 * np.minimum(area_a, area_c)
            pairs.append(np.stack([ab[0][keep] + offsets[i], ab[1][keep] + offsets[j]]))
    return np.concatenate(pairs, axis=1) if pairs else np.zeros((2, 0), np.int64)


def final_ids(n_total: int, pairs: np.ndarray) -> np.ndarray:
    """Map provisional ids 0..n_total to final ids: merged ones share one, numbered 1..M by their first id."""
    graph = coo_matrix((np.ones(pairs.shape[1], np.int8), (pairs[0], pairs[1])), shape=(n_total + 1,) * 2)
    _, comp = connected_components(graph, directed=False)
    # Components are numbered in order of their smallest node, and node 0 (background) is alone: 0 -> 0.
    return comp.astype(np.int64)


@dataclass
class Stitched:
    """The merge of one plane's blocks: per-block lookup tables, and per final object its area and score."""

    luts: dict[int, np.ndarray]
    n_objects: int
    scores: dict[int, float]


def stitch_blocks(
    plan: BlockPlan, outputs: dict[int, BlockOutput], first_id: int = 1, strips=None, min_score: float = 0.0
) -> Stitched:
    """Global ids for one plane's blocks, starting at `first_id`, and each object's certainty score.

    `strips`: as `seam_pairs`, for outputs whose strips stay on disk until needed. Objects that
    `core.scores.kept_objects` does not keep are dropped (scores and intensities of whole stitched objects, so
    the same as on the whole plane), the others numbered consecutively.
    """
    order = sorted(outputs)
    counts = np.array([outputs[i].n for i in order], np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    offsets = np.zeros(len(plan), np.int64)
    offsets[order] = starts
    n_total = int(counts.sum())
    comp = final_ids(n_total, seam_pairs(plan, outputs, offsets, strips))
    n_final = int(comp.max()) if comp.size else 0
    area = np.zeros(n_final + 1)
    cert = np.zeros(n_final + 1)
    # Every block's intensities or none: a run resumed from summaries recorded before they were kept has none.
    bright = np.zeros(n_final + 1) if all(outputs[i].bright is not None for i in order) else None
    merged = {}
    for i in order:
        o = outputs[i]
        g = comp[offsets[i] + np.arange(o.n + 1)]  # local id l is provisional id offset + l
        g[0] = 0
        np.add.at(area, g, o.area)
        np.add.at(cert, g, o.certainty)
        if bright is not None:
            np.add.at(bright, g, o.bright)
        merged[i] = g
    score = np.divide(cert, area, out=np.zeros_like(cert), where=area > 0)
    keep = area > 0
    keep[0] = False
    rms = None if bright is None else np.sqrt(np.divide(bright, area, out=np.zeros_like(bright), where=area > 0))
    keep[keep] = kept_objects(score[keep], min_score, None if rms is None else rms[keep])
    final = np.zeros(n_final + 1, np.int64)
    final[keep] = np.arange(first_id, first_id + int(keep.sum()))
    luts = {i: final[g] for i, g in merged.items()}
    scores = {int(final[k]): round(float(score[k]), 4) for k in np.nonzero(keep)[0]}
    n_final = int(keep.sum())
    return Stitched(luts, n_final, scores)

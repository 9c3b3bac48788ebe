"""The OME-Zarr side of a run's labels: the coarser levels of the multiscale pyramid, written chunk by chunk or
block by block, and the NGFF metadata (multiscales + image-label, via ome-zarr) that makes them a labels image
napari and other OME-Zarr viewers open. `core.bigrun` writes level 0."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

#: Where a run's labels sit in its OME-Zarr.
LABELS_PATH = "labels/nuclei"

#: Coarser levels are added (each 2x smaller in Y and X, nearest-neighbour, as labels must be) until
#: the plane fits in this many px per side, so that a viewer shows any size from the level it needs.
LEVEL_SIDE = 1024


def open_levels(group_path: Path, level0) -> list:
    """Create (empty) levels 1, 2, ... of an image beside its level 0 in `group_path`: each half the one
    before in Y and X, until the larger side is at most `LEVEL_SIDE`."""
    import zarr

    group = zarr.open_group(str(group_path), mode="a")
    levels, shape = [], tuple(level0.shape)
    while max(shape[-2:]) > LEVEL_SIDE:
        shape = (*shape[:-2], *(-(-n // 2) for n in shape[-2:]))
        # Level k's chunks are level 0's shrunk 2^k times, so a block's part is whole chunks: with level 0's
        # chunk size, each coarse chunk was read, merged and recompressed once per block (4^k times).
        f = 2 ** (len(levels) + 1)
        yx = tuple(-(-c // f) for c in level0.chunks[-2:])
        chunks = tuple(min(c, n) for c, n in zip((*level0.chunks[:-2], *yx), shape))
        # overwrite: a level left by a stopped stitch is written again
        levels.append(group.create_array(str(len(levels) + 1), shape=shape, chunks=chunks, dtype=level0.dtype,
                                         fill_value=0, overwrite=True))  # fmt: skip
    return levels


def write_coarse(levels: list, key: tuple[slice, ...], block: np.ndarray) -> None:
    """Write the part of each coarser level that samples `block` (the level-0 pixels `key`): level k takes
    every 2^k-th pixel of level 0 in Y and X (nearest neighbour, as labels need)."""
    for k, level in enumerate(levels, 1):
        f, lead = 2**k, key[:-2]
        (y0, y1), (x0, x1) = ((sl.start, sl.stop) for sl in key[-2:])
        sy, sx = -y0 % f, -x0 % f  # the first level-0 row / column of the block that level k keeps
        part = block[..., sy::f, sx::f]
        if part.size:
            cy, cx = (y0 + sy) // f, (x0 + sx) // f
            level[(*lead, slice(cy, cy + part.shape[-2]), slice(cx, cx + part.shape[-1]))] = part


def write_levels(group_path: Path, level0) -> int:
    """Write levels 1, 2, ... of an image beside its level 0 in `group_path` (`open_levels`), block by block
    of level 0's chunks; returns the number of levels in all."""
    levels = open_levels(group_path, level0)
    fill_levels(level0, levels)
    return len(levels) + 1


def fill_levels(source, levels: list) -> None:
    """Write the coarser `levels` (each half the one before) from `source`, the level before the first of
    them, chunk by chunk of `source`."""
    if levels:
        for key in chunk_keys(source):
            write_coarse(levels, key, source[key])


def owned_levels(keys: list, levels: list) -> int:
    """How many of the first `levels` (level k samples every 2^k-th pixel of level 0) have chunks that each
    take pixels from one block only, given the blocks' level-0 `keys`: those levels can be written by blocks in
    parallel. A block's part of level k is whole chunks where its core's Y and X starts are multiples of 2^k
    times the chunk (cores of 1024 or 2048 px: every level of a plane up to 2^20 px a side)."""
    for k, level in enumerate(levels, 1):
        f = 2**k
        for key in keys:
            for sl, ch, n in zip(key[-2:], level.chunks[-2:], level.shape[-2:]):
                a, b = -(-sl.start // f), -(-sl.stop // f)
                if a % ch or (b % ch and b != n):
                    return k - 1
    return len(levels)


def chunk_keys(array):
    """The slices of every chunk of `array` (in storage order)."""
    ranges = [range(0, n, c) for n, c in zip(array.shape, array.chunks)]
    for start in itertools.product(*ranges):
        yield tuple(slice(a, min(a + c, n)) for a, c, n in zip(start, array.chunks, array.shape))


def write_ngff(
    part: Path, axes: str, shape, pixel_size, levels: int = 1, image: str | None = None, z_step: float | None = None
) -> None:
    """The NGFF metadata of the labels (multiscales + image-label), or, with `image`, of that image group.
    `z_step`: the Z step of a 3D stack in units of its Y pixel size (the voxels' anisotropy)."""
    import zarr
    from ome_zarr.writer import write_label_metadata, write_multiscales_metadata

    root = zarr.open_group(str(part), mode="a")
    names = {"T": "t", "Z": "z", "Y": "y", "X": "x"}
    ax = [{"name": names.get(a, a.lower()), "type": "time" if a == "T" else "space"} for a in axes]
    yx = np.asarray(pixel_size or (1.0, 1.0), float)
    lead = [1.0] * (len(shape) - 2)
    if z_step is not None:
        lead[-1] = float(z_step * yx[0])
    datasets = [
        {"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": lead + list(yx * 2**k)}]}
        for k in range(levels)
    ]
    if image is not None:
        write_multiscales_metadata(root[image], datasets, axes=ax, name=image)
        return
    write_multiscales_metadata(root[LABELS_PATH], datasets, axes=ax, name="nuclei")
    write_label_metadata(root["labels"], "nuclei", source={"image": "../../"})

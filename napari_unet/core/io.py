"""Read images (TIFF / OME-TIFF, .npy, zarr / OME-Zarr, PNG / JPEG / BMP) and write labels safely.

Reading returns the array with the axes the file declares (or None when it declares none). Files
larger than `LAZY_BYTES` are opened lazily (tifffile's zarr view, memory-mapped .npy, zarr itself),
so a stack bigger than memory opens at once and is read plane by plane.

Writing never overwrites unless asked and never leaves a half-written file: data goes to a temporary
file in the target folder that is renamed into place only when complete.
"""

from __future__ import annotations

import logging
import os
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from .atomic import atomic_write
from .errors import InputError
from .normalize import resolve_axes

LAZY_BYTES = 1 << 30
TIFF_TILE = 512  # px, for labels written as a tiled BigTIFF
TIFF_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff")
#: Single-image formats read whole by imageio (which scikit-image brings): many public nucleus sets, DSB2018's
#: among them, come as PNG. RGB(A) files are channel-last, so the nuclear-channel choice applies.
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


#: Z step / XY pixel size the 3D mode takes (`core.segment3d`): a finer Z would want the stack binned first,
#: and beyond 20 a nucleus spans too few planes to be a 3D object.
ANISOTROPY_RANGE = (1.0, 20.0)


def voxel_anisotropy(z_step: float | None, pixel: float | None) -> float | None:
    """Z step / XY pixel size (3 decimals) where a file or layer gives both and the ratio is in
    `ANISOTROPY_RANGE`, else None. A stack with such a voxel has a spatial Z: the CLI and the Segment
    widget then make 3D objects by default (benchmarks/RESULTS.md: 3D AP@0.5 0.97 against 0.50-0.56 for plane
    linking on synthetic stacks, 0.72 against 0.10 on cells3d), and 2D objects per plane otherwise."""
    if not z_step or not pixel:
        return None
    ratio = round(float(z_step) / float(pixel), 3)
    lo, hi = ANISOTROPY_RANGE
    return ratio if lo <= ratio <= hi else None


@dataclass
class ImageData:
    """An image as read from disk: data (numpy or lazy), declared axes, pixel size (Y, X), Z step, metadata."""

    data: object
    axes: str | None = None
    pixel_size: tuple[float, ...] | None = None
    z_step: float | None = None  # in the pixel size's unit, when the file says
    metadata: dict = field(default_factory=dict)


def is_zarr(path: Path) -> bool:
    """A zarr store or OME-Zarr: a `.zarr` path, or a folder with zarr metadata."""
    return path.suffix.lower() == ".zarr" or (
        path.is_dir() and any((path / n).exists() for n in (".zarray", ".zgroup", "zarr.json"))
    )


def _tiff_axes(axes: str, shape: tuple[int, ...]) -> str | None:
    # tifffile letters: S = samples (RGB), Q/I/... = unknown plane axes; keep TZCYX, map the rest: one unknown
    # plane axis is Z, two are Z then T; with more, nothing tells which is which (None: the caller must say).
    # Without metadata, a numpy (Y, X, 5) array that `tifffile.imwrite` saved is Y pages of X x 5 px ("QYX"):
    # the array's own guess (`resolve_axes`) tells its channels.
    unknown = sum(a not in "TZCYXS" for a in axes)
    if unknown > 2:
        return None
    if unknown == len(axes) - 2 and len(axes) in (3, 4):
        try:
            if (guess := resolve_axes(shape)).endswith("C"):
                return guess
        except InputError:
            pass
    out = []
    for a in axes:
        if a in "TZCYX":
            out.append(a)
        elif a == "S":
            out.append("C")
        else:
            out.append("Z" if "Z" not in axes and "Z" not in out else "T")
    return "".join(out)


class _Complaints(logging.Filter):
    """On tifffile's logger: what it logs in a thread that is opening a file (`_open_tiff`) is kept for that
    thread instead of printed. Other threads' records pass: a folder's inputs are read two at a time."""

    held: dict[int, list[str]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        held = self.held.get(record.thread)
        if held is None:
            return True
        held.append(record.getMessage().split("> ", 1)[-1])  # without tifffile's "<TiffPages @offset> "
        return False


def _open_tiff(path: Path) -> tifffile.TiffFile:
    """`tifffile.TiffFile(path)`, its warnings held back: a damaged file gets one line saying what tifffile
    found (e.g. "invalid offset to first page") rather than tifffile's log line and then ours."""
    logger = logging.getLogger("tifffile")
    if not any(isinstance(f, _Complaints) for f in logger.filters):
        logger.addFilter(_Complaints())
    me = threading.get_ident()
    _Complaints.held[me] = complaints = []
    try:
        tif = tifffile.TiffFile(path)
    finally:
        del _Complaints.held[me]
    if not tif.series:
        tif.close()
        why = f" ({complaints[0]})" if complaints else ""
        raise InputError(f"'{path}' holds no image: a damaged or empty TIFF{why}")
    for message in complaints:  # a readable file: its warnings are tifffile's to give
        logger.warning(message)
    return tif


def read_tiff(path: Path) -> ImageData:
    with _open_tiff(path) as tif:
        if len(tif.series) > 1:  # e.g. pages of different shapes: reading the first only would be silent loss
            shapes = ", ".join("x".join(map(str, sr.shape)) for sr in tif.series[:4])
            more = ", ..." if len(tif.series) > 4 else ""
            raise InputError(
                f"'{path}' holds {len(tif.series)} images of different shapes ({shapes}{more}); "
                "save each as its own file, or as one stack of equal planes"
            )
        series = tif.series[0]
        axes = _tiff_axes(series.axes, tuple(series.shape))
        pixel_size = z_step = None
        try:
            if tif.is_ome and tif.ome_metadata:
                root = ET.fromstring(tif.ome_metadata)
                pix = next(e for e in root.iter() if e.tag.endswith("Pixels"))
                sy, sx, sz = pix.get("PhysicalSizeY"), pix.get("PhysicalSizeX"), pix.get("PhysicalSizeZ")
                if sy and sx:
                    pixel_size = (float(sy), float(sx))
                    z_step = float(sz) if sz else None
            elif tif.imagej_metadata is not None:
                xres = tif.pages[0].tags.get("XResolution")
                if xres is not None:
                    num, den = xres.value
                    pixel_size = (den / num, den / num) if num else None
                    spacing = tif.imagej_metadata.get("spacing")
                    z_step = float(spacing) if spacing and pixel_size else None
        except (StopIteration, ValueError, TypeError, ZeroDivisionError, ET.ParseError):
            pixel_size = z_step = None
        nbytes = int(np.prod(series.shape)) * np.dtype(series.dtype).itemsize
        if nbytes > LAZY_BYTES:
            import zarr

            data = zarr.open(series.aszarr(), mode="r")
            data = data[0] if hasattr(data, "keys") and not hasattr(data, "shape") else data
        else:
            data = series.asarray()
    return ImageData(data, axes, pixel_size, z_step)


class _ZarrTaskNoise(logging.Filter):
    """Drops asyncio's "Task was destroyed but it is pending!" reports about zarr's own read tasks.

    When one chunk of a zarr array is corrupt, zarr 3 raises the error (which we report in one line)
    and abandons its other concurrent chunk reads; asyncio then logs each of them, ~40 lines of
    tracebacks about zarr internals that say nothing to the user.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith("Task was destroyed but it is pending") and "zarr" in msg)


def quiet_zarr_tasks() -> None:
    """Install `_ZarrTaskNoise` on the asyncio logger (once)."""
    logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _ZarrTaskNoise) for f in logger.filters):
        logger.addFilter(_ZarrTaskNoise())


def read_zarr(path: Path) -> ImageData:
    import zarr

    quiet_zarr_tasks()

    node = zarr.open(str(path), mode="r")
    axes = None
    if not hasattr(node, "shape"):  # a group: OME-Zarr multiscales -> the full-resolution level
        attrs = dict(node.attrs)
        ms = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
        if not ms and "labels" in node.group_keys():  # labels only, as `segment -o OUT.zarr` writes
            name = dict(node["labels"].attrs).get("labels", ["nuclei"])[0]
            labels = read_zarr(path / "labels" / name)
            labels.metadata["labels"] = True
            return labels
        if not ms:
            arrays = list(node.array_keys())
            if not arrays:
                raise InputError(f"'{path}' is a zarr group without arrays")
            return ImageData(node[arrays[0]])
        levels = [node[d["path"]] for d in ms[0]["datasets"]]
        names = [a["name"] if isinstance(a, dict) else a for a in ms[0].get("axes", [])]
        axes = "".join(n.upper() for n in names) or None
        scale = next((t["scale"] for t in ms[0]["datasets"][0].get("coordinateTransformations", [])
                      if t.get("type") == "scale"), None)  # fmt: skip
        pixel = tuple(float(v) for v in scale[-2:]) if scale and len(scale) >= 2 else None
        z_step = float(scale[axes.index("Z")]) if axes and "Z" in axes and scale and len(scale) == len(axes) else None
        known = pixel != (1.0, 1.0)
        return ImageData(levels[0], axes, pixel if known else None, z_step if known else None,
                         metadata={"levels": levels} if len(levels) > 1 else {})  # fmt: skip
    return ImageData(node, axes)


def read_image(path: str | os.PathLike) -> ImageData:
    """Read an image file; every failure is an `InputError` with one plain sentence."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"'{path}' does not exist")
    name = path.name.lower()
    try:
        if is_zarr(path):
            img = read_zarr(path)
        elif name.endswith(TIFF_SUFFIXES):
            img = read_tiff(path)
        elif name.endswith(".npy"):
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            img = ImageData(arr if arr.nbytes > LAZY_BYTES else np.asarray(arr))
        elif name.endswith(PICTURE_SUFFIXES):
            import imageio.v3 as iio

            img = ImageData(np.asarray(iio.imread(path)))
        else:
            raise InputError(f"'{path}': unsupported format (use TIFF/OME-TIFF, .npy, zarr, PNG, JPEG or BMP)")
    except InputError:
        raise
    except MemoryError:
        raise InputError(f"'{path}' does not fit in memory") from None
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes one plain line
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise InputError(f"cannot read '{path}': {reason}") from None
    shape = tuple(getattr(img.data, "shape", ()))
    if len(shape) < 2:
        raise InputError(f"'{path}' is not an image (shape {shape})")
    if 0 in shape:
        raise InputError(f"'{path}' is empty (shape {shape})")
    return img


def default_output(path: str | os.PathLike) -> Path:
    """`<input stem>_labels.tif` next to the input (an .ome.tif keeps a plain stem)."""
    path = Path(path)
    stem = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".npy", ".zarr", *PICTURE_SUFFIXES):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return path.with_name(f"{stem}_labels.tif")


#: Axes written for labels whose caller gives none, by dimensionality.
DEFAULT_LABEL_AXES = {2: "YX", 3: "ZYX", 4: "TZYX", 5: "TCZYX"}


def write_labels(
    path: str | os.PathLike,
    labels: np.ndarray,
    *,
    overwrite: bool = False,
    axes: str | None = None,
    scale: dict[str, float] | None = None,
    name: str | None = None,
) -> Path:
    """Write integer labels as a zlib-compressed OME-TIFF, atomically, with their axes.

    Every plane is a grey (minisblack) page and the OME-XML names the axes, so a 3- or 4-plane stack
    is never taken for an RGB(A) image, and a TZYX stack reads back as TZYX (tifffile, napari,
    Fiji's Bio-Formats, QuPath).

    Args:
        path: The file (``.tif``).
        labels: Integer labels of 2 to 5 dimensions.
        overwrite: Replace an existing file.
        axes: Axis letters from TZCYX ending in YX; default by dimensionality (`DEFAULT_LABEL_AXES`).
        scale: Physical pixel size per axis letter (e.g. ``{"Z": 0.29, "Y": 0.26, "X": 0.26}``).
        name: An image name recorded in the metadata.

    Raises:
        FileExistsError: `path` exists and `overwrite` is False.
        InputError: labels that are not integers, or axes that do not fit them.
    """
    if not isinstance(labels, np.ndarray) and hasattr(labels, "shape") and hasattr(labels, "dtype"):
        # A lazy array (an OME-Zarr written block by block): a tiled BigTIFF, one band of tiles in memory.
        if not np.issubdtype(labels.dtype, np.integer):
            raise InputError(f"labels must be integers, got {labels.dtype}")
        return _write_ome(path, labels, axes, scale, name, overwrite, tile=TIFF_TILE)
    labels = np.asarray(labels)
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise InputError(f"labels must be integers, got {labels.dtype}")
    labels = labels.astype(np.uint16 if labels.max(initial=0) < 2**16 and labels.min(initial=0) >= 0 else np.int32)
    return _write_ome(path, labels, axes, scale, name, overwrite)


def write_map(
    path: str | os.PathLike,
    values: np.ndarray,
    *,
    overwrite: bool = False,
    axes: str | None = None,
    scale: dict[str, float] | None = None,
    name: str | None = None,
) -> Path:
    """Write a per-pixel uint8 map (e.g. the doubt map, 255 = most doubtful) like `write_labels` does labels
    (a lazy uint8 array, e.g. an OME-Zarr's, as a tiled BigTIFF)."""
    if not isinstance(values, np.ndarray) and getattr(values, "dtype", None) == np.uint8:
        return _write_ome(path, values, axes, scale, name, overwrite, tile=TIFF_TILE)
    return _write_ome(path, np.asarray(values).astype(np.uint8), axes, scale, name, overwrite)


def write_scores(path: str | os.PathLike, rows, *, plane_shape: tuple[int, ...] = (), overwrite: bool = False) -> Path:
    """Write per-object scores as CSV: ``label,score`` (2D) or ``label,plane,score`` (stacks).

    Args:
        rows: (plane index tuple, label id, score) as in `SegmentResult.plane_scores`.
        plane_shape: The stack's plane axes (e.g. (Z,) or (T, Z)); ``plane`` is the flat plane index.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"'{path}' exists; pass --overwrite to replace it")
    stack = bool(plane_shape)
    lines = ["label,plane,score" if stack else "label,score"]
    for z, i, v in sorted(rows, key=lambda r: (r[0], r[1])):
        lines.append(f"{i},{int(np.ravel_multi_index(z, plane_shape))},{v:.4f}" if stack else f"{i},{v:.4f}")
    with atomic_write(path, overwrite=overwrite) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return path


def _write_ome(
    path: str | os.PathLike, data, axes: str | None, scale, name, overwrite: bool, tile: int | None = None
) -> Path:
    """The shared part of `write_labels` and `write_map`: refuse to replace, check the axes, write atomically.

    With `tile`, `data` may be lazy (zarr): it is written as a tiled BigTIFF, read one band of tiles at a time.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"'{path}' exists; pass --overwrite to replace it")
    axes = (axes or DEFAULT_LABEL_AXES.get(data.ndim, "")).upper()
    if len(axes) != data.ndim or not axes.endswith("YX") or len(set(axes)) != len(axes) or set(axes) - set("TZCYX"):
        raise InputError(f"cannot write {data.ndim}-D data with axes '{axes}': use letters of TZCYX ending in YX")
    meta: dict = {"axes": axes}
    for a, v in (scale or {}).items():
        if a in "XYZ" and a in axes and np.isfinite(v) and v > 0:
            meta[f"PhysicalSize{a}"] = float(v)
    if name:
        meta["Name"] = str(name)
    with atomic_write(path, overwrite=overwrite) as tmp:
        if tile is None:
            tifffile.imwrite(tmp, data, photometric="minisblack", compression="zlib", ome=True, metadata=meta)
        else:
            tifffile.imwrite(
                tmp, _tiles(data, tile), shape=tuple(data.shape), dtype=data.dtype, tile=(tile, tile), bigtiff=True,
                photometric="minisblack", compression="zlib", ome=True, metadata=meta,
            )  # fmt: skip
    return path


def _tiles(data, tile: int):
    """The tiles of every plane of `data`, row by row, reading one band of rows at a time."""
    H, W = data.shape[-2:]
    for idx in np.ndindex(*data.shape[:-2]):
        for y in range(0, H, tile):
            band = np.asarray(data[idx + (slice(y, y + tile), slice(None))])
            for x in range(0, W, tile):
                yield band[:, x : x + tile]


def source_paths(image) -> list[Path]:
    """The files or folders an array reads from, where it tells: a zarr array on a local store, a
    `FileArray`, a memory map, and dask arrays built on them. An empty list when it does not tell."""
    found: list[Path] = []

    def visit(a) -> None:
        store = getattr(a, "store", None)
        fsspec_path = getattr(store, "path", None) if hasattr(store, "fs") else None  # dask's from_zarr
        own = getattr(a, "path", None) if isinstance(a, FileArray) else getattr(a, "filename", None)
        for p in (getattr(store, "root", None), fsspec_path, own):
            if isinstance(p, (str, os.PathLike)) and str(p) and os.path.exists(p):
                found.append(Path(p).resolve())

    visit(image)
    graph = getattr(image, "__dask_graph__", None)
    if callable(graph):
        for v in dict(graph()).values():
            visit(v)
    return found


class FileArray:
    """An image file's (lazy) array that pickles as its path: a dask worker reopens the file itself.

    tifffile's zarr view of a big TIFF holds a file handle and a lock, which cannot travel to another
    process; the path can. Reads are delegated to the opened array (a window reads only its pages or
    chunks); `transpose` is lazy too, so axes can be reordered without reading anything.
    """

    def __init__(self, path: str | os.PathLike, data=None, perm: tuple[int, ...] | None = None):
        self.path = Path(path)
        self._data = data
        base = self.data
        self.perm = tuple(range(base.ndim)) if perm is None else tuple(perm)
        self.shape = tuple(base.shape[p] for p in self.perm)
        self.dtype = np.dtype(base.dtype)
        self.ndim = len(self.shape)

    @property
    def data(self):
        if self._data is None:
            self._data = read_image(self.path).data
        return self._data

    def __getstate__(self) -> dict:
        return {"path": self.path, "perm": self.perm, "shape": self.shape, "dtype": self.dtype, "ndim": self.ndim}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._data = None

    def transpose(self, perm) -> FileArray:
        return FileArray(self.path, self._data, tuple(self.perm[p] for p in perm))

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        source = [slice(None)] * self.ndim
        for k, p in zip(key, self.perm):
            source[p] = k
        out = np.asarray(self.data[tuple(source)])
        kept = [p for k, p in zip(key, self.perm) if not isinstance(k, (int, np.integer))]
        order = sorted(kept)  # the axes the result has, in the file's order
        return out.transpose([order.index(p) for p in kept]) if kept != order else out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[tuple(slice(None) for _ in range(self.ndim))]
        return out if dtype is None else out.astype(dtype)

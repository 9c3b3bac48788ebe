"""Read images (TIFF / OME-TIFF, .npy, zarr / OME-Zarr) and write labels safely.

Reading returns the array with the axes the file declares (or None when it declares none). Files
larger than `LAZY_BYTES` are opened lazily (tifffile's zarr view, memory-mapped .npy, zarr itself),
so a stack bigger than memory opens at once and is read plane by plane.

Writing never overwrites unless asked and never leaves a half-written file: data goes to a temporary
file in the target folder that is renamed into place only when complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from .normalize import InputError

LAZY_BYTES = 1 << 30
TIFF_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff")


@dataclass
class ImageData:
    """An image as read from disk: data (numpy or lazy), declared axes, pixel size (Y, X), metadata."""

    data: object
    axes: str | None = None
    pixel_size: tuple[float, ...] | None = None
    metadata: dict = field(default_factory=dict)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _is_zarr(path: Path) -> bool:
    return path.suffix == ".zarr" or (path.is_dir() and any((path / n).exists() for n in (".zarray", ".zgroup", "zarr.json")))


def _tiff_axes(axes: str) -> str:
    # tifffile letters: S = samples (RGB), Q/I/... = unknown plane axes; keep TZCYX, map the rest.
    out = []
    for a in axes:
        if a in "TZCYX":
            out.append(a)
        elif a == "S":
            out.append("C")
        else:
            out.append("Z" if "Z" not in axes and "Z" not in out else "T")
    return "".join(out)


def read_tiff(path: Path) -> ImageData:
    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise InputError(f"'{path}' holds no image")
        series = tif.series[0]
        axes = _tiff_axes(series.axes)
        pixel_size = None
        try:
            if tif.is_ome and tif.ome_metadata:
                import xml.etree.ElementTree as ET

                root = ET.fromstring(tif.ome_metadata)
                pix = next(e for e in root.iter() if e.tag.endswith("Pixels"))
                sy, sx = pix.get("PhysicalSizeY"), pix.get("PhysicalSizeX")
                if sy and sx:
                    pixel_size = (float(sy), float(sx))
            elif tif.imagej_metadata is not None:
                xres = tif.pages[0].tags.get("XResolution")
                if xres is not None:
                    num, den = xres.value
                    pixel_size = (den / num, den / num) if num else None
        except (StopIteration, ValueError, TypeError, ZeroDivisionError, ET.ParseError):
            pixel_size = None
        nbytes = int(np.prod(series.shape)) * np.dtype(series.dtype).itemsize
        if nbytes > LAZY_BYTES:
            import zarr

            data = zarr.open(series.aszarr(), mode="r")
            data = data[0] if hasattr(data, "keys") and not hasattr(data, "shape") else data
        else:
            data = series.asarray()
    return ImageData(data, axes, pixel_size)


def read_zarr(path: Path) -> ImageData:
    import zarr

    node = zarr.open(str(path), mode="r")
    axes = None
    if not hasattr(node, "shape"):  # a group: OME-Zarr multiscales -> the full-resolution level
        attrs = dict(node.attrs)
        ms = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
        if not ms:
            arrays = list(node.array_keys())
            if not arrays:
                raise InputError(f"'{path}' is a zarr group without arrays")
            return ImageData(node[arrays[0]])
        level = ms[0]["datasets"][0]["path"]
        names = [a["name"] if isinstance(a, dict) else a for a in ms[0].get("axes", [])]
        axes = "".join(n.upper() for n in names) or None
        node = node[level]
    return ImageData(node, axes)


def read_image(path: str | os.PathLike) -> ImageData:
    """Read an image file; every failure is an `InputError` with one plain sentence."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"'{path}' does not exist")
    name = path.name.lower()
    try:
        if _is_zarr(path):
            img = read_zarr(path)
        elif name.endswith(TIFF_SUFFIXES):
            img = read_tiff(path)
        elif name.endswith(".npy"):
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            img = ImageData(arr if arr.nbytes > LAZY_BYTES else np.asarray(arr))
        else:
            raise InputError(f"'{path}': unsupported format (use TIFF/OME-TIFF, .npy or zarr)")
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
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".npy", ".zarr"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return path.with_name(f"{stem}_labels.tif")


def write_labels(path: str | os.PathLike, labels: np.ndarray, *, overwrite: bool = False, axes: str | None = None,
                 metadata: dict | None = None) -> Path:
    """Write integer labels as a (zlib-compressed) TIFF, atomically.

    Raises:
        FileExistsError: `path` exists and `overwrite` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"'{path}' exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(labels)
    if labels.max(initial=0) < 2**16:
        labels = labels.astype(np.uint16)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a saved file should look like any other
    try:
        desc = json.dumps({"axes": axes, **(metadata or {})}) if (axes or metadata) else None
        tifffile.imwrite(tmp, labels, compression="zlib", description=desc, metadata=None)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

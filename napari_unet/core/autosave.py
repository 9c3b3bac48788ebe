"""Where corrections are autosaved, and the file format (no Qt, no napari: testable on its own).

Corrections of a labels layer (the labels, the trusted-pixel mask and the reviewed regions) go to one
compressed ``.npz`` file per (image, labels layer):

* next to the image: ``<image folder>/<image stem>.<layer>.corrections.npz``, when the image came
  from a file in a writable folder;
* otherwise in the project folder: ``$NAPARI_UNET_PROJECT`` or the per-user data folder
  (``.../napari-unet/corrections``), under a name made from the image's key and a short hash.

Files are written atomically (`atomic.atomic_write`), so a crash mid-write leaves the previous
autosave intact; a damaged one is moved aside on reading and never blocks opening the image.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from .atomic import atomic_write
from .errors import InputError

SUFFIX = ".corrections.npz"
META_KEY = "napari_unet"  # the key of the plugin's dict in a layer's metadata


class DamagedAutosave(UserWarning):
    """An autosave that could not be read (it was moved aside)."""


@dataclass
class SavedCorrections:
    """One autosave: the labels as painted, which pixels are trusted, what was marked reviewed."""

    labels: np.ndarray
    trusted: np.ndarray
    layer_name: str
    reviewed: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def project_dir() -> Path:
    """Folder for autosaves that cannot sit next to their image: $NAPARI_UNET_PROJECT or the user data dir."""
    env = os.environ.get("NAPARI_UNET_PROJECT")
    if env:
        return Path(env)
    try:
        from platformdirs import user_data_dir

        return Path(user_data_dir("napari-unet", appauthor=False)) / "corrections"
    except ImportError:  # pragma: no cover - platformdirs is a dependency
        return Path.home() / ".local" / "share" / "napari-unet" / "corrections"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "labels"


def _stem(path: Path) -> str:
    # "img.tif#c1" names channel 1 of a multichannel file: its corrections are kept apart.
    name, _, channel = path.name.partition("#")
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".ome.zarr", ".zarr", ".npy"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    else:
        name = Path(name).stem if "." in name else name
    return f"{name}-{channel}" if channel else name


def _writable(folder: Path) -> bool:
    return folder.is_dir() and os.access(folder, os.W_OK)


def candidate_paths(source: str | os.PathLike | None, key: str, layer_name: str) -> list[Path]:
    """Autosave locations for a labels layer, most preferred first.

    Args:
        source: The image's file (or folder) path, or None for data without a file (samples, arrays).
        key: A stable name for the image when there is no file (e.g. ``"sample-nuclei3d"``).
        layer_name: The labels layer's name.
    """
    layer = _slug(layer_name)
    out = []
    if source:
        src = Path(source).expanduser().absolute()
        if _writable(src.parent):
            out.append(src.parent / f"{_stem(src)}.{layer}{SUFFIX}")
        digest = hashlib.sha1(str(src).encode()).hexdigest()[:10]
        out.append(project_dir() / f"{_slug(_stem(src))}-{digest}.{layer}{SUFFIX}")
    else:
        out.append(project_dir() / f"{_slug(key)}.{layer}{SUFFIX}")
    return out


def find_saved(source: str | os.PathLike | None, key: str) -> list[Path]:
    """Every autosave for an image (one per labels layer), newest version of each layer only."""
    found: dict[str, Path] = {}
    folders = []
    if source:
        src = Path(source).expanduser().absolute()
        digest = hashlib.sha1(str(src).encode()).hexdigest()[:10]
        folders.append((src.parent, f"{_stem(src)}."))
        folders.append((project_dir(), f"{_slug(_stem(src))}-{digest}."))
    else:
        folders.append((project_dir(), f"{_slug(key)}."))
    for folder, prefix in folders:
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.name.startswith(prefix) and p.name.endswith(SUFFIX):
                layer = p.name[len(prefix) : -len(SUFFIX)]
                if "." in layer:  # another image whose stem starts with ours
                    continue
                if layer not in found or p.stat().st_mtime > found[layer].stat().st_mtime:
                    found[layer] = p
    return sorted(found.values())


def save_corrections(path: Path, saved: SavedCorrections) -> Path:
    """Write one autosave atomically; returns the path written."""
    info = {"layer_name": saved.layer_name, "reviewed": saved.reviewed, "shape": list(np.shape(saved.trusted)),
            **saved.meta}  # fmt: skip
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(
            f,
            labels=np.asarray(saved.labels),
            trusted=np.packbits(np.asarray(saved.trusted, bool)),
            info=np.array(json.dumps(info)),
        )
    return path


#: What a truncated or corrupt .npz raises on reading (zip, deflate, numpy headers, our JSON).
_DAMAGE = (OSError, EOFError, KeyError, ValueError, TypeError, zipfile.BadZipFile, zlib.error)


def load_corrections(path: Path) -> SavedCorrections:
    """Read an autosave.

    Raises:
        InputError: the file is damaged (truncated, corrupt, or not one of ours). The file is first
            moved aside to ``<name>.damaged-<date>-<time>``, where it no longer blocks opening the
            image and can still be inspected; the message says where it went.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            info = json.loads(str(z["info"]))
            labels = z["labels"]
            shape = tuple(int(n) for n in info.pop("shape"))
            trusted = np.unpackbits(z["trusted"], count=int(np.prod(shape))).reshape(shape).astype(bool)
        if labels.shape != trusted.shape:
            raise ValueError(f"labels {labels.shape} and trusted mask {trusted.shape} differ")
    except _DAMAGE as exc:
        aside = path.with_name(f"{path.name}.damaged-{datetime.now():%Y%m%d-%H%M%S}")
        try:
            os.replace(path, aside)
            where = f"moved aside to '{aside.name}'"
        except OSError:
            where = "left in place"
        raise InputError(
            f"the autosaved corrections '{path.name}' are damaged ({type(exc).__name__}): {where}"
        ) from None
    name = info.pop("layer_name", "corrections")
    reviewed = info.pop("reviewed", [])
    return SavedCorrections(labels, trusted, name, reviewed, info)


def corrections_layers(
    source: str | None,
    key: str,
    image_name: str,
    shape: tuple[int, ...],
    *,
    skip: set[str] | frozenset[str] = frozenset(),
    **layer_kwargs,
) -> list[tuple[np.ndarray, dict, str]]:
    """The Labels layer data of every correction autosaved for an image.

    A damaged autosave is moved aside (see `load_corrections`) and reported by a `DamagedAutosave`
    warning, one line, which napari shows as a notification; the image opens without it.

    The one place that turns an autosave back into a layer: the reader and the session (for images
    added by other means) both call it.

    Args:
        source: The image's file (with ``#c<k>`` for one channel), or None.
        key: The image's key when it has no file.
        image_name: The image layer's name (recorded, so the corrections follow it).
        shape: The image's spatial shape; autosaves of another shape are skipped.
        skip: Autosave paths or layer names already present (not restored twice).
        **layer_kwargs: Passed on to each layer (scale, translate, axis_labels).

    Returns:
        [(labels, kwargs, "labels"), ...] in napari's layer-data form.
    """
    layers = []
    for path in find_saved(source, key):
        if str(path) in skip:
            continue
        try:
            saved = load_corrections(path)
        except InputError as exc:
            warnings.warn(f"{exc}; the image opens without them", DamagedAutosave, stacklevel=2)
            continue
        if saved.labels.shape != tuple(shape) or saved.layer_name in skip:
            continue
        meta = {
            META_KEY: {
                "role": "corrections",
                "image": image_name,
                "edited": True,
                "restored_from": str(path),
                "trusted": saved.trusted,
                "reviewed": saved.reviewed,
                "source": source,
                "key": key,
            }
        }
        kwargs = {
            "name": saved.layer_name,
            "metadata": meta,
            **{k: v for k, v in layer_kwargs.items() if v is not None},
        }
        layers.append((saved.labels, kwargs, "labels"))
    return layers

"""Where corrections are autosaved, and the file format (no Qt, no napari: testable on its own).

Corrections of a labels layer (the labels, the trusted-pixel mask and the reviewed regions) go to one
compressed ``.npz`` file per (image, labels layer):

* next to the image: ``<image folder>/<image stem>.<layer>.corrections.npz``, when the image came
  from a file in a writable folder;
* otherwise in the project folder: ``$NAPARI_UNET_PROJECT`` or the per-user data folder
  (``.../napari-unet/corrections``), under a name made from the image's key and a short hash.

Files are written atomically (a temporary file renamed into place), so a crash mid-write leaves the
previous autosave intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SUFFIX = ".corrections.npz"


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(
                f,
                labels=np.asarray(saved.labels),
                trusted=np.packbits(np.asarray(saved.trusted, bool)),
                info=np.array(
                    json.dumps(
                        {
                            "layer_name": saved.layer_name,
                            "reviewed": saved.reviewed,
                            "shape": list(np.shape(saved.trusted)),
                            **saved.meta,
                        }
                    )
                ),
            )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_corrections(path: Path) -> SavedCorrections | None:
    """Read an autosave; None (not an error) when it is missing or damaged, so a bad file never blocks opening."""
    try:
        with np.load(path, allow_pickle=False) as z:
            info = json.loads(str(z["info"]))
            labels = z["labels"]
            shape = tuple(info.pop("shape"))
            trusted = np.unpackbits(z["trusted"], count=int(np.prod(shape))).reshape(shape).astype(bool)
    except (OSError, KeyError, ValueError, json.JSONDecodeError):
        return None
    if labels.shape != trusted.shape:
        return None
    name = info.pop("layer_name", "corrections")
    reviewed = info.pop("reviewed", [])
    return SavedCorrections(labels, trusted, name, reviewed, info)

"""The model store: saved versions with lineage, a `current` pointer, list / load / revert.

Layout of the per-user folder (`models_dir()`; the environment variable ``NAPARI_UNET_MODELS``
overrides the platform default)::

    <models_dir>/
        v0001-20261122-031500.safetensors   one self-describing model file per training run
        my-name.safetensors                 ... or a name the user chose
        current.json                        {"name": "v0001-..."}: what "current" loads

A version file is never overwritten: it is written to a temporary file and hard-linked into place,
which fails if the name is taken (`atomic.atomic_write`). Lineage lives in each file's `ModelInfo.provenance` (parent name and
sha256, hashes of the training data, seed, settings, metrics before and after, date, improvement).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path

import torch

from .atomic import atomic_write
from .model import UNet
from .modelfile import ModelFileError, ModelInfo, check_model_file, read_info, read_model, save_model

SUFFIX = ".safetensors"
POINTER = "current.json"
RESERVED = ("bundled", "current")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
_AUTO = re.compile(r"^v(\d{4,})-")


def models_dir() -> Path:
    """Per-user folder of saved versions: $NAPARI_UNET_MODELS, else the platform's user data folder."""
    env = os.environ.get("NAPARI_UNET_MODELS")
    if env:
        return Path(env).expanduser()
    try:
        from platformdirs import user_data_dir

        return Path(user_data_dir("napari-unet", appauthor=False)) / "models"
    except ImportError:
        return Path.home() / ".local" / "share" / "napari-unet" / "models"


def bundled_model_path() -> Path:
    """Path of the model file shipped inside the package."""
    return Path(str(resources.files("napari_unet") / "resources" / "bundled.safetensors"))


def _root(root: str | os.PathLike | None) -> Path:
    return Path(root) if root is not None else models_dir()


def validate_name(name: str) -> str:
    """A version name: letters, digits, '.', '_', '-' (not first), at most 80 characters."""
    name = str(name)
    if name.endswith(SUFFIX):
        name = name[: -len(SUFFIX)]
    if not _NAME.match(name) or name.lower() in RESERVED:
        raise ValueError(
            f"'{name}' is not a valid version name: use letters, digits, '.', '_' and '-' (not {' or '.join(RESERVED)})"
        )
    return name


def new_version_name(root: str | os.PathLike | None = None, now: datetime | None = None) -> str:
    """The next automatic name, ``v<NNNN>-YYYYMMDD-HHMMSS`` (numbered after the highest so far)."""
    d = _root(root)
    numbers = [int(m.group(1)) for p in d.glob(f"v*{SUFFIX}") if (m := _AUTO.match(p.name))]
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return f"v{max(numbers, default=0) + 1:04d}-{stamp}"


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def version_path(name: str, root: str | os.PathLike | None = None) -> Path:
    """The file of a saved version; ModelFileError if there is none."""
    path = _root(root) / f"{validate_name(name)}{SUFFIX}"
    if not path.is_file():
        raise ModelFileError(f"no saved version named '{name}' (looked in {_root(root)})")
    return path


def save_version(model: UNet, info: ModelInfo, name: str | None = None, root: str | os.PathLike | None = None) -> Path:
    """Save a new version, never replacing an existing one.

    Args:
        model: The network.
        info: Its description; `info.name` is set to the version name.
        name: Version name; the next automatic ``v<NNNN>-<date>-<time>`` when None.
        root: The store (default `models_dir()`).

    Returns:
        The path written.

    Raises:
        FileExistsError: a version of that name exists.
    """
    d = _root(root)
    d.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        vname = validate_name(name) if name else new_version_name(d)
        info.name = vname
        try:
            return save_model(model, info, d / f"{vname}{SUFFIX}", overwrite=False)
        except FileExistsError:  # exclusive: the name was taken, even a moment ago
            if name:
                raise FileExistsError(f"a version named '{vname}' exists already; choose another name") from None
    raise FileExistsError(f"could not find a free version name in {d}")


def current_name(root: str | os.PathLike | None = None, *, strict: bool = False) -> str | None:
    """Name of the version that "current" loads; None means the bundled model.

    A pointer file that exists but cannot be read (not JSON, no name) reads as None for listing;
    with `strict` it raises, so that "current" never silently becomes the bundled model.
    """
    p = _root(root) / POINTER
    why = None
    try:
        name = json.loads(p.read_text())["name"]
    except FileNotFoundError:
        return None
    except OSError as exc:
        why = exc.strerror or str(exc)
    except ValueError:
        why = "not JSON"
    except (KeyError, TypeError):
        why = "no name in it"
    else:
        try:
            if name != "bundled":
                validate_name(name if isinstance(name, str) else "")
        except ValueError:
            why = f"its name {name!r} is not a version name"
    if why is not None:
        if strict:
            raise ModelFileError(
                f"the current-model pointer {p} is unreadable ({why}); choose a model: "
                "napari-unet models revert NAME (or bundled)"
            )
        return None
    return None if name == "bundled" else name


def set_current(name: str, root: str | os.PathLike | None = None) -> None:
    """Point "current" at a saved version (or back at ``"bundled"``), atomically.

    This is how to revert: the versions themselves are never changed or deleted.
    """
    d = _root(root)
    if name != "bundled":
        path = version_path(name, d)
        try:
            check_model_file(path)
        except ModelFileError as exc:
            raise ModelFileError(f"cannot make '{name}' current: {exc}") from None
    with atomic_write(d / POINTER) as tmp:
        tmp.write_text(json.dumps({"name": name, "set": datetime.now().isoformat(timespec="seconds")}))


def resolve_model_path(spec: str | os.PathLike = "bundled", root: str | os.PathLike | None = None) -> Path:
    """``"bundled"``, ``"current"``, an existing model file, or a saved version's name -> its file."""
    s = str(spec)
    if s == "bundled":
        return bundled_model_path()
    if s == "current":
        name = current_name(root, strict=True)
        if name is None:
            return bundled_model_path()
        try:
            return version_path(name, root)
        except (ModelFileError, ValueError) as exc:
            raise ModelFileError(
                f"the current model is gone ({exc}); choose another: napari-unet models revert bundled"
            ) from None
    path = Path(s).expanduser()
    if path.exists() or path.suffix == SUFFIX or os.sep in s or (os.altsep and os.altsep in s):
        return path
    try:
        return version_path(s, root)
    except ValueError:
        raise ModelFileError(f"no model file or saved version named '{s}' (looked in {_root(root)})") from None


@dataclass
class Version:
    """One saved version as listed: name, file, and the headline of its lineage.

    `problem` is None for a usable version, else one sentence (an unreadable file, or provenance
    that is not what this release writes); such a version is listed, flagged, and never loaded.
    """

    name: str
    path: Path
    created: str = ""
    parent: str | None = None
    improved: bool | None = None
    metrics: dict = field(default_factory=dict)
    current: bool = False
    provenance: dict = field(default_factory=dict)
    problem: str | None = None

    @property
    def val_change(self) -> tuple[float, float] | None:
        """(held-out metric before, after) when both are numbers."""
        before, after = self.metrics.get("val_before"), self.metrics.get("val_after")
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (before, after))
        return (float(before), float(after)) if ok else None


def _version(path: Path, name: str, current: bool) -> Version:
    """A `Version` read defensively: odd provenance flags the version instead of breaking the list."""
    try:
        prov = read_info(path).provenance
    except ModelFileError as exc:
        return Version(name, path, current=current, problem=str(exc))
    odd = []

    def pick(key, kinds, default):
        v = prov.get(key, default)
        if v is not default and not isinstance(v, kinds):
            odd.append(key)
            return default
        return v

    parent = pick("parent", dict, {}) or {}
    parent_name = parent.get("name")
    if parent_name is not None and not isinstance(parent_name, str):
        odd.append("parent.name")
        parent_name = None
    v = Version(
        name=name,
        path=path,
        created=pick("date", str, ""),
        parent=parent_name,
        improved=pick("improved", bool, None),
        metrics=pick("metrics", dict, {}) or {},
        current=current,
        provenance=prov,
    )
    if odd:
        v.problem = f"its provenance has unexpected {', '.join(odd)}"
    return v


def list_versions(root: str | os.PathLike | None = None) -> list[Version]:
    """Saved versions, oldest first; an unreadable or odd file is listed with its `problem`, not skipped."""
    d = _root(root)
    cur = current_name(d)
    out = []
    for p in d.glob(f"*{SUFFIX}"):
        if p.name.startswith("."):
            continue
        name = p.name[: -len(SUFFIX)]
        out.append(_version(p, name, name == cur))
    return sorted(out, key=lambda v: (v.created, v.name))


def load_model_file(path: str | os.PathLike) -> tuple[UNet, ModelInfo]:
    """A model file or a bioimage.io package that napari-unet exported -> (U-Net in eval mode, its `ModelInfo`)."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".zip") or name in ("rdf.yaml", "bioimageio.yaml") or name.endswith(".bioimageio.yaml"):
        from .bioimageio_package import read_package

        return read_package(path)
    return read_model(path)


def resolve_init(init: str | os.PathLike | UNet) -> tuple[UNet, ModelInfo, dict]:
    """The starting model of a training run, its `ModelInfo`, and its lineage entry for the new version.

    Args:
        init: ``"bundled"``, ``"current"``, a model file, a saved version's name, or a `UNet` (not
            modified; one without an `info` attribute gets a default `ModelInfo`).

    Returns:
        (model, info, parent) where parent records the name, the spec, the file and its sha256
        (None for an in-memory model) and the sha256 of the weights.
    """
    if isinstance(init, UNet):
        model = init
        info = getattr(init, "info", None)
        info = info if isinstance(info, ModelInfo) else ModelInfo(config=model.config)
        parent = {"name": info.name, "spec": "in-memory model", "path": None, "file_sha256": None}
    else:
        spec = str(init)
        path = resolve_model_path(spec)
        model, info = load_model_file(path)
        model.info = info
        name = {"bundled": "bundled", "current": current_name() or "bundled"}.get(spec, info.name)
        parent = {"name": name, "spec": spec, "path": str(path), "file_sha256": file_sha256(path)}
    parent["weights_sha256"] = weights_sha256(model)
    return model, info, parent


def weights_sha256(model: UNet) -> str:
    """Content hash of a model's state dict (names, dtypes and values)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(f"{k}:{v.dtype}:{tuple(v.shape)}".encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()

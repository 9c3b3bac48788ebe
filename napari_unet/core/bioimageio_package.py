"""bioimage.io model packages (format 0.5): write one from a model file, and read back one we wrote.

Writing uses bioimageio.spec's Python API (``ModelDescr`` + ``save_bioimageio_package``, from the
``[export]`` extra). The package holds the exported network (`export.exportable`: BatchNorm folded, softmax
head) in three weight formats: ``pytorch_state_dict`` with a small self-contained architecture file
(torch only, so any bioimage.io consumer can rebuild it without napari-unet), ``torchscript`` and
``onnx``. Our own model file (safetensors) travels as an attachment, with the lineage as JSON and our
metadata under ``config["napari-unet"]``. The description has no URL at all: bioimageio validates
every URL with a web request (even ``bioimageio test`` forces those checks), so the package validates
and tests offline.

Reading never runs code or unpickles anything from a package: the zip is opened with `zipfile`, its
member names and sizes are checked first, the yaml is parsed with ``yaml.safe_load``, and the weights
come from the attached safetensors file, checked against the sha256 the description records.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import warnings
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import torch

from .atomic import atomic_write
from .errors import InputError, ModelFileError
from .export import ONNX_OPSET, _need, exportable, write_onnx, write_torchscript
from .instances import LEVEL_STEPS
from .model import UNet
from .modelfile import CLASS_NAMES, FORMAT, ModelInfo, read_model, save_model
from .normalize import CLIP
from .scores import BRIGHT_KEEP

__all__ = ["is_package", "read_package", "write_package"]

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
MODEL_MEMBER = "napari_unet.safetensors"
CONFIG_KEY = "napari-unet"
SAMPLE = Path(__file__).resolve().parent.parent / "resources" / "samples" / "nuclei2d_u2os.tif"
MODEL_CARD = Path(__file__).resolve().parent.parent / "resources" / "MODEL_CARD.md"
TEST_SIZE = 256
#: Zip-bomb guards: the declared uncompressed total may be at most this many times the zip's size
#: (weights barely compress; 10x leaves room for text and test tensors) and never above MAX_TOTAL.
MAX_RATIO, MIN_BOUND, MAX_TOTAL = 10, 16 * 2**20, 2 * 2**30
MAX_RDF_BYTES = 4 * 2**20

RONNEBERGER = (
    "Ronneberger, O., Fischer, P., Brox, T. (2015). U-Net: Convolutional Networks for Biomedical Image "
    "Segmentation. MICCAI 2015, LNCS 9351, 234-241.",
    "10.1007/978-3-319-24574-4_28",
)
MNFINDER = "Training images: the mnfinder data set (github.com/hatzlab/mnfinder), (c) 2023 Lucian DiPeso, MIT licence."
MNFINDER_LICENCE = """\
# Licence of the training images

The real training images and labels come from the `mnfinder` package (github.com/hatzlab/mnfinder),
released under the MIT licence:

Copyright 2023 Lucian DiPeso

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated
documentation files (the "Software"), to deal in the Software without restriction, including without limitation
the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and
to permit persons to whom the Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or substantial portions of
the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO
THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT,
TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""

#: The architecture file shipped for ``pytorch_state_dict``: torch only, the same module tree (and so
#: the same state-dict names) as `export.exportable` of a `UNet` (folded BatchNorms are Identity slots).
ARCHITECTURE = '''\
"""napari-unet U-Net as exported (BatchNorm folded into the convolutions, softmax over the classes).

Self-contained (torch only), BSD-3-Clause, napari-unet developers. Ronneberger et al. 2015.
"""

import torch
from torch import nn


def _conv_pair(cin, cout, pad, folded):
    layers = []
    for c_in in (cin, cout):
        layers.append(nn.Conv2d(c_in, cout, 3, padding=pad))
        if folded:
            layers.append(nn.Identity())
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class _Net(nn.Module):
    def __init__(self, in_channels, classes, base, depth, mode, norm):
        super().__init__()
        pad = 1 if mode == "same" else 0
        folded = norm == "batch"
        widths = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths[:-1]:
            self.down.append(_conv_pair(cin, w, pad, folded))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.bridge = _conv_pair(widths[-2], widths[-1], pad, folded)
        self.upconv = nn.ModuleList()
        self.up = nn.ModuleList()
        for w_hi, w_lo in zip(widths[:0:-1], widths[-2::-1]):
            self.upconv.append(nn.ConvTranspose2d(w_hi, w_lo, 2, stride=2))
            self.up.append(_conv_pair(2 * w_lo, w_lo, pad, folded))
        self.head = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x):
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bridge(x)
        for upconv, block, skip in zip(self.upconv, self.up, reversed(skips)):
            x = upconv(x)
            dy, dx = (skip.shape[-2] - x.shape[-2]) // 2, (skip.shape[-1] - x.shape[-1]) // 2
            skip = skip[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]
            x = block(torch.cat([skip, x], dim=1))
        return self.head(x)


class NapariUNet(nn.Module):
    """(N, in_channels, H, W) normalised image -> (N, classes, H, W) probabilities."""

    def __init__(self, in_channels=1, classes=3, base=16, depth=4, mode="same", norm="batch"):
        super().__init__()
        self.net = _Net(in_channels, classes, base, depth, mode, norm)

    def forward(self, x):
        return torch.softmax(self.net(x), dim=1)
'''


# -- writing ----------------------------------------------------------------------------------------------
def _test_tensors(model: UNet, info: ModelInfo) -> tuple[np.ndarray, np.ndarray]:
    """A centre crop of the bundled 2D sample (raw, float32) and our network's probabilities for it."""
    import tifffile

    from .normalize import normalize_plane, percentile_range

    image = tifffile.imread(SAMPLE).astype(np.float32)
    side = model.fit_input_size(min(TEST_SIZE, *image.shape))
    if side > min(image.shape):  # a valid-mode network needing more than the sample: mirror-pad it
        pad = side - min(image.shape)
        image = np.pad(image, ((0, pad), (0, pad)), mode="reflect")
    y0, x0 = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
    crop = np.ascontiguousarray(image[y0 : y0 + side, x0 : x0 + side])
    n = info.normalization
    lo, hi = percentile_range(crop, float(n.get("low", 1.0)), float(n.get("high", 99.8)))
    x = torch.from_numpy(normalize_plane(crop, lo, hi))[None, None]
    with torch.no_grad():
        probs = exportable(model)(x).numpy()
    return crop[None, None], np.ascontiguousarray(probs, dtype=np.float32)


def _write_cover(path: Path, image: np.ndarray, probs: np.ndarray) -> None:
    """A 2:1 PNG: the normalised sample beside the probabilities (interior green, boundary magenta)."""
    from PIL import Image

    h, w = probs.shape[-2:]
    dy, dx = (image.shape[-2] - h) // 2, (image.shape[-1] - w) // 2
    img = image[0, 0, dy : dy + h, dx : dx + w]  # a valid-mode output is smaller than its input
    lo, hi = np.percentile(img, [1.0, 99.8])
    grey = (np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    interior, boundary = probs[0, 1], probs[0, 2]
    rgb = np.stack([boundary, interior, boundary], axis=-1)
    rgb = (np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    both = np.concatenate([np.repeat(grey[..., None], 3, axis=-1), rgb], axis=1)
    Image.fromarray(both).save(path, format="PNG")


def _documentation(info: ModelInfo) -> str:
    parent = info.provenance.get("parent")
    if isinstance(parent, dict):  # what `train` records: {"name": ..., ...}
        parent = parent.get("name")
    lineage = f"fine-tuned from `{parent}`" if parent else "a napari-unet model"
    lv, top = info.outline_level, info.outline_level + LEVEL_STEPS[-1]
    trim = (
        f"trims each object's rim below {lv:g} of its own contrast over its local background (or below a higher "
        f"level, up to {top:g}, where the image's outlines are steepest, as in defocused fields) and "
        if lv > 0
        else "and "
    )
    header = (
        f"# napari-unet model `{info.name}`\n\n"
        f"This package holds `{info.name}`, {lineage} (full lineage: `lineage.json`). It was trained with "
        f"objects about {info.diameter:g} px across: rescale inputs so that objects have that diameter. "
        "The output is the probability of background, object interior and object boundary; napari-unet turns it "
        f"into instances by a seeded watershed (a pixel joins an object above foreground probability "
        f"{info.mask_threshold:g}), {trim}drops objects whose confidence is below {info.min_score:g} unless they are {BRIGHT_KEEP:g}x as bright as the median object. The original napari-unet model file is attached as `{MODEL_MEMBER}`.\n\n"
        f"{MNFINDER} (`TRAINING_DATA_LICENSE.md`). Code and weights: BSD-3-Clause.\n\n"
        "## Validation\n\nMeasured AP@0.5 of the bundled model is in the model card below; a fine-tuned "
        "version keeps its own metrics in `lineage.json`.\n\n"
    )
    card = MODEL_CARD.read_text(encoding="utf-8") if MODEL_CARD.is_file() else ""
    return header + card.replace("# Bundled model card", "## Bundled model card", 1)


def _package_name(info: ModelInfo) -> str:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+- ()")
    name = "".join(c if c in allowed else "-" for c in f"napari-unet {info.name}")
    return name[:64]


def _describe(model: UNet, info: ModelInfo, d: Path):
    """The bioimage.io description of the files written in folder `d`."""
    from bioimageio.spec.model import v0_5 as bio

    c = info.config
    minimum = model.fit_input_size(1)
    step = model.fit_input_size(minimum + 1) - minimum
    shrink = 2 * model.shrink
    torch_version = bio.Version(torch.__version__.split("+")[0])
    n = info.normalization
    spatial_in = [
        bio.SpaceInputAxis(id=bio.AxisId(a), size=bio.ParameterizedSize(min=minimum, step=step)) for a in "yx"
    ]
    spatial_out = [
        bio.SpaceOutputAxis(
            id=bio.AxisId(a), size=bio.SizeReference(tensor_id=bio.TensorId("raw"), axis_id=bio.AxisId(a), offset=-shrink)
        )
        for a in "yx"
    ]  # fmt: skip
    inputs = bio.InputTensorDescr(
        id=bio.TensorId("raw"),
        description="one fluorescence channel (nuclei), unnormalised, hot pixels removed (no bioimage.io step does that)",
        axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=[bio.Identifier("nuclei")]), *spatial_in],
        test_tensor=bio.FileDescr(source=d / "test_input.npy"),
        sample_tensor=bio.FileDescr(source=d / "sample_input.tif"),
        data=bio.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[
            bio.ScaleRangeDescr(
                kwargs=bio.ScaleRangeKwargs(
                    axes=[bio.AxisId("channel"), bio.AxisId("y"), bio.AxisId("x")],
                    min_percentile=float(n.get("low", 1.0)),
                    max_percentile=float(n.get("high", 99.8)),
                )
            ),
            bio.ClipDescr(kwargs=bio.ClipKwargs(min=-CLIP, max=CLIP)),
        ],
    )
    outputs = bio.OutputTensorDescr(
        id=bio.TensorId("probabilities"),
        description="softmax probabilities of background, object interior and object boundary",
        axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=[bio.Identifier(k) for k in CLASS_NAMES]), *spatial_out],
        test_tensor=bio.FileDescr(source=d / "test_output.npy"),
        sample_tensor=bio.FileDescr(source=d / "sample_output.tif"),
        data=bio.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
    )
    arch_kwargs = {k: getattr(c, k) for k in ("in_channels", "classes", "base", "depth", "mode", "norm")}
    weights = bio.WeightsDescr(
        pytorch_state_dict=bio.PytorchStateDictWeightsDescr(
            source=d / "weights.pt",
            architecture=bio.ArchitectureFromFileDescr(
                source=d / "napari_unet_arch.py", callable=bio.Identifier("NapariUNet"), kwargs=arch_kwargs
            ),
            pytorch_version=torch_version,
        ),
        torchscript=bio.TorchscriptWeightsDescr(
            source=d / "weights_torchscript.pt", pytorch_version=torch_version, parent="pytorch_state_dict"
        ),
        onnx=bio.OnnxWeightsDescr(source=d / "weights.onnx", opset_version=ONNX_OPSET, parent="pytorch_state_dict")
        if (d / "weights.onnx").is_file()
        else None,
    )
    ours = {
        "format": FORMAT,
        "config": c.to_dict(),
        "diameter": float(info.diameter),
        "mask_threshold": float(info.mask_threshold),
        "min_score": float(info.min_score),
        "outline_level": float(info.outline_level),
        "normalization": info.normalization,
        "name": info.name,
        "classes": list(CLASS_NAMES),
        "model_file": MODEL_MEMBER,
    }
    return bio.ModelDescr(
        name=_package_name(info),
        description=(
            f"U-Net (Ronneberger et al. 2015) for fluorescence nuclei, napari-unet model '{info.name}'; "
            f"trained with objects ~{info.diameter:g} px across (rescale inputs to that). Outputs background, "
            f"interior and boundary probabilities for a seeded watershed. {MNFINDER}"
        )[:1024],
        authors=[bio.Author(name="napari-unet developers")],
        cite=[bio.CiteEntry(text=RONNEBERGER[0], doi=bio.Doi(RONNEBERGER[1]))],
        license=bio.LicenseId("BSD-3-Clause"),
        documentation=bio.FileDescr(source=d / "README.md"),
        covers=[bio.FileDescr(source=d / "cover.png")],
        attachments=[
            bio.FileDescr(source=d / MODEL_MEMBER),
            bio.FileDescr(source=d / "lineage.json"),
            bio.FileDescr(source=d / "TRAINING_DATA_LICENSE.md"),
        ],
        tags=["unet", "segmentation", "instance-segmentation", "nuclei", "fluorescence-light-microscopy", "2d", "napari"],
        inputs=[inputs],
        outputs=[outputs],
        weights=weights,
        config={CONFIG_KEY: ours},
    )  # fmt: skip


def _one_line(exc: Exception) -> str:
    """A validation error in one line: its first lines (which name the fields) joined."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and "errors.pydantic.dev" not in ln]
    return "; ".join(lines[:3])[:300]


def write_package(model: UNet, info: ModelInfo, out: Path, *, overwrite: bool = False) -> Path:
    """Write `model` as a bioimage.io model package (a zip, format 0.5) that ``bioimageio test`` accepts.

    Args:
        model: The network.
        info: Its description (config, training diameter, normalisation, lineage).
        out: The zip to write (atomically: a temporary file renamed into place).
        overwrite: Replace an existing `out`.

    Returns:
        The path written.

    Raises:
        FileExistsError: `out` exists and `overwrite` is False (nothing is written).
        InputError: bioimageio.spec or onnx (the ``[export]`` extra) is missing, or the network cannot be
            exported. A network that torch's ONNX exporter cannot handle (valid mode) is packaged without
            ONNX weights, with a warning.
    """
    import tifffile

    out = Path(out)
    for module in ("bioimageio.spec", "onnx", "onnxscript"):
        _need(module)
    if out.exists() and not overwrite:
        raise FileExistsError(f"'{out}' exists")
    with tempfile.TemporaryDirectory(prefix="napari-unet-bioimageio-") as tmpdir:
        d = Path(tmpdir)
        save_model(model, info, d / MODEL_MEMBER)
        torch.save(exportable(model).state_dict(), d / "weights.pt")
        write_torchscript(model, d / "weights_torchscript.pt")
        try:
            write_onnx(model, d / "weights.onnx")
        except InputError as exc:  # torch's ONNX exporter cannot express every shape contract (valid mode)
            warnings.warn(f"the package has no ONNX weights: {exc}", stacklevel=2)
        (d / "napari_unet_arch.py").write_text(ARCHITECTURE, encoding="utf-8")
        inp, probs = _test_tensors(model, info)
        np.save(d / "test_input.npy", inp)
        np.save(d / "test_output.npy", probs)
        for name, array in (("sample_input.tif", inp[0, 0]), ("sample_output.tif", probs[0])):
            tifffile.imwrite(d / name, array, photometric="minisblack", compression="zlib")
        _write_cover(d / "cover.png", inp, probs)
        (d / "README.md").write_text(_documentation(info), encoding="utf-8")
        (d / "lineage.json").write_text(json.dumps(info.provenance, indent=2, default=str), encoding="utf-8")
        (d / "TRAINING_DATA_LICENSE.md").write_text(MNFINDER_LICENCE, encoding="utf-8")
        from bioimageio.spec import save_bioimageio_package

        try:
            descr = _describe(model, info, d)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise InputError(f"the bioimage.io description is invalid: {_one_line(exc)}") from None
        with atomic_write(out, overwrite=overwrite) as tmp:
            try:
                save_bioimageio_package(descr, output_path=tmp)
            except ValueError as exc:
                raise InputError(f"the bioimage.io package is invalid: {_one_line(exc)}") from None
    return out


# -- reading ----------------------------------------------------------------------------------------------
def _is_rdf_name(name: str) -> bool:
    return name in RDF_NAMES or name.endswith(tuple("." + n for n in RDF_NAMES))


def is_package(path: str | os.PathLike) -> bool:
    """Whether `path` looks like a bioimage.io package: a zip with an rdf, or an ``rdf.yaml``/``bioimageio.yaml``."""
    path = Path(path)
    name = path.name.lower()
    if _is_rdf_name(name):
        return path.is_file()
    if not (name.endswith(".zip") and path.is_file()):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n in RDF_NAMES for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _unsafe_name(name: str) -> bool:
    posix, win = PurePosixPath(name), PureWindowsPath(name)
    return posix.is_absolute() or win.is_absolute() or bool(win.drive) or ".." in win.parts or ".." in posix.parts


def _check_members(zf: zipfile.ZipFile, zip_size: int, where: str) -> dict[str, zipfile.ZipInfo]:
    """Member names and declared sizes are checked before anything is read (path traversal, zip bombs)."""
    bound = min(max(MAX_RATIO * zip_size, MIN_BOUND), MAX_TOTAL)
    members: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for zi in zf.infolist():
        if _unsafe_name(zi.filename):
            raise ModelFileError(f"{where} has a member with an unsafe path ('{zi.filename[:80]}')")
        if zi.filename in members:
            raise ModelFileError(f"{where} has two members named '{zi.filename[:80]}'")
        total += zi.file_size
        if zi.file_size > bound or total > bound:
            raise ModelFileError(
                f"{where} declares {total / 2**20:.0f} MB uncompressed (at most {bound / 2**20:.0f} MB allowed): "
                "it looks like a zip bomb"
            )
        members[zi.filename] = zi
    return members


def _read_member(zf: zipfile.ZipFile, zi: zipfile.ZipInfo, where: str) -> bytes:
    try:
        with zf.open(zi) as f:
            data = f.read(zi.file_size + 1)  # never more than declared (the declared sizes were bounded)
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError, ValueError) as exc:
        raise ModelFileError(f"{where} has a damaged member '{zi.filename}' ({type(exc).__name__})") from None
    if len(data) != zi.file_size:
        raise ModelFileError(f"{where} has a member '{zi.filename}' larger than it declares")
    return data


def _parse_rdf(text: bytes, where: str) -> dict:
    import yaml

    try:
        rdf = yaml.safe_load(text.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{where} has an unreadable rdf ({type(exc).__name__})") from None
    if not isinstance(rdf, dict):
        raise ModelFileError(f"{where} has an rdf that is not a mapping")
    version = str(rdf.get("format_version", ""))
    if rdf.get("type") != "model" or not version.startswith("0.5."):
        raise ModelFileError(
            f"{where} is not a bioimage.io model of format 0.5 (type {rdf.get('type')!r}, format {version!r})"
        )
    config = rdf.get("config")
    if not isinstance(config, dict) or not isinstance(config.get(CONFIG_KEY), dict):
        raise ModelFileError(
            f"{where} was not exported by napari-unet (no config['{CONFIG_KEY}']); it cannot be loaded"
        )
    return rdf


def _model_sha256(rdf: dict, where: str) -> str:
    for entry in rdf.get("attachments") or []:
        if isinstance(entry, dict) and str(entry.get("source", "")) == MODEL_MEMBER:
            sha = entry.get("sha256")
            if isinstance(sha, str) and len(sha) == 64:
                return sha.lower()
    raise ModelFileError(f"{where} lists no attachment '{MODEL_MEMBER}' with a sha256")


def _check_consistent(rdf: dict, info: ModelInfo, where: str) -> None:
    ours = rdf["config"][CONFIG_KEY]
    same = (
        ours.get("format") == FORMAT
        and ours.get("config") == info.config.to_dict()
        and isinstance(ours.get("diameter"), (int, float))
        and math.isclose(float(ours["diameter"]), info.diameter)
    )
    if not same:
        raise ModelFileError(f"{where} describes a different model than its attached '{MODEL_MEMBER}'")


def _load_model_bytes(data: bytes, rdf: dict, where: str) -> tuple[UNet, ModelInfo]:
    if hashlib.sha256(data).hexdigest() != _model_sha256(rdf, where):
        raise ModelFileError(f"{where} has a '{MODEL_MEMBER}' whose sha256 differs from its rdf")
    with tempfile.TemporaryDirectory(prefix="napari-unet-package-") as tmpdir:
        tmp = Path(tmpdir) / MODEL_MEMBER
        tmp.write_bytes(data)
        try:
            model, info = read_model(tmp)
        except ModelFileError as exc:
            raise ModelFileError(f"{where}: {str(exc).replace(str(tmp), MODEL_MEMBER)}") from None
    _check_consistent(rdf, info, where)
    model.info = info
    return model, info


def _read_folder(rdf_path: Path, where: str) -> tuple[UNet, ModelInfo]:
    if rdf_path.stat().st_size > MAX_RDF_BYTES:
        raise ModelFileError(f"{where} has an rdf larger than {MAX_RDF_BYTES // 2**20} MB")
    rdf = _parse_rdf(rdf_path.read_bytes(), where)
    model_path = rdf_path.parent / MODEL_MEMBER
    if not model_path.is_file():
        raise ModelFileError(f"{where} has no '{MODEL_MEMBER}' beside its rdf")
    if model_path.stat().st_size > MAX_TOTAL:
        raise ModelFileError(f"{where} has a '{MODEL_MEMBER}' larger than {MAX_TOTAL // 2**30} GB")
    return _load_model_bytes(model_path.read_bytes(), rdf, where)


def read_package(path: str | os.PathLike) -> tuple[UNet, ModelInfo]:
    """Load a bioimage.io package that napari-unet exported (a zip, or an unpacked folder's rdf.yaml).

    Nothing from the package is executed or unpickled: the weights come from the attached safetensors
    model file, checked against the rdf's sha256; the returned model's `info` is set.

    Raises:
        ModelFileError: a missing, damaged, unsafe (path traversal, zip bomb) or foreign package, in one sentence.
    """
    path = Path(path)
    where = f"bioimage.io package '{path}'"
    if not path.is_file():
        raise ModelFileError(f"{where} does not exist")
    if _is_rdf_name(path.name.lower()):
        return _read_folder(path, where)
    try:
        zip_size = path.stat().st_size
        with zipfile.ZipFile(path) as zf:
            members = _check_members(zf, zip_size, where)
            rdf_name = next((n for n in RDF_NAMES if n in members), None)
            if rdf_name is None:
                raise ModelFileError(f"{where} has no rdf.yaml or bioimageio.yaml at its top level")
            if members[rdf_name].file_size > MAX_RDF_BYTES:
                raise ModelFileError(f"{where} has an rdf larger than {MAX_RDF_BYTES // 2**20} MB")
            rdf = _parse_rdf(_read_member(zf, members[rdf_name], where), where)
            if MODEL_MEMBER not in members:
                raise ModelFileError(f"{where} has no '{MODEL_MEMBER}' member")
            data = _read_member(zf, members[MODEL_MEMBER], where)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise ModelFileError(f"{where} is not a readable zip file ({type(exc).__name__})") from None
    return _load_model_bytes(data, rdf, where)

"""`napari-unet` command line: segment, train, models, demo.

Every failure the user can cause prints one line, ``napari-unet: error: ...``, on stderr and exits
non-zero without a traceback (``--debug`` shows it); outputs are written atomically and never over an
existing file without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .core.errors import InputError

PROG = "napari-unet"


def _progress_bar(total: float, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        file=sys.stderr,
        disable=not enabled,
        leave=False,
        bar_format="{desc} {percentage:3.0f}%|{bar:30}| {elapsed}<{remaining}",
    )


def _expand_inputs(args_input: list[str]) -> tuple[list[Path], bool]:
    """The inputs as given, each folder (not a zarr store) replaced by the images in it, each one on its own
    (napari opens such a folder as one stack); files this tool wrote beside one of them (its labels, their
    OME-Zarr scratch, its doubt map) are not inputs. Also: whether a folder was given."""
    from .core.io import default_output, is_zarr
    from .core.stack_io import FOLDER_SUFFIXES, list_folder_images

    out: list[Path] = []
    folder = False
    for p in map(Path, args_input):
        if not p.is_dir() or is_zarr(p):
            out.append(p)
            continue
        folder = True
        found = list_folder_images(p) + sorted(q for q in p.iterdir() if q.is_dir() and is_zarr(q))
        ours = {o.name for q in found for o in (default_output(q), _side_name(default_output(q), DOUBT_SUFFIX))}
        ours |= {name + ".zarr" for name in ours}  # a TIFF's unfinished OME-Zarr
        skipped = [q.name for q in found if q.name in ours]
        if skipped:
            print(f"{PROG}: {p}: skipping {len(skipped)} files an earlier run wrote ({', '.join(skipped[:3])}"
                  f"{', ...' if len(skipped) > 3 else ''})", file=sys.stderr)  # fmt: skip
        found = [q for q in found if q.name not in ours]
        if not found:
            raise InputError(f"'{p}' holds no images ({', '.join(FOLDER_SUFFIXES)}, or zarr stores)")
        out += found
    return out, folder


def _names_folder(arg: str, several: bool) -> bool:
    """Whether an output argument is a folder: for several outputs (several inputs, or a folder of images given),
    or where it ends in a slash or is an existing folder; an OME-Zarr (``.zarr``) is one output, not a folder."""
    p = Path(arg)
    return several or (p.suffix != ".zarr" and (arg.endswith(("/", os.sep)) or p.is_dir()))


def _outputs(inputs: list[Path], output: str | None, several: bool) -> list[Path]:
    from .core.io import default_output

    if output is None:
        return [default_output(p) for p in inputs]
    out = Path(output)
    if _names_folder(output, several):
        if out.exists() and not out.is_dir() or out.suffix == ".zarr":
            raise InputError(f"-o '{out}' must be a folder when segmenting several inputs")
        return [out / default_output(p).name for p in inputs]
    return [out]


def _check_targets(inputs: list[Path], outputs, scores_out, doubt_out, overwrite: bool) -> None:
    """Before any work: every file this run writes has a known kind, is written once, is none of the inputs
    (nor inside or around one), is new unless `overwrite`, and lies where a file can be created."""
    import tempfile

    from .core.atomic import overlaps
    from .core.bigrun import DOUBT_PATH

    targets: list[tuple[Path, str]] = []  # (path, flag); a TIFF's OME-Zarr scratch is checked against the inputs
    for o, s_out, d_out in zip(outputs, scores_out, doubt_out):
        if o.suffix.lower() not in (".tif", ".tiff") and o.suffix != ".zarr":
            raise InputError(f"-o '{o}': labels are written as .tif, .tiff or .zarr")
        targets.append((o, "-o"))
        if o.suffix != ".zarr":  # where a TIFF of an image larger than memory is built first (resumable)
            targets.append((o.with_name(o.name + ".zarr"), "scratch"))
        if s_out is not None:
            if s_out.suffix.lower() != ".csv":
                raise InputError(f"--scores '{s_out}': scores are written as .csv")
            targets.append((s_out, "--scores"))
        if d_out is not None and d_out != o / DOUBT_PATH:
            if d_out.suffix.lower() not in (".tif", ".tiff"):
                raise InputError(f"--uncertainty '{d_out}': the doubt map is written as .tif or .tiff")
            targets.append((d_out, "--uncertainty"))
    sources = [p for p in inputs if p.exists()]
    seen: dict[Path, str] = {}
    for path, flag in targets:
        if (src := overlaps(path, sources)) is not None:
            raise InputError(f"{'-o' if flag == 'scratch' else flag} '{path}' would write over the input '{src}'")
        key = path.resolve()
        if key in seen:
            twice = "by two inputs" if seen[key] == flag == "-o" else f"({seen[key]} and {flag})"
            raise InputError(f"'{path}' would be written twice {twice}")
        seen[key] = flag
    for path, flag in targets:
        if flag == "scratch":
            continue
        if path.exists() and not overwrite:
            raise InputError(f"'{path}' exists; pass --overwrite to replace it")
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise InputError(f"cannot write '{path}': '{folder}' is not a folder")
        try:
            tempfile.TemporaryFile(dir=folder).close()
        except OSError as exc:
            raise InputError(f"cannot write '{path}': {exc.strerror or exc} in '{folder}'") from None


#: The names `--scores` and `--uncertainty` give their files by default: `_side_name(labels, suffix)`.
SCORES_SUFFIX, DOUBT_SUFFIX = "_scores.csv", "_doubt.tif"


def _side_name(labels: Path, suffix: str) -> Path:
    """`cells_labels.tif` -> `cells` + `suffix`, beside it."""
    return labels.with_name(labels.name.removesuffix(".tif").removesuffix(".zarr").removesuffix("_labels") + suffix)


def _side_outputs(arg: str | None, outputs: list[Path], suffix: str, flag: str, several: bool) -> list[Path | None]:
    """Where `--scores` / `--uncertainty` write for each labels output: beside it by default, or the given
    file (one input) or folder (several). A ``.zarr`` output holds its doubt map itself (``OUT.zarr/doubt``)."""
    if arg is None:
        return [None] * len(outputs)

    from .core.bigrun import DOUBT_PATH

    if arg == "auto":
        return [o / DOUBT_PATH if o.suffix == ".zarr" and flag == "--uncertainty" else _side_name(o, suffix)
                for o in outputs]  # fmt: skip
    target = Path(arg)
    if _names_folder(arg, several):
        if target.exists() and not target.is_dir():
            raise InputError(f"{flag} '{target}' must be a folder when segmenting several inputs")
        return [target / _side_name(o, suffix).name for o in outputs]
    return [target]


def _channel_note(result) -> str:
    c = result.extra.get("channel")
    note = "" if c is None else ", channels averaged" if c == "mean" else f", channel {c}"
    from .core.segment import renormalised_note

    if again := renormalised_note(result):
        note += f", {again}"
    a = result.extra.get("anisotropy")
    if result.extra.get("thin"):
        from .core.segment3d import THIN_NOTE

        note += f", {THIN_NOTE}"
    return note if a is None else f"{note}, 3D objects (anisotropy {a:g})"


def _mode_3d(args: argparse.Namespace, img) -> dict:
    """`segment_iter`'s mode and anisotropy. 3D objects with --3d or --anisotropy, and by default for a ZYX
    stack whose file gives its voxel size (`io.voxel_anisotropy`) unless --2d or --link-iou asks for planes;
    the anisotropy is --anisotropy, else the file's Z step / pixel size, else 1."""
    from .core.io import voxel_anisotropy

    if args.two_d and (args.three_d or args.anisotropy is not None):
        raise InputError("--2d segments plane by plane: leave out --3d and --anisotropy")
    file_a = voxel_anisotropy(img.z_step, img.pixel_size[-1] if img.pixel_size else None)
    spatial = (args.axes or img.axes or "").replace("C", "")
    auto = file_a is not None and spatial == "ZYX" and args.link_iou is None and not args.two_d
    if not (args.three_d or args.anisotropy is not None or auto):
        return {}
    anisotropy = args.anisotropy
    if anisotropy is None and img.z_step and img.pixel_size:
        anisotropy = round(img.z_step / img.pixel_size[-1], 3)
    return {"mode": "3d", "anisotropy": anisotropy}


def _job_3d_or_planes(job, args: argparse.Namespace, img):
    """`job(mode)` with `_mode_3d`'s mode; where 3D objects are only the default (the file gave a voxel size:
    no --3d, --anisotropy), a stack too thin for them is segmented plane by plane (`segment3d.or_planes`)."""
    from .core.segment3d import or_planes

    mode = _mode_3d(args, img)
    explicit = args.three_d or args.anisotropy is not None
    return or_planes(job, mode) if mode and not explicit else job(mode)


def _channel(text: str) -> int | str:
    if text == "mean":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a channel index or 'mean', got '{text}'") from None


def _lanes(args: argparse.Namespace, n_inputs: int, cluster) -> int:
    """How many inputs are segmented at once: on a CPU with more than one thread, `segment.AT_ONCE`, each in a
    thread with its share of torch's threads, so that one image's single-threaded instance step runs while the
    other's network does (the 44 real images of ../shared/data, a screen's fields: 1.18-1.25x, the same labels;
    benchmarks/RESULTS.md, "Two inputs at a time"); one on a GPU, for a cluster run or a single input."""
    import torch

    from .core.device import select_device
    from .core.segment import AT_ONCE

    if n_inputs < 2 or cluster or torch.get_num_threads() < 2:
        return 1
    return AT_ONCE if select_device(args.device).type == "cpu" else 1


def cmd_segment(args: argparse.Namespace) -> int:
    import contextlib
    import threading
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor, wait

    import numpy as np
    import torch

    from .core.io import read_image
    from .core.jobs import shared_torch_threads

    inputs, folder = _expand_inputs(args.input)
    several = len(inputs) > 1 or folder  # a folder of images, even of one, has its outputs in a folder
    outputs = _outputs(inputs, args.output, several)
    scores_out = _side_outputs(args.scores, outputs, SCORES_SUFFIX, "--scores", several)
    doubt_out = _side_outputs(args.uncertainty, outputs, DOUBT_SUFFIX, "--uncertainty", several)
    _check_targets(inputs, outputs, scores_out, doubt_out, args.overwrite)
    from . import api

    model = api.load_model(args.model)
    if args.cluster and args.scheduler:
        raise InputError("pass --cluster or --scheduler, not both")
    cluster = args.cluster or args.scheduler
    if cluster and not all(o.suffix == ".zarr" for o in outputs):
        raise InputError("a cluster run writes OME-Zarr: pass -o OUT.zarr")
    lanes = _lanes(args, len(inputs), cluster)
    stop = threading.Event()

    def one(inp: Path, out: Path, s_out, d_out, items: deque):
        """Read `inp` and segment it into `out` (here, in a thread); an image to run block by block is returned
        to the main thread, which runs it (`_segment_big`: its own progress and resume)."""
        t0 = time.perf_counter()
        img = read_image(inp)
        if img.metadata.get("labels"):
            raise InputError(f"'{inp}' holds labels (a segmentation), not an image to segment")
        if out.suffix == ".zarr" or not isinstance(img.data, np.ndarray):  # lazy: larger than memory
            return img, t0

        def report(item):
            if stop.is_set():  # Ctrl-C, pressed in the main thread: this input stops too
                raise KeyboardInterrupt
            items.append(item)

        return _segment_in_memory(api, args, model, img, inp, out, s_out, d_out, report, t0)

    failures = 0
    written: list[Path] = []
    queue: deque = deque()  # (input, output, future, its progress items), in input order

    def settle() -> None:
        """Wait for the oldest input, its progress on the bar, then say what it gave (it leaves the queue then,
        so that Ctrl-C meanwhile still finds it there)."""
        nonlocal failures
        inp, out, s_out, d_out, fut, items = queue[0]
        with _progress_bar(1.0, inp.name, not args.quiet) as bar:
            while items or not fut.done():
                while items:
                    _show(bar, items.popleft(), args.quiet)
                wait([fut], timeout=0.1)
        queue.popleft()
        try:
            done = fut.result()
            if isinstance(done, tuple):  # an image to run block by block, here
                done = _segment_big(api, args, done[0], model, inp, out, s_out, d_out, cluster, done[1])
        except (ValueError, OSError) as exc:  # InputError, FileExistsError, ... : one line, go on
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            failures += 1
            return
        written.append(out)
        if done:
            print(done)

    threads = shared_torch_threads(lanes) if lanes > 1 else contextlib.nullcontext()
    with threads, ThreadPoolExecutor(lanes, thread_name_prefix="napari-unet-input") as pool:
        if lanes > 1 and not args.quiet:
            n = torch.get_num_threads()
            print(f"{PROG}: {lanes} inputs at a time, {n} thread{'s' if n != 1 else ''} each", file=sys.stderr)
        try:
            for inp, out, s_out, d_out in zip(inputs, outputs, scores_out, doubt_out):
                if len(queue) == lanes:
                    settle()
                items: deque = deque()
                queue.append((inp, out, s_out, d_out, pool.submit(one, inp, out, s_out, d_out, items), items))
            while queue:
                settle()
        except KeyboardInterrupt:
            stop.set()  # the inputs under way stop at their next progress item; one that was writing finishes
            for _inp, out, *_, fut, _items in queue:
                with contextlib.suppress(Exception, KeyboardInterrupt):
                    if isinstance(fut.result(), str):
                        written.append(out)
            done = (
                f"the labels of {len(written)} of {len(inputs)} inputs were written, the last to '{written[-1]}'"
                if written
                else "nothing was written"
            )
            print(f"{PROG}: interrupted; {done}", file=sys.stderr)
            return 130
        finally:  # an input run here that ends the run (Ctrl-C in `_segment_big`) stops the others too
            stop.set()
    return 1 if failures else 0


def _segment_in_memory(api, args, model, img, inp: Path, out: Path, s_out, d_out, report, t0: float) -> str:
    """Segment an image held in memory and write its labels (and scores, doubt map); returns the line to print."""
    from .core.io import write_labels, write_map, write_scores
    from .core.jobs import drain

    def job(mode: dict):
        return api.segment_iter(
            img.data, model, device=args.device, diameter=args.diameter, channel=args.channel,
            axes=args.axes or img.axes, tile=args.tile, link_iou=args.link_iou, tta=args.tta,
            doubt=d_out is not None, block=args.block, merge_cuts=not args.no_merge_cuts,
            min_score=args.min_score, **mode,
        )  # fmt: skip

    result = drain(_job_3d_or_planes(job, args, img), report)
    scale = _pixel_scale(img)
    write_labels(out, result.labels, overwrite=args.overwrite, axes=result.axes, scale=scale)
    plane_shape = () if "anisotropy" in result.extra else tuple(result.labels.shape[:-2])  # 3D objects span planes
    if s_out is not None:
        write_scores(s_out, result.plane_scores, plane_shape=plane_shape, overwrite=args.overwrite)
    if d_out is not None:
        write_map(d_out, result.doubt, overwrite=args.overwrite, axes=result.axes, scale=scale, name="doubt")
    n = len(set(result.labels.ravel().tolist()) - {0}) if result.labels.ndim > 2 else int(result.labels.max())
    return (
        f"{inp.name}: {n} objects, {time.perf_counter() - t0:.1f} s, device {result.device}, "
        f"diameter {result.diameter:.1f} px{_channel_note(result)} -> {out}"
    )


#: What a labels OME-Zarr of ours holds at its top level (`core.bigrun`).
_ZARR_OWN = ("labels", "doubt")


def _segment_big(
    api, args, img, model, inp: Path, out: Path, s_out: Path | None, d_out: Path | None, cluster, t0: float
) -> None:
    """One input to an OME-Zarr, block by block (resumes an unfinished run of the same command).

    A TIFF output of an image larger than memory is made from such an OME-Zarr (`OUT.tif.zarr`, resumable
    the same way) as a tiled BigTIFF, and the OME-Zarr is removed once the TIFF is complete. The doubt map
    (`d_out`) is the OME-Zarr's ``doubt`` image, and a tiled BigTIFF made from it where `d_out` is a TIFF.
    """
    import shutil

    import zarr

    from .core.atomic import unfinished_dir
    from .core.bigrun import DOUBT_PATH, LABELS_PATH
    from .core.io import FileArray, write_labels, write_map, write_scores
    from .core.jobs import drain

    data = FileArray(inp, img.data) if cluster else img.data  # workers reopen the file by its path
    tiff = out.suffix != ".zarr"
    zout = out.with_name(out.name + ".zarr") if tiff else out
    if tiff and zout.exists() and not unfinished_dir(zout).exists():
        # A finished OME-Zarr of ours whose TIFF was not written: make it again, cleanly. Anything else of
        # that name is not ours to remove.
        if not (zout / LABELS_PATH).is_dir() or any(p.name not in (*_ZARR_OWN, ".zattrs", "zarr.json", ".zgroup")
                                                     for p in zout.iterdir()):  # fmt: skip
            raise InputError(f"'{zout}' exists and is not an unfinished output of this command; move it away")
        shutil.rmtree(zout)

    def job(mode: dict):
        return api.segment_iter(
            data, model, device=args.device, diameter=args.diameter, channel=args.channel,
            axes=args.axes or img.axes, tile=args.tile, tta=args.tta, output=zout, cluster=cluster,
            block=args.block, overwrite=args.overwrite, pixel_size=img.pixel_size[-2:] if img.pixel_size else None,
            merge_cuts=not args.no_merge_cuts, min_score=args.min_score, link_iou=args.link_iou,
            doubt=d_out is not None, **mode,
        )  # fmt: skip

    gen = _job_3d_or_planes(job, args, img)
    try:
        with _progress_bar(1.0, inp.name, not args.quiet) as bar:
            result = drain(gen, lambda p, bar=bar: _show(bar, p, args.quiet))
    except KeyboardInterrupt:
        gen.close()
        kept = unfinished_dir(zout)
        print(f"{PROG}: interrupted; the unfinished run is kept in '{kept}': run the same command to resume it",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(130) from None
    group = zarr.open_group(str(zout), mode="r")
    if tiff:
        write_labels(out, group[LABELS_PATH + "/0"], overwrite=args.overwrite, axes=result.axes,
                     scale=_pixel_scale(img))  # fmt: skip
    if d_out is not None and d_out != zout / DOUBT_PATH:
        write_map(d_out, group[DOUBT_PATH + "/0"], overwrite=args.overwrite, axes=result.axes,
                  scale=_pixel_scale(img), name="doubt")  # fmt: skip
    if tiff:
        shutil.rmtree(zout)
    if s_out is not None:
        plane_shape = () if "anisotropy" in result.extra else tuple(img.data.shape[: len(result.axes) - 2])
        write_scores(s_out, result.plane_scores, plane_shape=plane_shape, overwrite=args.overwrite)
    where = f", {result.blocks} block{'s' if result.blocks != 1 else ''}" + (
        f" ({result.resumed_blocks} from the unfinished run)" if result.resumed_blocks else ""
    )
    print(
        f"{inp.name}: {result.n_objects} objects, {time.perf_counter() - t0:.1f} s, device {result.device}, "
        f"diameter {result.diameter:.1f} px{_channel_note(result)}{where} -> {out}"
    )


def _show(bar, item, quiet: bool, by_steps: bool = False) -> None:
    """Draw one yielded item: progress moves the bar, a notice (a fallback) is printed above it."""
    from .core.jobs import Notice

    if isinstance(item, Notice):  # a fallback the user must know of, even with --quiet
        bar.write(f"{PROG}: {item.message}", file=sys.stderr)
        return
    if hasattr(item, "fraction"):
        bar.n = round(item.fraction, 4)
    else:  # a training event
        bar.n = min(bar.total, item.step if by_steps else round(item.elapsed_s, 1))
        loss = f" loss {item.smoothed_loss:.3f}" if item.smoothed_loss is not None else ""
        bar.set_description_str(f"train step {item.step}{loss}", refresh=False)
        if item.message and not quiet:
            bar.write(f"{PROG}: {item.message}", file=sys.stderr)
    bar.refresh()


def _pixel_scale(img) -> dict[str, float] | None:
    """The input's pixel size (Y, X), to record in the labels file."""
    if not img.pixel_size:
        return None
    return {"Y": float(img.pixel_size[-2]), "X": float(img.pixel_size[-1])}


def _read_array(path: str, what: str):
    """A 2D image or a 3D stack from a file (singleton axes dropped); InputError otherwise. An image with channels
    gives the channel that `segment` takes by default (the nuclear-looking one), so that a model is corrected on
    what it segments."""
    import numpy as np

    from .core.io import read_image
    from .core.normalize import default_channel, resolve_axes

    img = read_image(path)
    data = np.asarray(img.data)
    axes = img.axes
    if axes is None and what == "image" and data.ndim in (3, 4):
        try:
            axes = resolve_axes(data.shape)
        except InputError:
            axes = None
    if what == "image" and axes and "C" in axes:
        c = default_channel(data, axes)
        print(f"napari-unet: '{path}': channel {c}, as segment takes it", file=sys.stderr)
        data = np.take(data, c, axis=axes.index("C"))
    data = data.reshape([n for n in data.shape if n != 1] or data.shape)
    if data.ndim not in (2, 3):
        raise InputError(f"{what} '{path}' has shape {data.shape}: train takes 2D images or ZYX/TYX stacks")
    return data


def _training_planes(args: argparse.Namespace):
    """(images, labels, masks) as lists of 2D planes: 2D files as they are, stacks by --planes (and with
    --side-views, the XZ / YZ slices of a ZYX stack whose mask was painted as areas in them)."""
    from .core.trainingdata import side_view_planes, training_planes

    images, labels, masks = [], [], []
    for k, (ip, lp) in enumerate(zip(args.image, args.labels)):
        img, lab = _read_array(ip, "image"), _read_array(lp, "labels")
        msk = _read_array(args.mask[k], "mask") if args.mask else None
        planes = args.planes if img.ndim == 3 else None
        try:
            i, lb, m, _ = training_planes(img, lab, msk, planes=planes)
        except InputError as exc:
            raise InputError(f"'{ip}': {exc}") from None
        images += i
        labels += lb
        masks += m if m is not None else [None] * len(i)
        if args.side_views is not None:
            if img.ndim != 3 or msk is None:
                raise InputError(f"'{ip}': --side-views needs a ZYX stack and its --mask of painted voxels")
            si, sl, sm, _ = side_view_planes(img, lab, msk, anisotropy=args.side_views)
            images, labels, masks = images + si, labels + sl, masks + sm
    return images, labels, (masks if args.mask else None)


def cmd_train(args: argparse.Namespace) -> int:
    from . import api
    from .core import versions
    from .core.atomic import check_output
    from .core.jobs import drain

    n = len(args.image)
    if len(args.labels) != n or (args.mask and len(args.mask) != n):
        raise InputError(
            f"got {n} --image, {len(args.labels)} --labels and {len(args.mask or [])} --mask: give one of each per image"
        )
    if not 0 < args.keep <= 1:
        raise InputError(f"--keep must be in (0, 1], got {args.keep}")
    sources = [*args.image, *args.labels, *(args.mask or []), *([args.init] if args.init else [])]
    check_output(args.output, args.overwrite, sources=sources)  # before reading anything or training
    images, labels, masks = _training_planes(args)
    gen = api.train(
        images,
        labels,
        masks,
        init=args.init,
        seconds=args.seconds,
        steps=args.steps,
        device=args.device,
        seed=args.seed,
        diameter=args.diameter,
        name=args.name,
        scribbles=args.scribbles,
        interpolate=args.keep,
        output=args.output,
        overwrite=args.overwrite,
    )
    by_steps = args.seconds is None and args.steps is not None
    total = float(args.steps if by_steps else (args.seconds or 60.0))
    with _progress_bar(total, "train", not args.quiet) as bar:
        result = drain(gen, lambda ev: _show(bar, ev, args.quiet, by_steps))
    m = result.metrics
    where = "held-out" if m.get("held_out", True) else "training-pixel"
    val = "" if m.get("val_before") is None else f", {where} {m['val_before']:.3f} -> {m['val_after']:.3f}"
    forget = "" if m.get("forgetting") is None else f", forgetting {m['forgetting']:+.3f} AP"
    current = " (now current)" if versions.current_name() == result.name else ""  # a corrupt pointer: not now
    print(
        f"trained {m['steps']} steps in {m['seconds']:.1f} s on {m['device']}{val}{forget}"
        f"{' (improved)' if m.get('improved') else ' (not improved)' if m.get('improved') is False else ''}; "
        f"version {result.name}{current} -> {args.output}"
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    import json

    from .core import versions

    if args.action == "list":
        try:
            cur = versions.current_name(strict=True)
        except versions.ModelFileError as exc:  # nothing is current until a revert
            cur = ""
            print(f"! {exc}")
        print(f"{'*' if cur is None else ' '} bundled  (shipped)  {versions.bundled_model_path()}")
        for v in versions.list_versions():
            if v.problem and not v.provenance:
                print(f"{'*' if v.current else ' '} {v.name}  UNUSABLE: {v.problem}")
                continue
            change = v.val_change
            val = "" if change is None else f"  held-out {change[0]:.3f}->{change[1]:.3f}"
            flag = {True: "  improved", False: "  not improved"}.get(v.improved, "")
            odd = f"  (note: {v.problem})" if v.problem else ""
            print(f"{'*' if v.current else ' '} {v.name}  {v.created}  parent {v.parent}{val}{flag}{odd}")
        return 0
    if args.action == "revert":
        versions.set_current(args.name)
        print(f"current model: {args.name} ({versions.resolve_model_path('current')})")
        return 0
    path = versions.resolve_model_path(args.name)
    info = versions.read_info(path)
    print(json.dumps({
        "name": info.name, "path": str(path), "sha256": versions.file_sha256(path), "config": info.config.to_dict(),
        "diameter": info.diameter, "mask_threshold": info.mask_threshold, "min_score": info.min_score,
        "outline_level": info.outline_level, "normalization": info.normalization,
        "provenance": info.provenance,
    }, indent=2, default=str))  # fmt: skip
    return 0


def _add_train_commands(sub) -> None:
    """The `train` and `models` subcommands."""
    t = sub.add_parser("train", help="fine-tune a model on corrected labels; saves a new version")
    t.add_argument(
        "--image", action="append", required=True,
        help="2D image or ZYX/TYX stack (repeat for several); of a colour or multichannel image, the channel that "
             "segment takes",
    )  # fmt: skip
    t.add_argument("--labels", action="append", required=True, help="instance labels for each --image")
    t.add_argument("--mask", action="append", help="trusted pixels (nonzero) for each --image; default all")
    t.add_argument("--planes", help="planes of stacks to train on, e.g. 0-3,7 (default: planes with labels / mask)")
    t.add_argument("--scribbles", action="store_true", help="--labels are scribbles: 1 = background, 2+ = object")
    t.add_argument(
        "--side-views", type=float, metavar="ANISOTROPY",
        help="also train on the XZ / YZ slices of a ZYX stack where the --mask was painted as areas (in napari's "
             "3D view or with the dims rolled); the value is the Z step / XY pixel size",
    )  # fmt: skip
    t.add_argument("--init", default="current", help="current (default), bundled, a model file or a saved version")
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--seconds", type=float, help="time budget (default 60 s)")
    budget.add_argument("--steps", type=int, help="step budget")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    t.add_argument("--diameter", type=float, help="object diameter in px (default: from the labels)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--keep",
        type=float,
        default=0.5,
        metavar="F",
        help="fraction of the fine-tuning change kept (WiSE-FT): 0.5 forgets less, 1 keeps all (default 0.5)",
    )
    t.add_argument("--name", help="version name (default v<NNNN>-<date>-<time>)")
    t.add_argument("-o", "--output", required=True, help="model file to write (loadable by segment --model)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing -o file")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    t.set_defaults(func=cmd_train)

    m = sub.add_parser("models", help="list, show or revert saved model versions")
    msub = m.add_subparsers(dest="action", required=True)
    msub.add_parser("list", help="saved versions; * marks the current one")
    msub.add_parser("show", help="a model's architecture and lineage (JSON)").add_argument(
        "name", help="version name, bundled, current or a file"
    )
    msub.add_parser("revert", help="make a version (or bundled) the current model").add_argument("name")
    m.set_defaults(func=cmd_models)


def cmd_export(args: argparse.Namespace) -> int:
    from . import api

    t0 = time.perf_counter()
    path = api.export(args.model, args.output, format=args.format, overwrite=args.overwrite)
    print(f"exported {args.model} -> {path} ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s)")
    return 0


def _add_export_command(sub) -> None:
    """The `export` subcommand (bioimage.io package, ONNX, TorchScript)."""
    e = sub.add_parser("export", help="export a model: bioimage.io package (.zip), ONNX (.onnx) or TorchScript (.pt)")
    e.add_argument("model", help="current, bundled, a saved version name or a model file")
    e.add_argument("-o", "--output", required=True, help="file to write; its suffix picks the format")
    e.add_argument("--format", choices=["bioimageio", "onnx", "torchscript"], help="default: from the suffix")
    e.add_argument("--overwrite", action="store_true", help="replace an existing output")
    e.set_defaults(func=cmd_export)


def cmd_demo(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("napari") is None:
        raise InputError("the demo needs napari: pip install 'napari-unet[all]'")
    from ._qt.demo import run_demo

    return run_demo(screenshot=args.screenshot, sample=args.sample)


def _add_demo_command(sub) -> None:
    """The `demo` subcommand (napari with the sample stack, widgets docked, first segmentation shown)."""
    d = sub.add_parser("demo", help="open napari with a sample stack, the widgets and a first segmentation")
    d.add_argument("--screenshot", metavar="PATH", help="save a screenshot of the window there and exit")
    d.add_argument("--sample", default="nuclei3d", choices=["nuclei3d", "nuclei2d"], help="which sample to open")
    d.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Segment microscopy images with a U-Net.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("segment", help="segment images into instance labels (TIFF, or OME-Zarr block by block)")
    s.add_argument("input", nargs="+", help="TIFF/OME-TIFF, .npy, zarr, PNG/JPEG/BMP, or folders of them")
    s.add_argument(
        "-o", "--output",
        help="output TIFF, or OUT.zarr (OME-Zarr labels written block by block, resumable; for images larger "
             "than memory); a folder for several inputs; default <stem>_labels.tif",
    )  # fmt: skip
    s.add_argument("--model", default="current",
                   help="current (default: the version training or 'models revert' chose, else bundled), bundled, "
                        "a model file, or a saved version name")  # fmt: skip
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    s.add_argument("--diameter", type=float, help="object diameter in px (estimated if omitted)")
    s.add_argument(
        "--channel",
        type=_channel,
        help="channel index to segment, or 'mean' (default: the channel that looks most like a nuclear stain)",
    )
    s.add_argument("--axes", help="axis letters, e.g. ZYX, TYX, CYX (default: from the file or guessed)")
    s.add_argument("--tile", type=int, help="largest tile in px (default 512, sized to fit the image)")
    s.add_argument("--link-iou", type=float, help="link objects across planes of a stack above this IoU")
    s.add_argument(
        "--3d", dest="three_d", action="store_true",
        help="a ZYX stack into 3D objects (XY, XZ and YZ views fused, a 3D watershed; about 2-3x the plane-by-plane "
             "time); the default for a ZYX file that gives its voxel size",
    )  # fmt: skip
    s.add_argument(
        "--2d",
        dest="two_d",
        action="store_true",
        help="2D objects per plane even where the file gives a voxel size (the default then is --3d)",
    )
    s.add_argument(
        "--anisotropy", type=float, metavar="A",
        help="3D objects with this Z step / XY pixel size (default: from the file's voxel size, else 1)",
    )  # fmt: skip
    s.add_argument(
        "--tta", action="store_true", help="test-time augmentation: average the four flips (about 2x the time)"
    )
    s.add_argument(
        "--no-merge-cuts", action="store_true",
        help="keep touching objects apart even where they look like one nucleus cut in two (for overlapping nuclei)",
    )  # fmt: skip
    s.add_argument(
        "--min-score", type=float, metavar="S",  # the bundled default: core.scores.MIN_SCORE (not imported: torch)
        help="drop objects whose confidence is below S, 0-1, or below half the median where lower, unless 1.5x as "
             "bright as the median object; 0 keeps every object (default: the model's own, 0.3 for the bundled "
             "model, 0 for fine-tuned versions)",
    )  # fmt: skip
    s.add_argument(
        "--scores", nargs="?", const="auto", metavar="CSV",
        help="also write each object's confidence (label,score; stacks label,plane,score); default <stem>_scores.csv",
    )  # fmt: skip
    s.add_argument(
        "--uncertainty", nargs="?", const="auto", metavar="TIF",
        help="also write the per-pixel doubt map (uint8, 255 = most doubtful); default <stem>_doubt.tif, or "
             "inside a .zarr output (OUT.zarr/doubt)",
    )  # fmt: skip
    s.add_argument(
        "--block", type=int, default=2048,
        help="planes larger than this (px) are segmented in blocks with halos and stitched (default 2048)",
    )  # fmt: skip
    s.add_argument(
        "--cluster", metavar="local:N",
        help="run the blocks on a dask LocalCluster of N one-thread workers (needs -o OUT.zarr)",
    )  # fmt: skip
    s.add_argument(
        "--scheduler", metavar="ADDRESS",
        help="run the blocks on an existing dask cluster, e.g. tcp://host:8786 (needs -o OUT.zarr on shared storage)",
    )  # fmt: skip
    s.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_segment)
    _add_train_commands(sub)
    _add_export_command(sub)
    _add_demo_command(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing was written", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `napari-unet models show x | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except Exception as exc:  # noqa: BLE001 - the contract is one line, no traceback
        if args.debug:
            raise
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

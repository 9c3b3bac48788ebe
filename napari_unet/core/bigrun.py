"""Segment an image of any size into an OME-Zarr, block by block, resumably, here or on a dask cluster.

The output is built in an unfinished folder beside it (`atomic.unfinished_dir`) and renamed to
``OUT.zarr`` only when complete, so a ``.zarr`` is always whole and an unfinished folder is always a
run that did not finish. Inside it,
``napari-unet-run/`` records the run's settings and every finished block (its stitching summary: a
few strips and sums), next to the blocks' provisional labels; running the same command again skips
the finished blocks. Stitching (`core.blockwise`) then writes the final labels chunk by chunk, and
the NGFF metadata (``labels/nuclei``, multiscales + image-label: `core.ngff`) makes it a labels
image that napari and other OME-Zarr viewers open.

Blocks run in this process, or as tasks on dask.distributed (`cluster`): ``"local:N"`` starts a
LocalCluster of N single-threaded workers, an address or a `distributed.Client` uses an existing
cluster. The network is sent once to every worker; each worker writes its blocks' provisional
labels itself, and then a share of the final labels, so the client reads and writes none of the full-size
labels (the output must be on storage the workers share, as on any cluster).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_write, unfinished_dir
from .blockwise import (
    DEFAULT_BLOCK,
    BlockOutput,
    BlockPlan,
    TileReuse,
    finish_block,
    plan_blocks,
    predict_block,
    segment_block_iter,
    stitch_blocks,
)
from .errors import InputError, RunStopped
from .jobs import Notice, drain, overlapped, relay
from .ngff import (
    LABELS_PATH,
    fill_levels,
    open_levels,
    owned_levels,
    write_coarse,
    write_levels,
    write_ngff,
)
from .scores import doubt_map

WORK = "napari-unet-run"
#: After a stop, how long the cluster's running tasks are given to finish their block (s).
STOP_WAIT = 30
#: With `doubt`, the per-pixel doubt map (uint8, 255 = most doubtful; `scores.doubt_map`) is an OME-Zarr
#: image of its own inside the output, beside the labels.
DOUBT_PATH = "doubt"
FORMAT = 1  # of the run record: a run recorded in another format is not resumed


@dataclass
class BigResult:
    """What a run to an OME-Zarr made: where, how many objects, and each object's score."""

    path: Path
    n_objects: int
    diameter: float
    device: str
    axes: str
    blocks: int
    resumed_blocks: int = 0
    plane_scores: list[tuple[tuple[int, ...], int, float]] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    doubt: str | None = None  # the doubt map's group inside `path` (`DOUBT_PATH`), when asked


def _settings(planes, shape, diameter, block, tile, overlap, model_id, channel) -> dict:
    return {
        "format": FORMAT, "shape": list(shape), "diameter": diameter, "block": block, "tile": tile,
        "overlap": overlap, "model": model_id, "channel": channel,
        "ranges": repr(planes.channel_ranges if planes.channel_ranges is not None else planes.range),
        "frames_high": repr(planes.frame_high),
    }  # fmt: skip


def model_id(model) -> str:
    """A digest of the network's weights and settings: a run resumes only with the same model."""
    import hashlib

    h = hashlib.sha256(repr(model.config).encode())
    info = getattr(model, "info", None)
    h.update(repr(tuple(getattr(info, k, None) for k in ("diameter", "mask_threshold", "outline_level"))).encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _open_part(part: Path, settings: dict, spatial, chunks):
    """The unfinished folder's arrays, created or reopened; (output, provisional, doubt map's level 0 or None
    when `settings` does not ask for it, resumed)."""
    import zarr

    record = part / WORK / "run.json"
    resumed = record.exists()
    if resumed:
        try:
            old = json.loads(record.read_text())
        except (OSError, ValueError):
            old = None
        if old != settings:
            raise InputError(
                f"'{part}' is an unfinished run with other settings (image, model or options); "
                "run the same command to resume it, or delete it to start again"
            )
    elif part.exists():
        raise InputError(f"'{part}' exists but holds no napari-unet run; delete it first")
    root = zarr.open_group(str(part), mode="a")
    kw = dict(shape=tuple(spatial), chunks=tuple(chunks), dtype="int32", fill_value=0)
    if resumed:
        out, prov = root[LABELS_PATH + "/0"], zarr.open_array(str(part / WORK / "provisional.zarr"), mode="r+")
        doubt = root[DOUBT_PATH + "/0"] if settings.get("doubt") else None
    else:
        out = root.require_group(LABELS_PATH).create_array("0", **kw)
        prov = zarr.create_array(str(part / WORK / "provisional.zarr"), **kw)
        doubt = (
            root.require_group(DOUBT_PATH).create_array("0", **{**kw, "dtype": "uint8"})
            if settings.get("doubt")
            else None
        )
        _blocks_dir(part).mkdir(parents=True, exist_ok=True)
        with atomic_write(record) as tmp:
            tmp.write_text(json.dumps(settings))
    return out, prov, doubt, resumed


def _blocks_dir(part: Path) -> Path:
    """Where each finished block's summary is recorded."""
    return part / WORK / "blocks"


def _summary_path(part: Path, plane: tuple[int, ...], index: int) -> Path:
    return _blocks_dir(part) / ("_".join(map(str, (*plane, index))) + ".npz")


def _n_recorded(part: Path) -> int:
    """How many block summaries are recorded (not counting one being written: `atomic.temporary_path`)."""
    return sum(e.name.endswith(".npz") and e.name[0] != "." for e in os.scandir(_blocks_dir(part)))


def _save_summary(path: Path, o: BlockOutput) -> None:
    arrays = {f"strip_{k}": v for k, v in o.strips.items()}

    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        bright = {} if o.bright is None else {"bright": o.bright}
        np.savez(f, n=o.n, area=o.area, certainty=o.certainty, seconds=o.seconds, **bright, **arrays)


def _load_summary(path: Path, index: int) -> BlockOutput:
    """A block's counts and sums (its strips are read by `_load_strips` when its seams are matched)."""
    with np.load(path) as z:
        bright = z["bright"] if "bright" in z.files else None
        return BlockOutput(index, None, int(z["n"]), {}, z["area"], z["certainty"], seconds=float(z["seconds"]),
                           bright=bright)  # fmt: skip


def _load_strips(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k.removeprefix("strip_"): z[k] for k in z.files if k.startswith("strip_")}


def _write_block(out: BlockOutput, plane, plan, prov, doubt) -> BlockOutput:
    """Write a block's provisional labels (and doubt map, when `doubt` is an array) into its core; return its
    summary, without the arrays."""
    key = plane + plan.core(out.index)
    if doubt is not None:
        doubt[key] = doubt_map(out.probabilities)
    prov[key] = out.labels
    out.labels = out.probabilities = None
    return out


def block_iter(planes, plane, plan, index: int, infer, params: dict):
    """The generator that segments one block: of a plane (`BlockPlan`) or of a stack into 3D objects
    (`segment3d.StackPlan`)."""
    from .segment3d import StackPlan, segment_3d_block_iter

    if isinstance(plan, StackPlan):
        return segment_3d_block_iter(planes, plane, plan, index, infer, **params)
    return segment_block_iter(planes, plane, plan, index, infer, **_of_plane(params, plane))


def _of_plane(params: dict, plane) -> dict:
    """A 2D run's block settings for `plane`: its own typical object (`segment.typical_diameter`)."""
    return {**params, "typical": params["typical"][plane]}


def run_block(planes, plane, plan, index: int, infer, part: str, params: dict) -> BlockOutput:
    """Segment one block and write its arrays into the unfinished folder `part` (here or on a worker)."""
    import zarr

    out = drain(block_iter(planes, plane, plan, index, infer, params))
    prov = zarr.open_array(str(Path(part) / WORK / "provisional.zarr"), mode="r+")
    doubt = zarr.open_array(str(Path(part) / DOUBT_PATH / "0"), mode="r+") if params.get("probabilities") else None
    return _write_block(out, plane, plan, prov, doubt)


def _worker_blocks(planes, plane, plan, indices, model, device, precision, tta, part, params, stop):
    """`run_block` for each of `indices` (consecutive blocks of `plane`) on a dask worker, in order, sharing
    their seam tiles; each block's summary is recorded as it finishes, so a worker that dies loses only the
    block it was on, and the task run again elsewhere skips the blocks recorded. Stops between blocks once the
    dask `Event` `stop` is set. The network is prepared once per worker and kept there. Returns the blocks
    done."""
    import torch
    from distributed import get_worker

    from .device import select_device
    from .predict import InferenceModel

    worker = get_worker()
    cache = worker.__dict__.setdefault("_napari_unet_nets", {})
    key = (id(model), str(device), precision, tta)
    if key not in cache:
        torch.set_num_threads(max(1, int(getattr(worker, "nthreads", 1))))
        dev = select_device(device)
        if dev.type == "cuda" and torch.cuda.device_count() > 1:  # one GPU per worker, round robin
            dev = torch.device("cuda", abs(hash(worker.name)) % torch.cuda.device_count())
        cache.clear()
        cache[key] = InferenceModel.prepare(model, dev, precision, tta=tta)
    infer = cache[key]
    if len(indices) > 1:
        reuse = TileReuse(plan, infer, scale=params["scale"], tile=params["tile"], overlap=params["overlap"],
                          blocks=indices)  # fmt: skip
        params = {**params, "reuse": reuse}
    done = []
    for i in indices:
        if done and stop.is_set():
            break
        path = _summary_path(Path(part), plane, i)
        if not path.exists():  # a task that dask runs again (its worker died) skips the blocks already recorded
            _save_summary(path, run_block(planes, plane, plan, i, infer, part, params))
        done.append(i)
    return done


def task_groups(todo: list, plan, workers: int, even: bool = False) -> list[list]:
    """The (plane, block) pairs of each dask task: runs of consecutive blocks of a plane in row order, across
    block rows, so that a worker predicts the seam tiles they share once, as one process does. (Runs within
    one block row predicted the tiles along every row seam twice: one worker ran 1.37x slower per block than
    the same blocks in one process; benchmarks/RESULTS.md.) 3D blocks run one a task.

    Each run's first blocks predict again the seam tiles of the run before it. With `even` (identical workers:
    our own LocalCluster) and a single plane to do, each worker gets one run of an equal share (runs end at a
    plane's end, so on several planes equal shares would leave workers idle). Otherwise guided self-scheduling, for
    balance between workers of different speeds: each run is at most the blocks left over the workers, so
    large runs come first and single blocks last, and no worker waits long at the end for another's last task.
    On 2 local workers, 8192^2 in 1024 px blocks: even shares 1.52-1.55x one worker, guided 1.38-1.41x; with
    the lower half of the plane empty both 1.36x (benchmarks/RESULTS.md, "Contiguous halves")."""
    if not isinstance(plan, BlockPlan):
        return [[t] for t in todo]
    groups: list[list] = []
    even = even and len({p for p, _ in todo}) == 1
    share = -(-len(todo) // max(1, workers))
    for k, (p, i) in enumerate(todo):
        g = groups[-1] if groups else None
        if g and len(g) < g[0][2] and g[-1][0] == p and g[-1][1] + 1 == i:
            g.append((p, i))
        else:
            size = share if even else max(1, (len(todo) - k) // max(1, workers))
            groups.append([(p, i, size)])
    return [[(p, i) for p, i, *_ in g] for g in groups]


def _import_block_modules() -> None:
    """What a worker imports before its first block (torch above all: 1.5 s); `client.run` does it on every
    worker at once, where a broadcast scatter of the model would make each worker import it in turn."""
    import torch  # noqa: F401

    from . import predict  # noqa: F401


def _ignore_interrupts() -> None:
    """In a worker of our own LocalCluster: leave Ctrl-C to the client. The workers share the terminal's process
    group, so each got the interrupt too and printed its tracebacks (78 lines on 2 workers) before the client's
    one line; the client stops their tasks and closes the cluster."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def connect(cluster):
    """A `distributed.Client` for `cluster`: ``"local:N"``, a scheduler address, or a Client (used as is)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise InputError("a cluster needs dask.distributed: pip install distributed") from None
    if not isinstance(cluster, str):
        return cluster, False
    if cluster.startswith("local:"):
        n = cluster.removeprefix("local:")
        if not n.isdigit() or int(n) < 1:
            raise InputError(f"--cluster local:N needs a number of workers, got '{cluster}'")
        if int(n) > (cores := os.cpu_count() or 1):  # one-thread workers beyond the cores only compete
            raise InputError(f"--cluster {cluster}: this machine has {cores} cores, so at most local:{cores}")
        import dask

        # Our own cluster, with nobody at its dashboard: the workers' stack sampler (every 10 ms) only takes CPU
        # from the blocks, and a worker is handed a task only when it is free, so that the last blocks are not
        # queued behind a busy worker while another idles (8192^2 on 2 workers of this 2-core machine: 1.57x ->
        # 1.68x one worker, benchmarks/RESULTS.md).
        with dask.config.set({"distributed.worker.profile.enabled": False,
                              "distributed.scheduler.worker-saturation": 1.0}):  # fmt: skip
            lc = LocalCluster(n_workers=int(n), threads_per_worker=1, processes=True, dashboard_address=":0")
        client = Client(lc)
        client.run(_ignore_interrupts)
        return client, True
    try:
        return Client(cluster, timeout="10s"), True
    except (OSError, TimeoutError) as exc:
        raise InputError(f"cannot reach the dask scheduler at '{cluster}': {exc}") from None


def release(client) -> None:
    """Close a client that `connect` opened, and the LocalCluster it started (closing the client alone left the
    workers running, each holding the model, until the process ended)."""
    cluster = client.cluster  # None for a scheduler address
    client.close()
    if cluster is not None:
        cluster.close()


def segment_to_zarr_iter(
    image,
    model,
    out: str | os.PathLike,
    *,
    device: str = "auto",
    diameter: float | None = None,
    channel: int | str | None = None,
    axes: str | None = None,
    tile: int | None = None,
    overlap: int = 32,
    batch_size: int | None = None,
    block: int = DEFAULT_BLOCK,
    cluster=None,
    precision: str = "auto",
    tta: bool = False,
    pixel_size: tuple[float, float] | None = None,
    overwrite: bool = False,
    merge_cuts: bool = True,
    min_score: float | None = None,
    link_iou: float | None = None,
    doubt: bool = False,
    mode: str = "2d",
    anisotropy: float = 1.0,
    block_z: int | str | None = "auto",
) -> Generator[object, None, BigResult]:
    """Segment `image` into the OME-Zarr `out`, block by block; resumes an unfinished run of the same settings.

    Yields:
        `segment.Progress` (plane, planes, blocks done, blocks of the plane) and `jobs.Notice`.

    With `link_iou`, objects of consecutive planes (in the order of the flat plane index, as in `segment`)
    whose IoU exceeds it share one id; ids stay unique but are not renumbered to 1..N.

    With `doubt`, the per-pixel doubt map is written too, block by block, as the OME-Zarr image
    ``OUT.zarr/doubt`` (`DOUBT_PATH`; uint8, 255 = most doubtful, the values `segment(doubt=True)` gives).

    With `mode` ``"3d"``, a ZYX stack is segmented into 3D objects (`segment3d`, voxels `anisotropy` times
    deeper than wide) in blocks of `block` px in Y and X and `block_z` planes (as in
    `segment3d.plan_stack`), each read from `image` plane by plane; the labels are the ones
    `segment3d.segment_3d_iter` returns, written chunk by chunk.

    Returns:
        `BigResult`. Closing the generator (Stop, Ctrl-C) leaves the unfinished folder, to resume.
    """
    from .device import describe, select_device
    from .instances import min_object_size
    from .normalize import iter_planes
    from .predict import InferenceModel
    from .segment import (
        Progress,
        estimate_on_planes,
        input_notes,
        model_info,
        renormalised_before,
        typical_diameter,
    )

    out = Path(out)
    if out.suffix != ".zarr":
        raise InputError(f"a blockwise output must be a .zarr folder, got '{out}'")
    from .atomic import overlaps
    from .io import source_paths

    if (src := overlaps(out, source_paths(image))) is not None:
        raise InputError(f"the output '{out}' would write over the image's own '{src}'; write it elsewhere")
    if out.exists() and not overwrite:
        raise InputError(f"'{out}' exists; pass --overwrite to replace it")
    try:  # as a TIFF output does (`atomic.atomic_write`), the folder is made when missing
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot make the folder of '{out}': {exc.strerror or exc}") from None
    part = unfinished_dir(out)
    info = model_info(model)
    min_score = info.min_score if min_score is None else min_score
    spatial, out_axes, planes = iter_planes(image, axes, channel)
    if mode == "3d":
        from .segment3d import check_anisotropy

        check_anisotropy(anisotropy)
        if out_axes != "ZYX":
            raise InputError(f"3D objects need a ZYX stack, got axes '{out_axes}' (segment each time point on its own)")
    for note in input_notes(planes):
        yield Notice(note)
    dev = select_device(device)
    infer = InferenceModel.prepare(model, dev, precision, tta=tta)
    mid = model_id(model)
    record = part / WORK / "run.json"
    if diameter is None and record.exists():  # a resumed run keeps the diameter it estimated
        try:
            diameter = json.loads(record.read_text()).get("diameter")
        except (OSError, ValueError):
            diameter = None
    if diameter is None:
        yield Progress(0, len(planes.indices), 0, 1, "estimating object size")
        diameter = round(float(estimate_on_planes(infer, planes, info)), 3)
    if mode != "3d":  # (3D objects: measured on cells3d, no gain; benchmarks/RESULTS.md)
        yield Progress(0, len(planes.indices), 0, 1, "reading the nuclei's level")
        planes = yield from renormalised_before(infer, planes, info, diameter)
    scale = info.diameter / diameter
    if mode == "3d":  # the whole stack is one "plane" of blocks cut in Z, Y and X
        from .segment3d import block_params, check_depth, plan_stack

        check_depth(spatial[0], anisotropy, diameter)
        plan = plan_stack(spatial, diameter, scale, anisotropy, block, block_z)
        indices, chunks = [()], (1, *plan.plane.core_shape)
        params = block_params(diameter, scale, anisotropy, info.mask_threshold, tile=tile, overlap=overlap,
                              batch_size=batch_size, probabilities=bool(doubt))  # fmt: skip
    else:
        plan = plan_blocks(planes.plane_shape, diameter, scale, block)
        indices, chunks = planes.indices, (1,) * (len(spatial) - 2) + plan.core_shape
        params = dict(
            scale=scale, min_size=min_object_size(diameter), mask_threshold=info.mask_threshold,
            tile=tile, overlap=overlap, batch_size=batch_size, merge_cuts=merge_cuts, probabilities=bool(doubt),
            outline_level=info.outline_level, diameter=diameter,
            typical={p: typical_diameter(infer, planes.view(p), info, diameter, len(plan)) for p in planes.indices},
        )  # fmt: skip
    settings = _settings(planes, spatial, diameter, block, tile, overlap, mid, str(planes.channel))
    settings["tta"] = tta
    settings["merge_cuts"] = merge_cuts
    settings["doubt"] = bool(doubt)  # a run resumes only if its finished blocks wrote what this one needs
    if mode == "3d":
        settings.update(mode=mode, anisotropy=anisotropy, block_z=block_z)
    client, own = (None, False) if cluster is None else connect(cluster)  # before anything is written
    try:
        output, prov, dmap, resumed = _open_part(part, settings, spatial, chunks)
    except BaseException:
        if own:
            release(client)
        raise
    todo = [(p, i) for p in indices for i in range(len(plan)) if not _summary_path(part, p, i).exists()]
    n_all = len(indices) * len(plan)
    done_before = n_all - len(todo)
    if resumed:
        yield Notice(f"resuming '{part}': {done_before} of {n_all} blocks were done", "info")
    t0 = time.perf_counter()
    try:
        if client is None:
            yield from _run_here(planes, indices, plan, todo, infer, params, prov, dmap, part, done_before, n_all)
        else:
            yield from _run_on_cluster(client, planes, plan, todo, model, device, precision, tta, params, part, mid,
                                       done_before, n_all)  # fmt: skip
        yield Progress(0, 1, 0, 1, "stitching")
        t_stitch = time.perf_counter()
        linking = link_iou is not None and len(indices) > 1
        coarse = [] if linking else open_levels(part / LABELS_PATH, output)  # linking rewrites level 0 first
        offset, plane_scores = _stitch(indices, plan, part, output, min_score, coarse, client)
        n_objects, levels = offset, len(coarse) + 1
        if linking:
            yield Progress(0, 1, 0, 1, "linking planes")
            n_objects, plane_scores = _link(planes.indices, plan, output, link_iou, plane_scores)
            levels = write_levels(part / LABELS_PATH, output)
        z_step = anisotropy if mode == "3d" else None
        write_ngff(part, out_axes, spatial, pixel_size, levels, z_step=z_step)
        if dmap is not None:
            levels = write_levels(part / DOUBT_PATH, dmap)
            write_ngff(part, out_axes, spatial, pixel_size, levels, DOUBT_PATH, z_step=z_step)
        shutil.rmtree(part / WORK)
        _replace(part, out, overwrite)
        t_stitch = time.perf_counter() - t_stitch
    except RunStopped:  # already one line (an OSError too)
        raise
    except OSError as exc:  # a full disk, a storage error: the finished blocks stay, the run resumes
        raise RunStopped(
            f"{exc.strerror or exc} while writing '{part}'; the finished blocks are kept: "
            "fix the storage and run the same command to resume"
        ) from exc
    finally:
        if own:
            release(client)
    return BigResult(
        out, n_objects, float(diameter), describe(dev), out_axes, n_all, done_before, plane_scores,
        {"channel": planes.channel, "seconds": time.perf_counter() - t0, "stitch_seconds": t_stitch,
         **({"anisotropy": anisotropy, "slabs": plan.slabs} if mode == "3d" else {})}, DOUBT_PATH if doubt else None,
    )  # fmt: skip


def _replace(part: Path, out: Path, overwrite: bool) -> None:
    """Move the finished folder to `out`; a replaced output is removed only once the new one is in place."""
    if out.exists():
        if not overwrite:
            raise InputError(f"'{out}' appeared during the run; the result is kept in '{part}'")
        old = out.with_name(out.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
        part.rename(out)
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    else:
        part.rename(out)


def default_output(source: str | os.PathLike | None, name: str) -> Path:
    """Where the widget writes a cluster run's labels: ``<stem>_labels.zarr`` beside the image's file, else in
    the user's data folder. An existing output is never reused; an unfinished run of that name is (to resume)."""
    import re

    import platformdirs

    if source:
        folder, stem = Path(source).parent, Path(source).name.split(".")[0]
    else:
        folder, stem = Path(platformdirs.user_data_dir("napari-unet")) / "segmentations", re.sub(r"\W+", "_", name)
        folder.mkdir(parents=True, exist_ok=True)
    for k in range(1, 1000):
        out = folder / (f"{stem}_labels.zarr" if k == 1 else f"{stem}_labels-{k}.zarr")
        if unfinished_dir(out).exists() or not out.exists():
            return out
    raise InputError(f"too many outputs named '{stem}_labels-N.zarr' in '{folder}'")


def is_labels_zarr(path: Path) -> bool:
    """True for an OME-Zarr written by `segment_to_zarr_iter` (or any with ``labels/nuclei``)."""
    return (Path(path) / "labels" / "nuclei").is_dir()


def _run_here(planes, indices, plan, todo, infer, params, prov, doubt, part, n_done, n_all):
    """Run the blocks in this process, recording each when its arrays and summary are written.

    A block is in memory at a time, and the next one's probabilities. On a CPU, a 2D block's instance step (`blockwise.finish_block`) runs in a
    thread while the network predicts the next block (`jobs.overlapped`): 16384^2 in 2048 px blocks 118 -> 80 s,
    peak 1,062 -> 1,194 MB. (Two whole blocks at once took it to 79 s but 1,502 MB, at the 1.5 GB this path
    promises; benchmarks/RESULTS.md, "Two planes at a time".)"""
    import torch

    from .segment import AT_ONCE, block_progress

    items = [(n_done + j + 1, p, i) for j, (p, i) in enumerate(todo)]  # (the block's number in the run, ...)

    def progress(n, p, i):
        return lambda dt: block_progress(indices.index(p), len(indices), i, len(plan), *dt, f"block {n}/{n_all}")

    def record(p, i, o):
        _save_summary(_summary_path(part, p, i), _write_block(o, p, plan, prov, doubt))

    if not isinstance(plan, BlockPlan):  # 3D blocks: one after another
        for n, p, i in items:
            record(p, i, (yield from relay(block_iter(planes, p, plan, i, infer, params), progress(n, p, i))))
        return
    network = ("scale", "tile", "overlap", "batch_size")
    rest = {k: v for k, v in params.items() if k not in network}
    reuse = {}  # the tiles neighbouring blocks of a plane share

    def predict(item):
        n, p, i = item
        if p not in reuse:
            reuse.clear()
            reuse[p] = TileReuse(plan, infer, scale=params["scale"], tile=params["tile"], overlap=params["overlap"])
        t0 = time.perf_counter()
        gen = predict_block(planes, p, plan, i, infer, reuse=reuse[p], **{k: params[k] for k in network})
        return (yield from relay(gen, progress(n, p, i))), t0

    def finish(item, value):
        (_, p, i), (probs, t0) = item, value
        record(p, i, finish_block(planes, p, plan, i, probs, t0, **_of_plane(rest, p)))

    cpu = infer.device.type == "cpu" and torch.get_num_threads() > 1 and AT_ONCE > 1
    yield from overlapped(items, predict, finish, threads=cpu)


def _run_on_cluster(client, planes, plan, todo, model, device, precision, tta, params, part, mid, n_done, n_all):
    """Run the blocks as dask tasks; the network and the planes go to every worker once."""
    import pickle
    from concurrent.futures import CancelledError

    from distributed import Event, KilledWorker, LocalCluster, as_completed, wait

    from .segment import Progress

    try:
        pickle.dumps(planes)
    except Exception as exc:  # noqa: BLE001 - e.g. an open file handle
        raise InputError(
            f"the image ({type(planes.image).__name__}) cannot be sent to dask workers ({exc}); "
            "pass a numpy, zarr or dask array, or napari_unet.core.io.FileArray(path)"
        ) from None
    client.run(_import_block_modules)
    net = client.scatter(model, broadcast=True)
    planes_f = client.scatter(planes, broadcast=True)
    stop = Event(f"napari-unet-stop-{mid}-{uuid.uuid4().hex}")
    threads = client.nthreads()
    workers = sum(threads.values())  # tasks that run at once
    even = isinstance(client.cluster, LocalCluster) and len(set(threads.values())) == 1  # identical workers
    futures = {
        client.submit(_worker_blocks, planes_f, g[0][0], plan, [i for _, i in g], net, device, precision, tta,
                      str(part), params, stop, pure=False,
                      key=f"napari-unet-blocks-{'_'.join(map(str, (*g[0][0], g[0][1], g[-1][1])))}-{mid}"): g
        for g in task_groups(todo, plan, workers, even)
    }  # fmt: skip
    # The client is idle while the workers run: import what the stitch needs now (1 s, dask.array among it).
    threading.Thread(target=importlib.import_module, args=("ome_zarr.writer",), daemon=True).start()
    # A task runs many blocks; each is recorded as it finishes, so the progress counts the records.
    shown = n_done
    try:
        pending = as_completed(futures)
        while not pending.is_empty():
            if not pending.has_ready():
                time.sleep(0.25)
                if (n := _n_recorded(part)) != shown:
                    shown = n
                    yield Progress(0, 1, n, n_all, f"block {n}/{n_all} on the cluster")
                continue
            fut = next(pending)
            g = futures[fut]
            try:
                fut.result()
            except (KilledWorker, CancelledError) as exc:  # a worker died; the cluster dropped the task
                what = "died" if isinstance(exc, KilledWorker) else "died or the cluster cancelled the task"
                blocks = f"block {g[0][1]}" if len(g) == 1 else f"blocks {g[0][1]}-{g[-1][1]}"
                raise RunStopped(
                    f"dask workers {what} on {blocks} of plane {g[0][0] or 0} (out of memory?); the finished blocks "
                    f"are kept in '{part}': run the same command to resume, with a smaller --block or more memory"
                ) from None
        if shown != n_all:
            yield Progress(0, 1, n_all, n_all, f"block {n_all}/{n_all} on the cluster")
    finally:  # Cancel / Ctrl-C / an error: nothing keeps running on the cluster
        stop.set()  # a running task stops after its block
        # ... and is let finish it before the cluster closes: a worker closed mid-task printed dask's tracebacks
        # (its own client's) after our one line. A second Ctrl-C stops waiting.
        with contextlib.suppress(TimeoutError):
            wait(list(futures), timeout=STOP_WAIT)
        for fut in futures:
            fut.cancel()


def _stitch(indices, plan, part, output, min_score, levels=(), client=None):
    """Stitch plane by plane (a stack of 3D objects: as one) from the recorded summaries, then write the final
    labels block by block into level 0 and the coarser `levels` (`_open_levels`): on the cluster's workers
    when there is a `client`, else here. Levels whose chunks straddle blocks are written here afterwards, from
    the last level the blocks wrote."""
    offset, plane_scores, jobs = 0, [], []
    for p in indices:
        outputs = {i: _load_summary(_summary_path(part, p, i), i) for i in range(len(plan))}
        # Two block rows (slabs) of strips in memory at a time, however many blocks there are.
        strips = functools.lru_cache(maxsize=2 * plan.seam_reach + 2)(
            lambda i, p=p: _load_strips(_summary_path(part, p, i))
        )
        st = stitch_blocks(plan, outputs, first_id=offset + 1, strips=strips, min_score=min_score)
        jobs += [(p + plan.core(i), lut) for i, lut in st.luts.items()]
        plane_scores += [(tuple(int(v) for v in p), i, s) for i, s in st.scores.items()]
        offset += st.n_objects
    owned = owned_levels([key for key, _ in jobs], levels)
    if client is None:
        _write_final(str(part), jobs, owned)
    else:
        _write_final_on(client, part, jobs, owned)
    fill_levels(levels[owned - 1] if owned else output, levels[owned:])  # small levels whose chunks blocks share
    return offset, plane_scores


def _write_final(part: str, jobs: list, levels: int) -> None:
    """Write each job's block (level-0 `key`, `lut`: provisional id -> final id) of the unfinished folder `part`
    into level 0 of its labels and the first `levels` coarser levels (`_owned_levels`)."""
    import zarr

    group = zarr.open_group(str(Path(part) / LABELS_PATH), mode="r+")
    output, coarse = group["0"], [group[str(k)] for k in range(1, levels + 1)]
    prov = zarr.open_array(str(Path(part) / WORK / "provisional.zarr"), mode="r")
    for key, lut in jobs:
        output[key] = block = lut[prov[key]].astype(np.int32)
        write_coarse(coarse, key, block)


def _write_final_on(client, part: Path, jobs: list, levels: int) -> None:
    """`_write_final` as dask tasks of a few blocks each, about four a worker."""
    from distributed import KilledWorker

    size = max(1, -(-len(jobs) // (4 * max(1, sum(client.nthreads().values())))))
    futures = [
        client.submit(_write_final, str(part), jobs[k : k + size], levels, pure=False)
        for k in range(0, len(jobs), size)
    ]
    try:
        client.gather(futures)
    except KilledWorker:
        raise RunStopped(
            f"dask workers died while writing the labels; the finished blocks are kept in '{part}': "
            "run the same command to resume"
        ) from None
    finally:
        client.cancel(futures)


def _link(indices, plan, output, iou: float, plane_scores):
    """Link the stitched planes of `output` in place, plane after plane, block by block (bounded memory).

    Rerunning it after a stop is safe: a resumed run stitches every plane again from the summaries first.
    Returns (number of distinct objects, the plane scores under the linked ids)."""
    from .instances import apply_links, overlap_counts, plane_links, sum_counts

    luts: dict[tuple[int, ...], dict[int, int]] = {}
    for prev_p, p in zip(indices, indices[1:]):
        pairs, areas = [], []
        for i in range(len(plan)):
            y0, y1, x0, x1 = plan.block(i).core
            keys, inter, ids, area = overlap_counts(output[prev_p + (slice(y0, y1), slice(x0, x1))],
                                                    output[p + (slice(y0, y1), slice(x0, x1))])  # fmt: skip
            pairs.append((keys, inter))
            areas.append((ids, area))
        links = plane_links(*sum_counts(pairs), *sum_counts(areas), iou)
        luts[p] = links
        if links:
            for i in range(len(plan)):
                y0, y1, x0, x1 = plan.block(i).core
                key = p + (slice(y0, y1), slice(x0, x1))
                output[key] = apply_links(output[key], links)
    linked = [(q, luts.get(q, {}).get(i, i), s) for q, i, s in plane_scores]
    return len({i for _, i, _ in linked}), linked

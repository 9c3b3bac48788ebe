"""Images of any size to OME-Zarr: block by block, resumable, the same labels here and on a dask cluster."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_unet import api
from napari_unet.core.errors import InputError
from napari_unet.core.io import read_image
from napari_unet.core.jobs import Notice, drain


@pytest.fixture(scope="module")
def net():
    return api.load_model("bundled")


@pytest.fixture
def image():
    """The bundled real sample, mirrored out to 700 x 900 (a few hundred nuclei, so every comparison has objects)."""
    sample = read_image(Path(__file__).parents[1] / "napari_unet" / "resources" / "samples" / "nuclei2d_u2os.tif")
    return np.pad(sample.data, ((0, 188), (0, 388)), mode="reflect")


def _zarr_labels(path):
    return zarr.open_group(str(path), mode="r")["labels/nuclei/0"][:]


def test_zarr_output_is_the_in_memory_result_as_ngff_labels(net, image, tmp_path):
    ref = api.segment(image, net, diameter=20, block=256)
    assert ref.max() > 100
    out = tmp_path / "out.zarr"
    lab = api.segment(image, net, diameter=20, block=256, output=out)
    np.testing.assert_array_equal(lab[:], ref)
    assert not (tmp_path / "out.zarr.part").exists()
    group = zarr.open_group(str(out), mode="r")
    attrs = dict(group["labels/nuclei"].attrs)
    meta = attrs.get("ome", attrs)
    assert "image-label" in meta and meta["multiscales"][0]["datasets"][0]["path"] == "0"
    back = read_image(out)
    assert back.metadata.get("labels") and back.axes == "YX"
    with pytest.raises(InputError, match="exists"):
        api.segment(image, net, diameter=20, block=256, output=out)


def test_coarser_levels_are_written_and_read_as_a_multiscale_labels_layer(net, image, tmp_path, monkeypatch):
    from napari_unet._qt.reader import get_reader
    from napari_unet.core import ngff
    from napari_unet.core.stack_io import image_layers

    monkeypatch.setattr(ngff, "LEVEL_SIDE", 200)  # 900 px wide: levels of 900, 450, 225 and 113 px
    out = tmp_path / "out.zarr"
    drain(api.segment_iter(image, net, diameter=20, block=256, output=out, pixel_size=(0.5, 0.5)))
    lab = _zarr_labels(out)
    group = zarr.open_group(str(out / "labels" / "nuclei"), mode="r")
    attrs = dict(group.attrs)
    datasets = attrs.get("ome", attrs)["multiscales"][0]["datasets"]
    assert [d["path"] for d in datasets] == ["0", "1", "2", "3"]
    assert [d["coordinateTransformations"][0]["scale"] for d in datasets] == [[0.5 * 2**k] * 2 for k in range(4)]
    expect = lab
    for k in range(1, 4):
        expect = expect[::2, ::2]
        np.testing.assert_array_equal(group[str(k)][:], expect)
    back = read_image(out)
    assert back.pixel_size == (0.5, 0.5)
    data, kwargs, kind = image_layers(back, "labels")[0]
    [(by_plugin, _, _)] = get_reader(str(out))(str(out))  # as napari's File > Open does it
    assert [d.shape for d in by_plugin] == [d.shape for d in data]
    assert (
        kind == "labels"
        and kwargs["scale"] == [0.5, 0.5]
        and [d.shape for d in data] == [(700, 900), (350, 450), (175, 225), (88, 113)]
    )
    np.testing.assert_array_equal(np.asarray(data[2]), lab[::4, ::4])


def test_an_interrupted_run_resumes_where_it_stopped(net, image, tmp_path):
    out = tmp_path / "out.zarr"
    full = api.segment(image, net, diameter=20, block=256)
    gen = api.segment_iter(image, net, diameter=20, block=256, output=out)
    blocks = tmp_path / "out.zarr.part" / "napari-unet-run" / "blocks"
    for _ in gen:  # stop (as Stop or Ctrl-C would) once two blocks are recorded
        if blocks.exists() and len(list(blocks.iterdir())) >= 2:
            break
    gen.close()
    assert not out.exists() and (tmp_path / "out.zarr.part").exists()
    with pytest.raises(InputError, match="other settings"):
        drain(api.segment_iter(image, net, diameter=25, block=256, output=out))
    with pytest.raises(InputError, match="other settings"):  # its finished blocks wrote no doubt map
        drain(api.segment_iter(image, net, diameter=20, block=256, output=out, doubt=True))
    items = []
    result = drain(api.segment_iter(image, net, diameter=20, block=256, output=out), items.append)
    assert any(isinstance(i, Notice) and "resuming" in i.message for i in items)
    assert result.resumed_blocks >= 2 and result.blocks == 12
    np.testing.assert_array_equal(_zarr_labels(out), full)


def test_a_run_recorded_before_the_objects_intensities_were_kept_resumes(net, image, tmp_path):
    # Block summaries of an older napari-unet have no `bright` sums: the plane keeps the score floor alone
    # (`stitch_blocks`), with no error.
    out = tmp_path / "out.zarr"
    gen = api.segment_iter(image, net, diameter=20, block=256, output=out)
    blocks = tmp_path / "out.zarr.part" / "napari-unet-run" / "blocks"
    for _ in gen:
        if blocks.exists() and len(list(blocks.iterdir())) >= 2:
            break
    gen.close()
    for f in blocks.glob("*.npz"):
        with np.load(f) as z:
            kept = {k: z[k] for k in z.files if k != "bright"}
        with open(f, "wb") as fh:
            np.savez(fh, **kept)
    result = drain(api.segment_iter(image, net, diameter=20, block=256, output=out))
    assert result.resumed_blocks >= 2
    np.testing.assert_array_equal(_zarr_labels(out), api.segment(image, net, diameter=20, block=256))


def test_an_interrupted_run_with_its_doubt_map_resumes_to_the_in_memory_map(net, image, tmp_path):
    ref = drain(api.segment_iter(image, net, diameter=20, block=256, doubt=True))
    out = tmp_path / "out.zarr"
    gen = api.segment_iter(image, net, diameter=20, block=256, output=out, doubt=True)
    blocks = tmp_path / "out.zarr.part" / "napari-unet-run" / "blocks"
    for _ in gen:
        if blocks.exists() and len(list(blocks.iterdir())) >= 3:
            break
    gen.close()
    res = drain(api.segment_iter(image, net, diameter=20, block=256, output=out, doubt=True))
    assert res.resumed_blocks >= 3
    np.testing.assert_array_equal(zarr.open_array(str(out / "doubt" / "0"), mode="r")[:], ref.doubt)
    np.testing.assert_array_equal(_zarr_labels(out), ref.labels)


def test_two_local_workers_give_the_same_labels_and_doubt(net, image, tmp_path):
    pytest.importorskip("distributed")
    here = drain(api.segment_iter(image, net, diameter=20, block=256, doubt=True))
    res = drain(api.segment_iter(image, net, diameter=20, block=256, output=tmp_path / "c.zarr", cluster="local:2",
                                 doubt=True))  # fmt: skip
    np.testing.assert_array_equal(_zarr_labels(res.path), here.labels)
    np.testing.assert_array_equal(zarr.open_array(str(res.path / res.doubt / "0"), mode="r")[:], here.doubt)
    assert len(res.plane_scores) == len(np.unique(here.labels)) - 1


def test_two_local_workers_write_the_final_labels_and_their_coarser_levels(net, image, tmp_path, monkeypatch):
    """Cores of 256 px: each chunk of every coarser level is one block's, so the workers write them too."""
    pytest.importorskip("distributed")
    from napari_unet.core import bigrun, ngff

    monkeypatch.setattr(ngff, "LEVEL_SIDE", 100)  # 768 px wide: levels of 384, 192 and 96 px
    crop = image[:512, :768]
    writes = []
    monkeypatch.setattr(bigrun, "_write_final", lambda *a, real=bigrun._write_final: writes.append(a) or real(*a))
    here = drain(api.segment_iter(crop, net, diameter=20, block=256, output=tmp_path / "h.zarr"))
    assert [(len(jobs), levels) for _, jobs, levels in writes] == [(6, 3)]  # in this process: all at once
    res = drain(api.segment_iter(crop, net, diameter=20, block=256, output=tmp_path / "c.zarr", cluster="local:2"))
    assert len(writes) == 1  # the client wrote no block (the workers' module is not patched)
    ref = api.segment(crop, net, diameter=20, block=256)
    for path in (here.path, res.path):
        group = zarr.open_group(str(path / "labels" / "nuclei"), mode="r")
        lab = group["0"][:]
        np.testing.assert_array_equal(lab, ref)
        for k in range(1, 4):
            np.testing.assert_array_equal(group[str(k)][:], lab[:: 2**k, :: 2**k])


def test_coarser_levels_go_to_the_blocks_only_where_each_chunk_is_one_blocks():
    from napari_unet.core.blockwise import BlockPlan
    from napari_unet.core.ngff import owned_levels

    class Level:
        def __init__(self, shape, chunks):
            self.shape, self.chunks = shape, chunks

    def owned(shape, core, n_levels):
        plan = BlockPlan(shape, core, halo=32, strip=4)
        levels = [
            Level(tuple(-(-n // 2**k) for n in shape), tuple(-(-c // 2**k) for c in core))
            for k in range(1, n_levels + 1)
        ]
        return owned_levels([plan.core(i) for i in range(len(plan))], levels)

    assert owned((4096, 8192), (1024, 1024), 4) == 4
    assert owned((700, 900), (234, 225), 3) == 0  # odd cores: level 1's chunks straddle two blocks
    assert owned((3000, 3000), (1000, 1000), 5) == 3  # 1000 = 8 x 125; a 16th of it is not whole
    assert owned((1000, 1000), (1000, 1000), 5) == 5  # one block owns everything


def _worker_settings():
    import dask

    return dask.config.get("distributed.worker.profile.enabled")


def test_our_local_cluster_hands_out_tasks_only_to_free_workers_samples_no_stacks_and_goes_with_the_run():
    pytest.importorskip("distributed")
    import psutil

    from napari_unet.core.bigrun import connect, release

    client, own = connect("local:1")
    try:
        assert own
        assert set(client.run(_worker_settings).values()) == {False}
        assert client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.WORKER_SATURATION) == 1.0
        workers = list(client.run(os.getpid).values())
    finally:
        release(client)
    assert workers and not any(psutil.pid_exists(p) for p in workers)  # the worker processes are gone


def test_cluster_tasks_are_runs_of_consecutive_blocks_of_a_plane_largest_first_or_even_shares():
    from napari_unet.core.bigrun import task_groups
    from napari_unet.core.blockwise import BlockPlan

    plan = BlockPlan((4096, 4096), (1024, 1024), halo=64, strip=4)  # 4 x 4 blocks
    todo = [((), i) for i in range(16) if i != 5]  # block 5 was done before a resume
    groups = [[i for _, i in g] for g in task_groups(todo, plan, workers=1)]
    assert groups == [[0, 1, 2, 3, 4], list(range(6, 16))]  # across block rows, not across a gap
    whole = [((), i) for i in range(16)]
    assert [len(g) for g in task_groups(whole, plan, workers=2)] == [8, 4, 2, 1, 1]  # guided: halves first
    assert [len(g) for g in task_groups(whole, plan, workers=3, even=True)] == [6, 6, 4]  # identical workers
    assert [[i for _, i in g] for g in task_groups(todo, plan, workers=2, even=True)] == [
        [0, 1, 2, 3, 4], [6, 7, 8, 9, 10, 11, 12, 13], [14, 15]]  # fmt: skip
    two_planes = [((t,), i) for t in range(2) for i in range(16)]
    assert all(len({p for p, _ in g}) == 1 for g in task_groups(two_planes, plan, workers=1))
    # runs end at a plane's end: equal shares of two planes would be three runs for two workers; guided instead
    assert [len(g) for g in task_groups(two_planes[8:], plan, workers=2, even=True)] == [8, 8, 4, 2, 1, 1]


def test_a_cluster_task_stops_after_its_block_and_run_again_skips_what_it_recorded(net, image, tmp_path, monkeypatch):
    """Cancel sets the run's stop event: a task of several blocks running on a worker finishes the block it is
    on, records it, and runs no more (here the event is set before it starts: one block). Run again, the task
    skips the block recorded."""
    import types

    import distributed

    from napari_unet.core import bigrun
    from napari_unet.core.blockwise import plan_blocks
    from napari_unet.core.instances import min_object_size
    from napari_unet.core.normalize import iter_planes

    monkeypatch.setattr(distributed, "get_worker", lambda: types.SimpleNamespace(nthreads=1, name="w"))
    spatial, _, planes = iter_planes(image, None, None)
    scale = 30.0 / 20
    plan = plan_blocks(planes.plane_shape, 20, scale, 256)
    part = tmp_path / "o.zarr.part"
    bigrun._open_part(part, {"run": 1}, spatial, plan.core_shape)
    params = dict(scale=scale, min_size=min_object_size(20), mask_threshold=0.5, tile=None, overlap=32,
                  batch_size=None, merge_cuts=True, probabilities=False, typical={(): 20.0})  # fmt: skip
    stopped = types.SimpleNamespace(is_set=lambda: True)
    done = bigrun._worker_blocks(planes, (), plan, [0, 1, 2], net, "cpu", "auto", False, str(part), params, stopped)
    assert done == [0] and sorted(p.name for p in (part / bigrun.WORK / "blocks").iterdir()) == ["0.npz"]
    # The same task run again (dask reschedules the task of a worker that died): block 0 is not segmented again.
    ran, run_block = [], bigrun.run_block
    monkeypatch.setattr(bigrun, "run_block", lambda *a: ran.append(a[3]) or run_block(*a))
    going = types.SimpleNamespace(is_set=lambda: False)
    done = bigrun._worker_blocks(planes, (), plan, [0, 1], net, "cpu", "auto", False, str(part), params, going)
    assert done == [0, 1] and ran == [1]


class _KillsItsWorker(np.ndarray):
    """An image whose rows below 400 kill the dask worker process that reads them (a worker that dies)."""

    def __getitem__(self, key):
        rows = key[0] if isinstance(key, tuple) else key
        if isinstance(rows, slice) and (rows.stop or 0) > 400:
            try:
                from distributed import get_worker

                get_worker()
            except ValueError:  # not on a worker: the client reads it as any array
                pass
            else:
                os._exit(1)
        return np.asarray(self)[key]


def test_a_worker_that_dies_stops_in_one_line_and_the_run_resumes(net, image, tmp_path):
    pytest.importorskip("distributed")
    import dask

    from napari_unet.core.errors import RunStopped

    out = tmp_path / "c.zarr"
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with pytest.raises(
            RunStopped, match="dask workers died.* on blocks? [0-9-]+ of plane 0 .*run the same command to resume"
        ) as err:
            drain(api.segment_iter(image.view(_KillsItsWorker), net, diameter=20, block=256, output=out,
                                   cluster="local:1"))  # fmt: skip
    assert "\n" not in str(err.value) and not out.exists()  # one line; no output that looks finished
    events = []
    res = drain(api.segment_iter(image, net, diameter=20, block=256, output=out, cluster="local:1"), events.append)
    resumed = [e.message for e in events if isinstance(e, Notice) and "resuming" in e.message]
    assert resumed and not resumed[0].startswith(f"resuming '{out}': 0 of")
    np.testing.assert_array_equal(
        _zarr_labels(res.path), drain(api.segment_iter(image, net, diameter=20, block=256)).labels
    )


def test_the_doubt_map_is_an_ome_zarr_image_beside_the_labels(net, image, tmp_path, monkeypatch):
    from napari_unet._qt.reader import get_reader
    from napari_unet.core import ngff

    monkeypatch.setattr(ngff, "LEVEL_SIDE", 500)  # 900 px wide: two levels of each
    ref = drain(api.segment_iter(image, net, diameter=20, block=256, doubt=True))
    assert ref.doubt.max() > 200 and ref.doubt.min() < 20  # a real map: doubtful borders, sure interiors
    out = tmp_path / "out.zarr"
    res = drain(api.segment_iter(image, net, diameter=20, block=256, output=out, doubt=True, pixel_size=(0.5, 0.5)))
    assert res.doubt == "doubt"
    np.testing.assert_array_equal(_zarr_labels(out), ref.labels)
    doubt = read_image(out / "doubt")  # an NGFF multiscales image, with the pixel size
    assert doubt.data.dtype == np.uint8 and doubt.axes == "YX" and doubt.pixel_size == (0.5, 0.5)
    np.testing.assert_array_equal(np.asarray(doubt.data), ref.doubt)
    assert read_image(out).metadata.get("labels")  # the output still opens as its labels
    (d_data, d_kw, d_kind), (l_data, _, l_kind) = get_reader(str(out))(str(out))  # the doubt under the labels
    assert (d_kind, l_kind) == ("image", "labels") and d_kw["multiscale"] and d_kw["name"] == "out doubt"
    assert [a.shape for a in d_data] == [a.shape for a in l_data] == [(700, 900), (350, 450)]
    np.testing.assert_array_equal(d_data[1][:], ref.doubt[::2, ::2])
    with pytest.raises(InputError, match="probabilities"):
        drain(api.segment_iter(image, net, diameter=20, output=tmp_path / "p.zarr", probabilities=True))


def test_bad_cluster_options_fail_in_one_line_and_write_nothing(net, image, tmp_path):
    pytest.importorskip("distributed")
    out = tmp_path / "x.zarr"
    with pytest.raises(InputError, match="cannot reach the dask scheduler"):
        drain(api.segment_iter(image, net, diameter=20, output=out, cluster="tcp://127.0.0.1:9"))
    with pytest.raises(InputError, match="local:N"):
        drain(api.segment_iter(image, net, diameter=20, output=out, cluster="local:x"))
    with pytest.raises(InputError, match="at most local:"):
        drain(api.segment_iter(image, net, diameter=20, output=out, cluster="local:100000"))
    with pytest.raises(InputError, match="output="):
        drain(api.segment_iter(image, net, diameter=20, cluster="local:2"))
    with pytest.raises(InputError, match=".zarr"):
        drain(api.segment_iter(image, net, diameter=20, output=tmp_path / "x.tif"))
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_ome_zarr_from_a_zarr_input(tmp_path, capsys):
    from napari_unet.cli import main

    rng = np.random.default_rng(2)
    src = zarr.create_array(str(tmp_path / "in.zarr"), shape=(600, 700), chunks=(256, 256), dtype="uint16")
    src[:] = (rng.random((600, 700)) * 500).astype(np.uint16)
    rc = main(["segment", str(tmp_path / "in.zarr"), "-o", str(tmp_path / "o.zarr"), "--block", "512",
               "--diameter", "20", "-q", "--scores", "--uncertainty"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    said = capsys.readouterr().out
    assert "4 blocks" in said and "o.zarr" in said
    lab = _zarr_labels(tmp_path / "o.zarr")
    assert lab.shape == (600, 700) and lab.dtype == np.int32
    assert (tmp_path / "o_scores.csv").read_text().startswith("label,")
    doubt = zarr.open_array(str(tmp_path / "o.zarr" / "doubt" / "0"), mode="r")
    assert doubt.shape == (600, 700) and doubt.dtype == np.uint8
    assert not (tmp_path / "o_doubt.tif").exists()  # a .zarr output holds its doubt map itself


def test_a_full_disk_mid_run_says_so_in_one_line_and_the_run_resumes(net, image, tmp_path, monkeypatch):
    import errno

    from napari_unet.core import bigrun
    from napari_unet.core.errors import RunStopped

    out = tmp_path / "out.zarr"
    real, calls = bigrun._save_summary, []

    def full_after_three(path, o):
        calls.append(path)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, o)

    monkeypatch.setattr(bigrun, "_save_summary", full_after_three)
    with pytest.raises(RunStopped, match="No space left on device.*resume") as err:
        drain(api.segment_iter(image, net, diameter=20, block=256, output=out))
    assert "\n" not in str(err.value) and not out.exists()
    monkeypatch.setattr(bigrun, "_save_summary", real)
    result = drain(api.segment_iter(image, net, diameter=20, block=256, output=out))
    assert result.resumed_blocks == 3
    np.testing.assert_array_equal(_zarr_labels(out), api.segment(image, net, diameter=20, block=256))


def test_the_plugin_opens_the_ome_zarr_as_a_labels_layer(net, image, tmp_path):
    from napari_unet._qt.reader import get_reader

    out = tmp_path / "nuclei.zarr"
    api.segment(image, net, diameter=20, block=256, output=out)
    [(data, kwargs, kind)] = get_reader(str(out))(str(out))
    assert kind == "labels" and data.shape == image.shape and kwargs["name"] == "nuclei"
    np.testing.assert_array_equal(np.asarray(data), _zarr_labels(out))


def test_cli_writes_a_tiled_bigtiff_for_an_image_larger_than_memory(tmp_path, monkeypatch, capsys):
    import tifffile

    from napari_unet.cli import main
    from napari_unet.core import io

    rng = np.random.default_rng(3)
    tifffile.imwrite(tmp_path / "big.tif", (rng.random((640, 700)) * 900).astype(np.uint16))
    monkeypatch.setattr(io, "LAZY_BYTES", 1000)  # "larger than memory": read lazily, segmented block by block
    out = tmp_path / "big_labels.tif"
    rc = main(["segment", str(tmp_path / "big.tif"), "-o", str(out), "--block", "512", "--diameter", "20", "-q",
               "--uncertainty"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    with tifffile.TiffFile(out) as tif:
        assert tif.pages[0].is_tiled and tif.is_bigtiff
        lab = tif.asarray()
    monkeypatch.setattr(io, "LAZY_BYTES", 1 << 30)
    ref = drain(api.segment_iter(tifffile.imread(tmp_path / "big.tif"), "bundled", diameter=20, block=512, doubt=True))
    np.testing.assert_array_equal(lab, ref.labels)
    with tifffile.TiffFile(tmp_path / "big_doubt.tif") as tif:
        assert tif.pages[0].is_tiled
        np.testing.assert_array_equal(tif.asarray(), ref.doubt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tif", "big_doubt.tif", "big_labels.tif"]


def test_linked_planes_in_a_zarr_output_are_the_in_memory_linking(net, image, tmp_path):
    from skimage.segmentation import relabel_sequential

    stack = np.stack([image, np.roll(image, 2, axis=1), image[::-1]])  # two planes alike, one not
    ref = api.segment(stack, net, axes="ZYX", diameter=20, block=256, link_iou=0.3)
    res = api.segment(stack, net, axes="ZYX", diameter=20, block=256, link_iou=0.3,
                      output=tmp_path / "l.zarr", return_result=True)  # fmt: skip
    lab = _zarr_labels(res.path)
    np.testing.assert_array_equal(relabel_sequential(lab)[0], ref)
    shared = set(np.unique(lab[0])) & set(np.unique(lab[1])) - {0}
    assert len(shared) > 0.5 * (len(np.unique(lab[0])) - 1)  # the shifted plane's objects took plane 0's ids
    assert {i for _, i, _ in res.plane_scores} == set(np.unique(lab)) - {0} and res.n_objects == len(np.unique(ref)) - 1


@pytest.fixture(scope="module")
def stack():
    from napari_unet.core.synth3d import synth_nuclei_3d

    return synth_nuclei_3d((44, 160, 160), anisotropy=2, rng=4)[0]


def _stack_run(stack, net, out, **kw):
    from napari_unet.core.bigrun import segment_to_zarr_iter

    return segment_to_zarr_iter(stack, net, out, diameter=22, mode="3d", anisotropy=2, block=256, block_z=22, **kw)


def test_3d_objects_to_an_ome_zarr_resume_to_the_in_memory_labels_and_doubt(net, stack, tmp_path):
    from napari_unet.core.segment3d import segment_3d_iter

    ref = drain(segment_3d_iter(stack, net, anisotropy=2, fusion="xyz", diameter=22, block=256, block_z=22,
                                doubt=True))  # fmt: skip
    assert ref.extra["slabs"] == 2 and ref.labels.max() > 30
    out = tmp_path / "out.zarr"
    gen = _stack_run(stack, net, out, doubt=True)
    blocks = tmp_path / "out.zarr.part" / "napari-unet-run" / "blocks"
    for _ in gen:  # stop after the first slab's block
        if blocks.exists() and len(list(blocks.iterdir())) >= 1:
            break
    gen.close()
    assert not out.exists()
    res = drain(_stack_run(stack, net, out, doubt=True, pixel_size=(0.5, 0.5)))
    assert res.resumed_blocks == 1 and res.blocks == 2 and res.axes == "ZYX" and res.extra["anisotropy"] == 2
    np.testing.assert_array_equal(_zarr_labels(out), ref.labels)
    np.testing.assert_array_equal(zarr.open_array(str(out / "doubt" / "0"), mode="r")[:], ref.doubt)
    assert {i: s for _, i, s in res.plane_scores} == ref.scores
    img = read_image(out)  # an NGFF labels image whose Z step is the anisotropy x the pixel size
    assert img.axes == "ZYX" and img.pixel_size == (0.5, 0.5) and img.z_step == 1.0
    with pytest.raises(InputError, match="ZYX"):
        drain(_stack_run(stack[0], net, tmp_path / "flat.zarr"))


def test_3d_objects_on_two_local_workers(net, stack, tmp_path):
    pytest.importorskip("distributed")
    from napari_unet.core.segment3d import segment_3d_iter

    ref = drain(segment_3d_iter(stack, net, anisotropy=2, fusion="xyz", diameter=22, block=256, block_z=22))
    res = drain(_stack_run(stack, net, tmp_path / "c.zarr", cluster="local:2"))
    np.testing.assert_array_equal(_zarr_labels(res.path), ref.labels)


def test_ctrl_c_on_a_local_cluster_run_is_one_line_and_the_run_resumes(image, tmp_path):
    """Ctrl-C reaches the whole process group, the LocalCluster's workers too: each printed its tracebacks (78
    lines on 2 workers) before our one line. Now they leave it to the client, which keeps the unfinished run."""
    import signal
    import subprocess
    import sys
    import time

    from napari_unet.core.atomic import unfinished_dir
    from napari_unet.core.bigrun import WORK, _n_recorded

    src = zarr.create_array(str(tmp_path / "in.zarr"), shape=(2100, 2700), chunks=(512, 512), dtype=image.dtype)
    src[:] = np.tile(image, (3, 3))
    out = tmp_path / "o.zarr"
    cmd = [sys.executable, "-m", "napari_unet.cli", "segment", str(tmp_path / "in.zarr"), "-o", str(out),
           "--cluster", "local:2", "--block", "256", "--diameter", "20", "-q"]  # fmt: skip
    run = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True)
    part, t0 = unfinished_dir(out), time.monotonic()
    while run.poll() is None and time.monotonic() - t0 < 240:
        if (part / WORK / "blocks").exists() and _n_recorded(part) >= 1:
            os.killpg(run.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
            break
        time.sleep(0.05)
    err = run.communicate(timeout=120)[1]
    assert run.returncode == 130, err
    assert err.strip().splitlines() == [
        f"napari-unet: interrupted; the unfinished run is kept in '{part}': run the same command to resume it"
    ], err
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "from the unfinished run" in again.stdout, again.stderr
    assert _zarr_labels(out).max() > 0 and not part.exists()

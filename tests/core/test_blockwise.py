"""The big-data engine: blocks with halos, stitched ids, and agreement with the whole-plane result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_unet.core.blockwise import BlockOutput, plan_blocks, stitch_blocks
from napari_unet.core.jobs import drain
from napari_unet.core.metrics import average_precision
from napari_unet.core.segment import segment_iter

SAMPLE = Path(__file__).parents[2] / "napari_unet" / "resources" / "samples" / "nuclei2d_u2os.tif"


def mosaic(tile: np.ndarray, size: int) -> np.ndarray:
    """A `size` x `size` mosaic of a real image and its mirror images (seams inside the tissue)."""
    H, W = tile.shape
    rows = []
    for r in range(-(-size // H)):
        row = [tile[:: -1 if r % 2 else 1, :: -1 if (r + c) % 2 else 1] for c in range(-(-size // W))]
        rows.append(np.concatenate(row, 1))
    return np.ascontiguousarray(np.concatenate(rows, 0)[:size, :size])


def test_plan_cuts_the_plane_into_cores_that_tile_it_exactly():
    plan = plan_blocks((1000, 2500), diameter=20, scale=1.0, block=700)
    cover = np.zeros((1000, 2500), np.int32)
    for b in plan.blocks():
        y0, y1, x0, x1 = b.core
        cover[y0:y1, x0:x1] += 1
        ry0, ry1, rx0, rx1 = b.region
        assert ry0 == max(0, y0 - plan.halo) and rx1 == min(2500, x1 + plan.halo)
    assert (cover == 1).all()
    assert plan.halo >= 40 and (plan.rows, plan.cols) == (2, 4)
    assert len(plan_blocks((500, 500), 20, 1.0, block=2048)) == 1
    with pytest.raises(ValueError, match="twice the halo"):
        plan_blocks((5000, 5000), diameter=200, scale=1.0, block=300)


def test_an_object_cut_by_a_seam_gets_one_id_and_neighbours_stay_apart():
    # Two blocks side by side (cores x < 100 and x >= 100). A disc straddles the seam; both blocks saw
    # it whole (strips of 2 x 10 px across the seam). A second object lies only in the right core.
    plan = plan_blocks((50, 200), diameter=10, scale=10.0, block=100)
    assert len(plan) == 2 and plan.strip == 10
    left = np.zeros((50, 100), np.int32)
    right = np.zeros((50, 100), np.int32)
    left[20:30, 95:100] = 1
    right[20:30, 0:6] = 1
    right[5:12, 40:50] = 2
    strip_l = np.zeros((50, 20), np.int32)
    strip_l[20:30, 5:16] = 1  # left block's disc, x 95..105
    strip_r = np.zeros((50, 20), np.int32)
    strip_r[20:30, 5:16] = 1  # right block's version of it
    outs = {
        0: BlockOutput(0, left, 1, {"right": strip_l}, np.bincount(left.ravel()), np.bincount(left.ravel()) * 0.9),
        1: BlockOutput(1, right, 2, {"left": strip_r}, np.bincount(right.ravel()), np.bincount(right.ravel()) * 0.5),
    }
    st = stitch_blocks(plan, outs, first_id=11)
    assert st.n_objects == 2
    assert st.luts[0][1] == st.luts[1][1] == 11 and st.luts[1][2] == 12
    assert st.scores[11] == pytest.approx((50 * 0.9 + 60 * 0.5) / 110, abs=1e-4)
    # min_score 0.3 keeps both (0.68 and 0.5); one scored 0.1 is dropped, the ids stay consecutive.
    assert stitch_blocks(plan, outs, min_score=0.3).n_objects == 2
    doubted = dict(outs)
    doubted[1] = BlockOutput(
        1, right, 2, {"left": strip_r}, np.bincount(right.ravel()), np.array([0, 0.9 * 60, 0.1 * 70])
    )
    low = stitch_blocks(plan, doubted, first_id=11, min_score=0.3)
    assert low.n_objects == 1 and low.luts[1][2] == 0 and list(low.scores) == [11]
    assert stitch_blocks(plan, doubted, min_score=0.0).n_objects == 2
    # Without the overlap in the strip they stay two objects.
    outs[1].strips["left"] = np.roll(strip_r, 10, axis=0)
    assert stitch_blocks(plan, outs).n_objects == 3


def test_blocks_agree_with_the_whole_plane_tiny_model(tiny_model):
    rng = np.random.default_rng(0)
    image = rng.random((300, 420)).astype(np.float32)
    whole = drain(segment_iter(image, tiny_model, diameter=20, block=None))
    blocks = drain(segment_iter(image, tiny_model, diameter=20, block=200))
    np.testing.assert_array_equal(whole.labels > 0, blocks.labels > 0)
    assert float(np.squeeze(average_precision(whole.labels, blocks.labels))) >= 0.995


def test_blocks_predict_each_tile_of_the_plane_once_with_the_same_result(tiny_model, monkeypatch):
    from napari_unet.core import segment
    from napari_unet.core.predict import InferenceModel

    calls = []
    real = InferenceModel.__call__
    monkeypatch.setattr(InferenceModel, "__call__", lambda self, batch: calls.append(len(batch)) or real(self, batch))
    # The typical object's measurement makes network calls of its own, not the blocks' tiles.
    monkeypatch.setattr(segment, "typical_diameter", lambda *a: 20.0)
    image = np.random.default_rng(1).random((700, 900)).astype(np.float32)
    whole = drain(segment_iter(image, tiny_model, diameter=20, block=None, tile=128))
    n_whole = sum(calls)
    calls.clear()
    blocks = drain(segment_iter(image, tiny_model, diameter=20, block=256, tile=128))
    n_shared = sum(calls)
    calls.clear()
    monkeypatch.setattr(segment, "TileReuse", lambda *a, **k: None)  # every block predicts its own tiles
    alone = drain(segment_iter(image, tiny_model, diameter=20, block=256, tile=128))
    assert n_shared == n_whole < sum(calls)  # each tile once, as for the whole plane
    np.testing.assert_array_equal(blocks.labels, alone.labels)
    np.testing.assert_array_equal(whole.labels > 0, blocks.labels > 0)


def test_a_4096_mosaic_of_real_nuclei_in_blocks_agrees_with_the_whole_plane():
    from napari_unet import api

    image = mosaic(tifffile.imread(SAMPLE), 4096)
    model = api.load_model("bundled")
    # The diameter is fixed so that both runs see the same scale (the estimate is tested elsewhere).
    whole = drain(segment_iter(image, model, diameter=30.0, block=None))
    blocks = drain(segment_iter(image, model, diameter=30.0, block=1400))
    assert whole.labels.max() > 3000
    # The instance step's rules take their typical object from one measurement of the image
    # (`segment.typical_diameter`), not from what a block holds, so the blocks find the whole plane's objects
    # (with per-block medians: AP 0.9992, 44 pixels differing).
    np.testing.assert_array_equal(whole.labels > 0, blocks.labels > 0)
    assert float(np.squeeze(average_precision(whole.labels, blocks.labels))) == 1.0
    assert len(blocks.scores) == len(whole.scores)


def test_the_typical_object_is_measured_so_a_wrong_diameter_does_not_move_it():
    from napari_unet import api
    from napari_unet.core.normalize import iter_planes
    from napari_unet.core.predict import InferenceModel
    from napari_unet.core.segment import model_info, typical_diameter

    model = api.load_model("bundled")
    info, infer = model_info(model), InferenceModel.prepare(model, torch.device("cpu"))
    _, _, planes = iter_planes(tifffile.imread(SAMPLE), None, None)  # U2OS nuclei of about 30 px
    plane = planes.view(planes.indices[0])
    assert typical_diameter(infer, plane, info, 30.0, 1) is None  # a small plane of one block: its own medians
    for given in (21.0, 30.0, 42.0):  # cut into blocks
        assert 0.85 * 30 < typical_diameter(infer, plane, info, given, 4) < 1.15 * 30, given

import numpy as np
import pytest

from napari_unet.core.tiling import TileGrid, blend_window, reflect_indices, stitch, tile_starts


def _run(image, tin, tout, overlap, predict, channels=1, batch=3):
    H, W = image.shape
    out = np.full((channels, H, W), np.nan, np.float32)
    seen = []

    def sink(y0, y1, block):
        seen.append((y0, y1))
        out[:, y0:y1] = block

    grid = TileGrid((H, W), (tin, tin), (tout, tout), overlap)
    steps = list(stitch(grid, image, predict, sink, channels, batch))
    assert steps[-1] == (len(grid), len(grid))
    # Rows arrive top to bottom, each exactly once.
    assert seen[0][0] == 0 and seen[-1][1] == H
    assert all(a[1] == b[0] for a, b in zip(seen, seen[1:]))
    return out


@pytest.mark.parametrize("shape", [(300, 517), (50, 40), (7, 300), (1, 1), (257, 256)])
def test_identity_round_trip_same_mode(shape):
    img = np.random.default_rng(0).random(shape).astype(np.float32)
    out = _run(img, 128, 128, 32, lambda b: b)
    np.testing.assert_allclose(out[0], img, rtol=0, atol=1e-6)


def test_identity_round_trip_valid_mode():
    img = np.random.default_rng(1).random((333, 290)).astype(np.float32)
    c = (268 - 84) // 2
    out = _run(img, 268, 84, 16, lambda b: b[:, :, c : c + 84, c : c + 84])
    np.testing.assert_allclose(out[0], img, rtol=0, atol=1e-6)


def test_no_seams_when_tiles_disagree_at_their_edges():
    # A predictor that is right in the tile centre and wrong near tile edges (what a padded network
    # does): the blend must hide the edge errors, leaving no step along tile borders.
    img = np.zeros((256, 256), np.float32)
    win = blend_window((96, 96), 32)

    def predict(b):
        return b + (1 - win)[None, None] * 0.05  # error only where the window is low

    out = _run(img, 96, 96, 32, predict)[0]
    # Blending pulls the error below what a tile edge has (0.05) and leaves no step between
    # neighbouring pixels; abutting tiles without blending would jump by 0.05 at each border.
    assert np.abs(out).max() < 0.04
    assert np.abs(np.diff(out, axis=0)).max() < 0.005
    assert np.abs(np.diff(out, axis=1)).max() < 0.005


def test_reflect_indices_match_numpy_pad():
    a = np.arange(5)
    for start, stop in [(-7, 12), (-1, 6), (3, 20)]:
        pad_lo, pad_hi = -min(start, 0), max(stop - 5, 0)
        ref = np.pad(a, (pad_lo, pad_hi), mode="reflect")[start + pad_lo : stop + pad_lo]
        np.testing.assert_array_equal(a[reflect_indices(start, stop, 5)], ref)


def test_tiles_overlap_and_cover():
    for n in [1, 10, 100, 129, 1000]:
        starts = tile_starts(n, 64, 16)
        assert starts[0] <= -8 or n + 16 <= 64
        assert starts[-1] + 64 >= n + 8 or n + 16 <= 64
        assert all(b - a <= 64 - 16 for a, b in zip(starts, starts[1:]))


def test_predictor_shape_is_checked():
    img = np.zeros((64, 64), np.float32)
    with pytest.raises(ValueError, match="predictor returned"):
        _run(img, 64, 64, 16, lambda b: b[:, :, :10])


def test_enlarging_uint8_planes_matches_the_float_path_within_one_level():
    """Pillow's fixed-point bilinear (the probabilities back to the plane's size) against `resample_window`
    rounded: within one level everywhere, edges included; a window within one level of the whole plane."""
    from napari_unet.core.tiling import enlarge_window_uint8, resample_window

    rng = np.random.default_rng(0)
    for h, H, w, W in ((164, 205, 151, 300), (100, 100, 80, 97), (37, 111, 50, 50)):
        probs = rng.integers(0, 256, (3, h, w), dtype=np.uint8)
        probs[1] = np.linspace(0, 255, w, dtype=np.uint8)  # smooth as well as noisy content

        def read(rows, cols, probs=probs):
            return probs[:, rows, cols]

        whole = enlarge_window_uint8(read, (h, w), (H, W), (0, H, 0, W))
        ref = np.clip(resample_window(read, (h, w), (H, W), (0, H, 0, W)) + 0.5, 0, 255).astype(np.uint8)
        assert whole.shape == (3, H, W) and np.abs(whole.astype(int) - ref).max() <= 1
        for y0, y1, x0, x1 in ((0, H // 3, W // 2, W), (H // 4, H, 1, W // 3 + 1), (H - 1, H, W - 1, W)):
            win = enlarge_window_uint8(read, (h, w), (H, W), (y0, y1, x0, x1))
            assert np.abs(win.astype(int) - whole[:, y0:y1, x0:x1]).max() <= 1
    with pytest.raises(ValueError, match="larger"):
        enlarge_window_uint8(read, (10, 10), (5, 10), (0, 5, 0, 10))

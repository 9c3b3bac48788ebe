"""Headless logic behind the widgets: keeping painted pixels, plane lists, fallbacks, autosave locations."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.core.autosave import SavedCorrections, candidate_paths, find_saved, load_corrections, save_corrections
from napari_unet.core.instances import merge_keep_painted
from napari_unet.core.jobs import fallback_plan
from napari_unet.core.trainingdata import parse_planes


def test_merge_keeps_painted_objects_whole_and_avoids_id_clashes():
    old = np.zeros((20, 30), np.int32)
    old[2:8, 2:8] = 5  # the user touched this object (one pixel) -> kept whole
    old[12:18, 20:28] = 9  # untouched old prediction -> replaced by the new one
    trusted = np.zeros_like(old, bool)
    trusted[4, 4] = True
    trusted[15, 2] = True  # painted background stays background
    new = np.zeros_like(old)
    new[3:9, 3:9] = 1  # the same object as 5: dropped
    new[12:18, 21:29] = 2  # a new prediction elsewhere: kept, with a fresh id
    new[14:17, 1:4] = 3  # overlaps the trusted background pixel a little: clipped there
    out = merge_keep_painted(old, new, trusted)
    assert (out[2:8, 2:8] == 5).all() and out[8, 8] == 0
    assert out[15, 2] == 0 and (out[14:17, 3] > 0).all()
    new_ids = set(np.unique(out)) - {0, 5}
    assert len(new_ids) == 2 and min(new_ids) > 9


def test_parse_planes():
    assert parse_planes("0-3, 7", 10) == [0, 1, 2, 3, 7]
    assert parse_planes("2 2 1", 5) == [1, 2]
    for bad in ("a", "3-1", "10"):
        with pytest.raises(ValueError):
            parse_planes(bad, 10)


def test_fallback_plan_order():
    plan = list(fallback_plan("cuda", 256, 4, first_tile=256))
    assert [p[:3] for p in plan] == [
        ("cuda", 256, 4),
        ("cuda", 256, 1),
        ("cuda", 128, 1),
        ("cuda", 64, 1),
        ("cpu", 256, 4),
    ]
    assert list(fallback_plan("cpu", 256, 4, first_tile=256)) == [("cpu", 256, 4, "")]
    # By default the first try lets the engine size tiles and batches, as every caller does.
    assert [p[:3] for p in fallback_plan("cuda", 512, None)][:2] == [("cuda", None, None), ("cuda", None, 1)]


def test_autosave_roundtrip_and_locations(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_UNET_PROJECT", str(tmp_path / "project"))
    img = tmp_path / "data" / "cells.ome.tif"
    img.parent.mkdir()
    img.write_bytes(b"")
    near, far = candidate_paths(str(img), "cells", "cells labels")
    assert near == img.parent / "cells.cells_labels.corrections.npz" and far.parent == tmp_path / "project"
    labels = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    trusted = labels % 3 == 0
    save_corrections(near, SavedCorrections(labels, trusted, "cells labels", [{"kind": "plane"}]))
    assert find_saved(str(img), "cells") == [near]
    back = load_corrections(near)
    np.testing.assert_array_equal(back.labels, labels)
    np.testing.assert_array_equal(back.trusted, trusted)
    assert back.layer_name == "cells labels" and back.reviewed == [{"kind": "plane"}]
    # no file: the project folder, under the data's key
    (path,) = candidate_paths(None, "sample-nuclei3d", "mine")
    assert path == tmp_path / "project" / "sample-nuclei3d.mine.corrections.npz"

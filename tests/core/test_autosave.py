"""Autosaved corrections: damaged files never block opening an image; writes leave no debris."""

from __future__ import annotations

import warnings
import zlib

import numpy as np
import pytest
import tifffile

from napari_unet.core.autosave import (
    DamagedAutosave,
    SavedCorrections,
    candidate_paths,
    load_corrections,
    save_corrections,
)
from napari_unet.core.errors import InputError


def _saved(shape=(32, 40)):
    labels = np.zeros(shape, np.int32)
    labels[4:12, 5:15] = 3
    return SavedCorrections(labels, labels > 0, "cells labels")


def _damage(path, how):
    raw = path.read_bytes()
    if how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])  # BadZipFile
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(b"not a zip at all")
    elif how == "deflate":  # a valid zip directory whose compressed member is corrupt: zlib.error
        i = raw.index(b"labels.npy") + len(b"labels.npy")
        path.write_bytes(raw[:i] + bytes(b ^ 0x5A for b in raw[i : i + 64]) + raw[i + 64 :])


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage", "deflate"])
def test_damaged_autosave_is_moved_aside_with_one_sentence(tmp_path, how):
    path = save_corrections(tmp_path / "img.cells.corrections.npz", _saved())
    _damage(path, how)
    with pytest.raises(InputError, match="damaged") as err:
        load_corrections(path)
    assert "\n" not in str(err.value) and "moved aside" in str(err.value)
    assert not path.exists()
    (aside,) = tmp_path.glob("img.cells.corrections.npz.damaged-*")  # kept, for whoever wants to look


def test_reader_opens_an_image_whose_autosave_is_damaged(tmp_path):
    from napari_unet._qt.reader import read_path

    img = tmp_path / "cells.tif"
    tifffile.imwrite(img, np.zeros((32, 40), np.uint16))
    good = save_corrections(candidate_paths(str(img), "cells", "good")[0], _saved())
    bad = save_corrections(candidate_paths(str(img), "cells", "bad")[0], _saved())
    bad.write_bytes(bad.read_bytes()[:100])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layers = read_path(img)
    kinds = [t for _, _, t in layers]
    assert kinds == ["image", "labels"]  # the image and the good autosave
    assert layers[1][1]["metadata"]["napari_unet"]["restored_from"] == str(good)
    damaged = [w for w in caught if issubclass(w.category, DamagedAutosave)]
    assert len(damaged) == 1 and "bad" in str(damaged[0].message)
    assert not bad.exists() and list(tmp_path.glob("*.damaged-*"))
    read_path(img)  # and the next opening is quiet


def test_corrections_of_a_stack_round_trip(tmp_path):
    saved = _saved((3, 16, 20))
    path = save_corrections(tmp_path / "s.x.corrections.npz", saved)
    back = load_corrections(path)
    np.testing.assert_array_equal(back.labels, saved.labels)
    np.testing.assert_array_equal(back.trusted, saved.trusted)


def test_zlib_error_is_among_the_damage_kinds():
    # What a corrupt deflate stream raises; kept explicit so that a refactor cannot drop it.
    from napari_unet.core.autosave import _DAMAGE

    with pytest.raises(_DAMAGE):
        zlib.decompress(b"\x78\x9c garbage")

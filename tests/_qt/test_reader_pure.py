"""The npe2 reader returns layer data only: no session, no viewer lookup, no timers."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile


def test_reader_has_no_side_effects(tmp_path, monkeypatch):
    import napari

    import napari_unet._qt.session as session
    from napari_unet._qt.reader import get_reader

    monkeypatch.setattr(session, "Session", lambda *a, **k: pytest.fail("the reader created a session"))
    monkeypatch.setattr(napari, "current_viewer", lambda: pytest.fail("the reader looked up the viewer"))
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, np.zeros((16, 16), np.uint16))
    layers = get_reader(str(path))(str(path))
    assert [t for _, _, t in layers] == ["image"]

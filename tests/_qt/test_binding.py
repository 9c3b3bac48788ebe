"""The Qt binding the tests run under is the one asked for (CI runs tests/_qt under PyQt5 and PyQt6)."""

from __future__ import annotations

import os

import pytest


def test_requested_qt_binding_is_the_one_in_use(qapp):
    import qtpy

    wanted = os.environ.get("QT_API")
    if not wanted:
        pytest.skip("no QT_API requested: qtpy's default binding")
    assert qtpy.API_NAME.lower() == wanted.lower()
    assert type(qapp).__module__.split(".")[0].lower() == wanted.lower()

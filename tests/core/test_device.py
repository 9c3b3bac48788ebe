import sys

import pytest

from napari_unet.core import device


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_sets_glibc_thresholds_unless_the_user_did(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert device.keep_freed_memory.__wrapped__() is True
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert device.keep_freed_memory.__wrapped__() is False

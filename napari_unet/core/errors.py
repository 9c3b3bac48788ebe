"""The one error hierarchy: every failure a user can cause is a `NapariUnetError` with one plain sentence.

The CLI prints it as one line, the widgets as one notification; Python callers can catch the base
class, or `ValueError` as before (both concrete kinds are ValueErrors).
"""

from __future__ import annotations


class NapariUnetError(Exception):
    """Base of the errors napari-unet raises on purpose; the message is one sentence saying what to do."""


class InputError(NapariUnetError, ValueError):
    """Bad input: an image, labels, an option or a path that cannot be used as given."""


class ThinStackError(InputError):
    """3D objects asked of a stack less deep than one nucleus (`segment3d.check_depth`)."""


class ModelFileError(NapariUnetError, ValueError):
    """A model file that is missing, unreadable, foreign or inconsistent."""


class RunStopped(NapariUnetError, OSError):
    """A resumable run stopped by something outside it (a full disk, dead cluster workers); its work is kept."""

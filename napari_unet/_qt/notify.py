"""Every failure the user can cause -> one napari notification in plain words."""

from __future__ import annotations

import functools
from collections.abc import Callable

from napari.utils.notifications import show_error, show_info, show_warning


def plain_message(exc: BaseException, doing: str = "") -> str:
    """A one-line, jargon-free description of `exc`, prefixed with what was being done."""
    from ..core.jobs import is_out_of_memory

    prefix = f"{doing}: " if doing else ""
    text = str(exc).splitlines()[0].strip() if str(exc).strip() else ""
    if isinstance(exc, MemoryError):
        return f"{prefix}not enough memory. Try a smaller scope (current plane or visible region)."
    if is_out_of_memory(exc):
        return f"{prefix}the GPU ran out of memory. Try device 'cpu' or a smaller scope."
    if isinstance(exc, (ValueError, OSError, KeyError)) and text:
        return f"{prefix}{text}"
    return f"{prefix}unexpected error ({type(exc).__name__}{': ' + text if text else ''})"


def error(exc_or_message: BaseException | str, doing: str = "") -> str:
    """Show an error notification; returns the text shown (for status labels and tests)."""
    msg = exc_or_message if isinstance(exc_or_message, str) else plain_message(exc_or_message, doing)
    show_error(msg)
    return msg


def warning(message: str) -> str:
    show_warning(message)
    return message


def info(message: str) -> str:
    show_info(message)
    return message


def guarded(doing: str) -> Callable:
    """Decorate a Qt slot: an exception becomes one plain notification instead of a traceback dialog."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def slot(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - shown to the user in plain words
                error(exc, doing)
                return None

        return slot

    return wrap

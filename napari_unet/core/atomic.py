"""The one atomic writer: write to a temporary file beside the target, then move it into place.

A crash or a kill mid-write leaves the previous file intact and at most a hidden ``.part`` file,
which the next write into the same folder removes once its writer is gone. Temporary files are
created with mode 0666 minus the process umask (what any other saved file gets) without ever
changing the umask: ``os.umask`` is process-wide, so reading it by setting it races with other
threads that create files at the same moment (an autosave during training).
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError

#: ``.<target name>.<pid>-<8 hex>.part``
_PART = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.part$")
#: Temporary files of earlier releases (tempfile.mkstemp names): removed when older than this.
LEGACY_PART_AGE_S = 3600.0
#: A part file whose writer is gone is removed only when it has not changed for this long (a writer
#: on another machine of a shared file system may have the same pid as a dead local one).
STALE_PART_AGE_S = 60.0


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_parts(folder: str | os.PathLike, now: float | None = None) -> list[Path]:
    """Remove ``.part`` files left in `folder` by writers that were killed; returns what was removed."""
    folder = Path(folder)
    now = time.time() if now is None else now
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        name = e.name
        if not (name.startswith(".") and name.endswith(".part")) or not e.is_file(follow_symlinks=False):
            continue
        try:
            age = now - e.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        m = _PART.match(name)
        stale = (not _alive(int(m["pid"])) and age > STALE_PART_AGE_S) if m else age > LEGACY_PART_AGE_S
        if stale:
            try:
                os.unlink(e.path)
                removed.append(Path(e.path))
            except OSError:
                pass
    return removed


def overlaps(path: str | os.PathLike, sources) -> Path | None:
    """The first of `sources` that `path` is, lies inside or holds (resolved paths); None if none."""
    p = Path(path).resolve()
    for src in sources:
        src = Path(src).resolve()
        if p == src or src in p.parents or p in src.parents:
            return src
    return None


def check_output(
    path: str | os.PathLike, overwrite: bool, example: str = "model.safetensors", sources: Iterable = ()
) -> Path:
    """Refuse, before any work, an output that cannot or must not be written; returns it as a Path.

    Raises:
        InputError: `path` does not end as `example` does, is a folder, is one of the `sources` (the files
            the run reads), exists without `overwrite`, or its folder is missing or read-only.
    """
    out = Path(path)
    suffix = Path(example).suffix
    if out.is_dir():
        raise InputError(f"'{out}' is a folder; give a file name, e.g. {example}")
    if not out.name.lower().endswith(suffix):
        raise InputError(f"'{out}' must end in {suffix}, e.g. {example}")
    if overlaps(out, [s for s in sources if Path(s).exists()]) is not None:
        raise InputError(f"'{out}' is an input of this run; write the output elsewhere")
    if out.exists() and not overwrite:
        raise InputError(f"'{out}' exists; pass --overwrite (overwrite=True) to replace it")
    if not out.parent.is_dir():
        raise InputError(f"the folder of '{out}' does not exist or is not a folder")
    if not os.access(out.parent, os.W_OK):
        raise InputError(f"the folder of '{out}' is not writable")
    return out


def temporary_path(path: str | os.PathLike) -> Path:
    """Create an empty temporary file beside `path` (mode 0666 minus the umask) and return its path."""
    path = Path(path)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside '{path}'")  # pragma: no cover


@contextmanager
def atomic_write(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it becomes `path`, on any failure it is removed.

    Args:
        path: The final file. Its folder is created if missing.
        overwrite: Replace an existing file. When False the move is exclusive (a hard link, which
            fails if the name was taken even a moment before), so two writers never overwrite each other.

    Raises:
        FileExistsError: `path` exists and `overwrite` is False.

    Example::

        with atomic_write("labels.tif") as tmp:
            tifffile.imwrite(tmp, labels)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite and path.exists():
        raise FileExistsError(f"'{path}' exists")
    remove_stale_parts(path.parent)
    tmp = temporary_path(path)
    mode = os.stat(tmp).st_mode  # 0666 minus the umask, as the kernel applied it
    try:
        yield tmp
        if os.stat(tmp).st_mode != mode:  # some writers (safetensors) recreate the file as 0600
            os.chmod(tmp, mode)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise FileExistsError(f"'{path}' exists") from None
            except OSError:  # a file system without hard links: the check above is all we have
                if path.exists():
                    raise FileExistsError(f"'{path}' exists") from None
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def unfinished_dir(path: str | os.PathLike) -> Path:
    """Where a folder output (an OME-Zarr) is built until it is complete and renamed to `path`.

    The name is `path` + ".part", like a file being written here, so a complete output is never confused
    with one that a killed run left behind (`core.bigrun` resumes from it).
    """
    path = Path(path)
    return path.with_name(path.name + ".part")

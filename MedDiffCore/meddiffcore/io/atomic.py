"""Atomic file output: a killed or failed write never leaves a partial file.

Writers write to a temporary name in the destination folder; on success the
file is flushed to disk (``fsync``) and renamed over the target with
:func:`os.replace`, which is atomic on POSIX and Windows when both names are
on the same file system. On any failure (including ``KeyboardInterrupt``) the
temporary file is removed and the target is left untouched.

The temporary name keeps the real extension at its end
(``out.nii.gz`` -> ``.out.tmp-1234-ab12cd.nii.gz``) so that libraries which
pick a format from the file name (nibabel, SimpleITK, PIL...) still work.

Usage::

    with atomic_output("result.nii.gz") as tmp:
        nibabel.save(img, tmp)

    with atomic_outputs(["vol.mhd", "vol.raw"]) as tmpdir:   # multi-file formats
        write_header(tmpdir / "vol.mhd"); write_data(tmpdir / "vol.raw")
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterator, Sequence

__all__ = ["atomic_output", "atomic_outputs", "numbered_paths", "remove_stale_temporaries", "split_extension",
           "temp_name_for"]

#: Multi-part extensions kept whole at the end of temporary names.
COMPOUND_EXTENSIONS = (
    ".seq.nrrd", ".seq.nhdr", ".seg.nrrd", ".nii.gz", ".raw.gz", ".tar.gz", ".tar.bz2",
    ".tar.xz", ".json.gz", ".csv.gz", ".npy.gz",
)


def split_extension(name: str) -> tuple[str, str]:
    """Split a file name into (stem, extension), keeping known compound extensions whole.

    >>> split_extension("a.b.nii.gz")
    ('a.b', '.nii.gz')
    >>> split_extension("x.png")
    ('x', '.png')
    """
    lower = name.lower()
    for ext in COMPOUND_EXTENSIONS:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], name[-len(ext):]
    dot = name.rfind(".")
    if dot <= 0:
        return name, ""
    return name[:dot], name[dot:]


def temp_name_for(path: str | os.PathLike) -> Path:
    """A fresh hidden temporary path next to ``path`` that ends with the same extension."""
    path = Path(path)
    stem, ext = split_extension(path.name)
    token = f"{os.getpid()}-{secrets.token_hex(3)}"
    return path.with_name(f".{stem}.tmp-{token}{ext}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable. Best effort: not every platform can fsync a folder."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path`` to; publish it atomically on success.

    The body must create the temporary file (it is not created in advance). If
    the body raises, or leaves no file behind, the temporary file is removed and
    ``path`` is not touched; the exception propagates. An existing ``path`` is
    replaced only once the new content is complete and flushed to disk.
    """
    target = Path(path)
    tmp = temp_name_for(target)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"the writer did not create {tmp}")
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        _remove_quietly(tmp)
        raise
    _fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_outputs(paths: Sequence[str | os.PathLike]) -> Iterator[Path]:
    """Atomic-ish output of a group of files that live in one folder (e.g. ``.mhd`` + ``.raw``).

    Yields a fresh hidden folder next to the targets; the body writes each file
    under its final *base name* inside it (so references between the files, like
    a header naming its data file, are already right). On success every file is
    fsynced and moved into place in the order given, so put the file that
    readers open first (the header) LAST: it appears only once its data is
    complete. Any other files the body created in the folder are moved too,
    before the listed ones. On failure the folder is removed and no target is
    touched.
    """
    targets = [Path(p) for p in paths]
    if not targets:
        raise ValueError("atomic_outputs needs at least one path")
    parent = targets[0].parent
    if any(t.parent != parent for t in targets):
        raise ValueError("atomic_outputs: all paths must be in the same folder")
    stem, _ = split_extension(targets[-1].name)
    tmpdir = parent / f".{stem}.tmp-{os.getpid()}-{secrets.token_hex(3)}"
    tmpdir.mkdir()
    try:
        yield tmpdir
        listed = [t.name for t in targets]
        missing = [n for n in listed if not (tmpdir / n).is_file()]
        if missing:
            raise FileNotFoundError(f"the writer did not create {', '.join(missing)}")
        extra = sorted(p.name for p in tmpdir.iterdir() if p.name not in listed)
        order = extra + listed
        for name in order:
            _fsync_file(tmpdir / name)
        for name in order:
            os.replace(tmpdir / name, parent / name)
    except BaseException:
        _remove_quietly(tmpdir)
        raise
    _remove_quietly(tmpdir)
    _fsync_dir(parent)


def remove_stale_temporaries(path: str | os.PathLike, pid: int | None = None) -> list[Path]:
    """Remove the temporary files and folders that writes of ``path`` by process ``pid`` left behind.

    Used when a process must exit without unwinding (a cancelled engine job past
    its grace period): the context managers above cannot clean up then, but
    their temporary names are predictable. Numbered siblings written for several
    samples (``out_01.nii.gz`` for ``out.nii.gz``) are included. ``pid=None``
    removes those of any process.
    """
    target = Path(path)
    if not target.parent.is_dir():
        return []
    stem, _ = split_extension(target.name)
    marker = f".tmp-{'' if pid is None else f'{pid}-'}"
    removed = []
    for candidate in target.parent.iterdir():
        name = candidate.name
        if name.startswith(f".{stem}") and marker in name[len(stem) + 1:]:
            _remove_quietly(candidate)
            removed.append(candidate)
    return removed


def numbered_paths(path: str | os.PathLike, count: int) -> list[Path]:
    """Output names for ``count`` samples: ``out.nii.gz`` alone, or ``out_01.nii.gz``, ``out_02.nii.gz``...

    The number goes before the whole extension (compound ones kept), and is
    zero-padded so the files sort in order.
    """
    path = Path(path)
    if count == 1:
        return [path]
    stem, ext = split_extension(path.name)
    width = max(2, len(str(count)))
    return [path.with_name(f"{stem}_{i + 1:0{width}d}{ext}") for i in range(count)]

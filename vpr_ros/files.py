"""Files the package reads and writes: regular-file checks before opening, atomic replacement.

Every file the package writes (ONNX graphs, engines, PCA, weights, caches, maps) goes to a
temporary name beside its target, is checked, and only then renamed over it: a failure (full
disk, bad content, a signal) leaves the previous good file as it was.
"""
from __future__ import annotations

import errno
import os
import re
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from vpr_ros.errors import VprError


def fsync_dir(folder: Path, strict: bool = False) -> None:
    """Make a rename in ``folder`` durable. ``strict`` (the map store): an OSError is raised;
    otherwise best effort, for filesystems whose directories cannot be opened or synced."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        if strict:
            raise
        return
    try:
        os.fsync(fd)
    except OSError:
        if strict:
            raise
    finally:
        os.close(fd)


def temporary_name(path: Path) -> Path:
    """A hidden name beside ``path`` unique to this process (same filesystem, so rename is atomic)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def replaced_atomically(path: Path, error: type[VprError] = VprError, strict: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; when the block succeeds it is fsynced and renamed over
    ``path`` (the folder fsynced too, see :func:`fsync_dir` for ``strict``); when it raises, the
    temporary is removed and ``path`` is untouched. OS errors become ``error`` naming ``path``; a
    ``path`` that is a folder, FIFO, device or socket is refused before anything is written."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        mode = None
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise error(f"{path}: is {_kind(mode)}, not a regular file: nothing written")
    tmp = temporary_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent, strict)
    except OSError as exc:
        raise error(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        try:
            tmp.unlink()
        except OSError:
            pass


def check_readable_file(path: Path, what: str, error: type[VprError] = VprError) -> Path:
    """Refuse, before opening, what would hang or fail obscurely: missing files, symlink loops,
    FIFOs, devices, sockets and folders (a FIFO named like an image blocks ``open`` forever)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error(f"{path}: {what} is a symbolic link loop") from None
        if exc.errno == errno.ENOENT:
            raise error(f"{path}: {what} not found") from None
        raise error(f"{path}: {what} cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: {what} is {_kind(st.st_mode)}, not a regular file")
    return Path(path)


def _kind(mode: int) -> str:
    return ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a symbolic link" if stat.S_ISLNK(mode)
            else "not a regular file")


def open_regular(path: Path, what: str, max_bytes: int | None = None, error: type[VprError] = VprError,
                 flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """A descriptor of ``path`` opened without following a link in its last component and without
    blocking (a FIFO or a device there is refused, never waited on); checked with ``fstat`` to be
    a regular file of at most ``max_bytes``, then switched back to blocking I/O. ``flags`` adds
    e.g. ``O_RDWR | O_CREAT``. FileNotFoundError passes through (callers word "missing" themselves)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            raise error(f"{path}: {what} is a symbolic link (to {target}); it must be a regular file "
                        "(remove the link)") from None
        raise error(f"{path}: {what} cannot be opened ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: {what} is {_kind(st.st_mode)}, not a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise error(f"{path}: {what} is {st.st_size:,} bytes, more than the {max_bytes:,} it can "
                        "plausibly be (a damaged or foreign file)")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular_bytes(path: Path, what: str, max_bytes: int, error: type[VprError] = VprError) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (see :func:`open_regular`)."""
    fd = open_regular(path, what, max_bytes, error)
    try:
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"{path}: {what} cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


def check_not_linked(path: Path, what: str, error: type[VprError] = VprError) -> bool:
    """For files a library opens by name itself (SQLite): False when ``path`` does not exist; True
    when it is a regular file that is not a link; otherwise ``error`` naming what it is."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise error(f"{path}: {what} cannot be examined ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        extra = ""
        if stat.S_ISLNK(st.st_mode):
            try:
                extra = f" (to {os.readlink(path)}); remove the link"
            except OSError:
                pass
        raise error(f"{path}: {what} is {_kind(st.st_mode)}{extra}, not a regular file")
    return True


def is_regular_file(path: Path) -> bool:
    """True for a regular file reachable without a loop (FIFOs, devices, dangling links: False)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def read_text(path: Path, what: str, error: type[VprError] = VprError) -> str:
    """The UTF-8 text of a regular file (a UTF-8 BOM is dropped); a file in another encoding, or
    holding NUL bytes, is refused naming the line (and byte), not decoded to something else."""
    check_readable_file(path, what, error)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise error(f"{path}: {what} cannot be read ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise error(f"{path}: {what} is not UTF-8 text (line {line}, byte {data[exc.start]:#04x}); "
                    "save it as UTF-8") from None
    if "\0" in text:  # a binary or damaged file (Python 3.10's csv module would raise on it, 3.11's not)
        line = text[:text.index("\0")].count("\n") + 1
        raise error(f"{path}: {what} is not text (a NUL byte on line {line})")
    return text


_TEMPORARY = re.compile(r"^\..+\.(?:tmp|candidate)-(\d+)(?:\.\w+)?$")


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporaries (``.<name>.tmp-<pid>``, ``.<name>.candidate-<pid>``) that processes
    no longer running left in ``folder`` (a node killed mid-export or mid-build); returns them."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for f in entries:
        m = _TEMPORARY.match(f.name)
        if m is None or int(m.group(1)) == os.getpid() or _alive(int(m.group(1))):
            continue
        try:
            f.unlink()
            removed.append(f)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

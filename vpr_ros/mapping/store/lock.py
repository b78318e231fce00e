"""The writer lock of a map directory: ``writer.lock`` held with ``flock`` by the one process
that writes the map. The kernel drops it when that process ends, however it ends (SIGKILL, a
crash, a power cut), so no stale lock is ever left to clean up. The file itself stays; its text
names the last holder (pid, host, command) for the refusal message and ``vpr_ros_map_info``.

Readers never take it: SQLite's WAL journal gives them consistent snapshots.

The file is opened without following links and checked to be a regular file (a link named
``writer.lock`` is refused, never truncated through). Before every commit the writer checks that
the directory's ``writer.lock`` is still the file it locked (same device and inode): when it was
deleted or replaced another writer may have locked the new one, so the first refuses to go on.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from vpr_ros.errors import MapError
from vpr_ros.files import open_regular, read_regular_bytes

LOCK_FILE = "writer.lock"


def _describe(text: str) -> str:
    try:
        d = json.loads(text)
        return f"pid {d['pid']} on {d['host']} ({d['command']}, since {d['since']})"
    except (ValueError, KeyError, TypeError):
        return "another process"


class WriterLock:
    """Exclusive, non-blocking: a second writer is refused at once with the holder named."""

    def __init__(self, root: Path) -> None:
        self._fd: int | None = None
        self.path = root / LOCK_FILE
        try:
            fd = open_regular(self.path, "the writer lock", None, MapError, os.O_RDWR | os.O_CREAT)
        except FileNotFoundError:  # the directory itself went away
            raise MapError(f"{self.path}: cannot create the writer lock (no such directory)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = _describe(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            finally:
                os.close(fd)
            raise MapError(f"{root}: the map is being written by {holder}; one writer at a time "
                           "(stop it, or write to another map_dir)") from None
        except OSError as exc:
            os.close(fd)
            raise MapError(f"{self.path}: cannot lock ({exc.strerror or exc})") from None
        self._fd = fd
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                         "command": Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python",
                         "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, me.encode(), 0)
        except OSError:
            pass  # the lock holds without its description (e.g. a full disk)

    def verify(self) -> None:
        """MapError unless the directory's ``writer.lock`` is still the file this lock holds."""
        if self._fd is None:
            raise MapError(f"{self.path}: the writer lock was released; this process no longer writes the map")
        mine = os.fstat(self._fd)
        try:
            now = os.stat(self.path, follow_symlinks=False)
            same = (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)
        except FileNotFoundError:
            same = False
        except OSError as exc:
            raise MapError(f"{self.path}: cannot check the writer lock ({exc.strerror or exc})") from None
        if not same:
            raise MapError(f"{self.path}: the writer lock was deleted or replaced while this process held it; "
                           "another writer may have started, so nothing more is written here (stop the "
                           "other writer, then start this one again)")

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __del__(self) -> None:
        self.release()


def lock_holder(root: Path) -> str:
    """Who holds the writer lock of ``root`` now ('' if nobody), from /proc/locks (Linux): the
    check takes no lock itself, so it never makes a starting writer fail."""
    path = Path(root) / LOCK_FILE
    try:
        st = os.stat(path, follow_symlinks=False)
        entries = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return ""
    for line in entries:
        parts = line.split()  # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[3] == "WRITE":
            try:
                inode = int(parts[5].split(":")[2])
            except (IndexError, ValueError):
                continue
            if inode == st.st_ino:
                try:
                    text = read_regular_bytes(path, "the writer lock", 4096, MapError).decode("utf-8", "replace")
                except (OSError, MapError):
                    text = ""
                return _describe(text) if text else f"pid {parts[4]}"
    return ""

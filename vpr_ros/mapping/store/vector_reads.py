"""Scattered stored descriptors read on several connections at once (a compact index's re-ranking).

A compact map re-ranks its top candidates (64 per query by default) with their exact vectors,
which come from the store: 64 rows scattered over a file of tens of gigabytes that the page cache
does not hold. One connection reads them one after the other, each a random read waiting on the
disk; a few read-only connections on threads of their own keep several reads in flight (sqlite3
releases the GIL while SQLite works), which an SSD serves side by side. Measured on this project's
2-core machine with the file's pages dropped from the cache, 64 rows of 10752 float16 values from
65,536-byte pages: 8.6 ms on one connection, 4.5 ms on four.

Vectors are never changed once committed, so each connection's own read snapshot sees the same
rows: the ids asked for are all committed ones (the caller keeps the unsaved rows itself).
"""
from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

READ_CONNECTIONS = 4   # reads in flight for one search
PARALLEL_FROM = 16     # fewer rows than this are read on the caller's connection


class ParallelVectorReader:
    """``connections`` read-only connections to the store at ``path`` (opened on first use) and a
    pool of as many threads; :meth:`read` splits the ids between them."""

    def __init__(self, path: Path | str, dim: int, connections: int = READ_CONNECTIONS) -> None:
        self.path, self.dim, self.size = Path(path), int(dim), max(1, int(connections))
        self._cons: list[sqlite3.Connection] = []
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # one read at a time: the connections are shared by every caller

    def read(self, ids: Sequence[int]) -> np.ndarray:
        """Descriptors [len(ids), D] float32 of committed keyframes ``ids`` (checksums verified;
        MapError naming the keyframe otherwise), in the order asked."""
        from vpr_ros.mapping.store.database import connect_ro, read_vectors

        ids = [int(i) for i in ids]
        with self._lock:
            if not self._cons:
                self._cons = [connect_ro(self.path) for _ in range(self.size)]
                self._pool = ThreadPoolExecutor(self.size, thread_name_prefix="vpr_vectors")
            assert self._pool is not None
            parts = [ids[i::self.size] for i in range(self.size)]  # every connection a share of the file
            futures = [self._pool.submit(read_vectors, con, None, part, self.dim, self.path)
                       for con, part in zip(self._cons, parts) if part]
            rows = [f.result() for f in futures]  # the first failure (a damaged row) is raised here
        out = np.empty((len(ids), self.dim), np.float32)
        for k, got in enumerate(rows):
            out[k::self.size] = got
        return out

    def close(self) -> None:
        """Close the connections and stop the threads (a later :meth:`read` opens them again)."""
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            for con in self._cons:
                con.close()
            self._cons = []

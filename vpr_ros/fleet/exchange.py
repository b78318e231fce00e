"""The descriptor exchange between robots (ROS-free): what a robot sends within its bandwidth budget,
and which of its own keyframes a received code proposes as an inter-robot loop-closure candidate.

* :class:`ByteBudget` — a token bucket over bytes: over any interval of T seconds a robot sends at
  most ``burst + rate * T`` bytes (never more, whatever the clock does), and nothing is dropped:
  what does not fit waits for the next call.
* :class:`DescriptorSharer` — the robot's own keyframes, oldest first, packed
  ``per_packet`` to a packet as the budget allows.
* :class:`CandidateMatcher` — own and received codes in two exact inner-product indexes (real
  faiss); a keyframe arriving on either side is searched in the other, so a robot that joins late
  or a map that grows later still meets the keyframes it overlaps. Duplicated packets and keyframes
  are ignored, reordered ones are taken as they come, a robot running another model is refused
  once with the reason.

Times are seconds on any monotonic clock the caller passes (the node passes its ROS clock).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from vpr_ros.errors import FleetError, ForeignModel
from vpr_ros.fleet.codec import MAX_PER_PACKET, FleetCodec, Robot


class ByteBudget:
    """At most ``rate`` bytes per second on average with bursts of at most ``burst`` bytes (>= the
    largest packet, else that packet could never be sent)."""

    def __init__(self, rate: float, burst: float) -> None:
        if not (rate > 0 and burst > 0):
            raise FleetError(f"bandwidth budget needs a positive rate and burst (got {rate} B/s, {burst} B)")
        self.rate, self.burst = float(rate), float(burst)
        self._tokens = float(burst)
        self._at: float | None = None
        self.spent = 0

    def _refill(self, now: float) -> None:
        if self._at is not None and now > self._at:  # a clock going back adds nothing
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now if self._at is None else max(self._at, now)

    def take(self, size: int, now: float) -> bool:
        """Spend ``size`` bytes at time ``now`` if the budget holds them; False (nothing spent) if not."""
        if size > self.burst:
            raise FleetError(f"a {size}-byte message can never fit a budget whose burst is {self.burst:.0f} bytes")
        self._refill(now)
        if size > self._tokens:
            return False
        self._tokens -= size
        self.spent += size
        return True


class DescriptorSharer:
    """Packs the robot's keyframes (as they are added) into descriptor packets within ``budget``."""

    def __init__(self, codec: FleetCodec, robot: Robot, budget: ByteBudget, per_packet: int = 10) -> None:
        if not 1 <= per_packet <= MAX_PER_PACKET:
            raise FleetError(f"keyframes per packet must be 1..{MAX_PER_PACKET} (got {per_packet})")
        self.codec, self.robot, self.budget, self.per_packet = codec, robot, budget, per_packet
        self._queue: deque[tuple[int, float, np.ndarray]] = deque()
        self._seq = 0
        self._ready: bytes | None = None  # the packet built but not yet affordable (sent as it is later)
        self._ready_count = 0
        self.sent_keyframes = 0

    def add(self, keyframe_ids: Sequence[int], stamps: Sequence[float], descriptors: np.ndarray) -> None:
        """Queue keyframes (ids, stamps [N], descriptors [N, D]) to be shared."""
        for i, s, d in zip(keyframe_ids, stamps, np.asarray(descriptors, np.float32)):
            self._queue.append((int(i), float(s), d))

    @property
    def waiting(self) -> int:
        """Keyframes queued and not yet sent."""
        return len(self._queue) + (self._ready_count if self._ready is not None else 0)

    def packets(self, now: float) -> list[bytes]:
        """The packets the budget allows at ``now`` (each one is sent: the caller publishes them all)."""
        out: list[bytes] = []
        while True:
            if self._ready is None:
                if not self._queue:
                    return out
                batch = [self._queue.popleft() for _ in range(min(self.per_packet, len(self._queue)))]
                self._ready = self.codec.encode(self.robot, self._seq, [b[0] for b in batch], [b[1] for b in batch],
                                                np.stack([b[2] for b in batch]))
                self._ready_count = len(batch)
                self._seq += 1
            if not self.budget.take(len(self._ready), now):
                return out
            out.append(self._ready)
            self.sent_keyframes += self._ready_count
            self._ready = None


@dataclass(frozen=True)
class Candidate:
    """A proposed inter-robot loop closure: their keyframe looks like ours (code cosine ``score``)."""

    robot: Robot          # the other robot
    keyframe: int         # its keyframe id
    stamp: float          # its keyframe's stamp (s)
    own_keyframe: int     # this robot's keyframe id
    own_stamp: float
    score: float


@dataclass
class _Codes:
    """Codes [N, P] float32 with their keyframe ids and stamps, searched exactly."""

    dim: int
    ids: list[int] = field(default_factory=list)
    stamps: list[float] = field(default_factory=list)
    robots: list[Robot] = field(default_factory=list)

    def __post_init__(self) -> None:
        import faiss

        self.index = faiss.IndexFlatIP(self.dim)

    def add(self, robot: Robot, ids: Sequence[int], stamps: Sequence[float], vectors: np.ndarray) -> None:
        self.index.add(np.ascontiguousarray(vectors, np.float32))
        self.ids += [int(i) for i in ids]
        self.stamps += [float(s) for s in stamps]
        self.robots += [robot] * len(ids)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.index.ntotal)
        if k == 0:
            return np.zeros((len(vectors), 0), np.float32), np.zeros((len(vectors), 0), np.int64)
        return self.index.search(np.ascontiguousarray(vectors, np.float32), k)


class CandidateMatcher:
    """Matches received codes with this robot's own (``threshold``: the least code cosine of a
    candidate; ``top_k``: candidates per keyframe at most)."""

    def __init__(self, codec: FleetCodec, robot: Robot, threshold: float, top_k: int = 3) -> None:
        self.codec, self.robot, self.threshold, self.top_k = codec, robot, float(threshold), int(top_k)
        self._own = _Codes(codec.dim)
        self._theirs = _Codes(codec.dim)
        self._seen_packets: set[tuple[int, int]] = set()     # (robot id, packet number)
        self._seen_keyframes: set[tuple[int, int]] = set()   # (robot id, keyframe id)
        self.names: dict[int, str] = {robot.id: robot.name}  # robot id -> the name that claimed it first
        self.refused: dict[int, str] = {}   # robot id -> why its packets are not used (said once)
        self.duplicates = 0

    def add_own(self, keyframe_ids: Sequence[int], stamps: Sequence[float],
                descriptors: np.ndarray) -> list[Candidate]:
        """This robot's new keyframes (coded exactly as they are sent): the candidates they form with
        every keyframe received so far."""
        codes = self.codec.round_trip(descriptors)
        self._own.add(self.robot, keyframe_ids, stamps, codes)
        scores, rows = self._theirs.search(codes, self.top_k)
        return [Candidate(self._theirs.robots[r], self._theirs.ids[r], self._theirs.stamps[r], int(keyframe_ids[q]),
                          float(stamps[q]), float(s))
                for q in range(len(codes)) for s, r in zip(scores[q], rows[q]) if r >= 0 and s >= self.threshold]

    def receive(self, data: bytes) -> list[Candidate]:
        """A packet from another robot: the candidates its new keyframes form with this robot's.
        FleetError (naming robot and reason) for a damaged packet or another model's; a duplicate
        packet or keyframe adds nothing."""
        try:
            packet = self.codec.decode(data)
        except ForeignModel as exc:
            rid = exc.robot.id  # type: ignore[attr-defined]
            if rid in self.refused:
                return []  # said once; its later packets are ignored quietly
            self.refused[rid] = str(exc)
            raise
        robot = packet.robot
        if robot == self.robot:
            return []  # our own packet, heard back on the shared topic
        self.check_name(robot)
        if (robot.id, packet.seq) in self._seen_packets:
            self.duplicates += 1
            return []
        self._seen_packets.add((robot.id, packet.seq))
        new = [k for k, i in enumerate(packet.keyframe_ids) if (robot.id, int(i)) not in self._seen_keyframes]
        if not new:
            return []
        ids, stamps, vectors = packet.keyframe_ids[new], packet.stamps[new], packet.vectors[new]
        self._seen_keyframes.update((robot.id, int(i)) for i in ids)
        self._theirs.add(packet.robot, ids, stamps, vectors)
        scores, rows = self._own.search(vectors, self.top_k)
        return [Candidate(packet.robot, int(ids[q]), float(stamps[q]), self._own.ids[r], self._own.stamps[r],
                          float(s))
                for q in range(len(ids)) for s, r in zip(scores[q], rows[q]) if r >= 0 and s >= self.threshold]

    def check_name(self, robot: Robot) -> None:
        """FleetError if ``robot``'s id was claimed by a robot of another name (two robots given the
        same id would mix their keyframes in every back end)."""
        known = self.names.setdefault(robot.id, robot.name)
        if known != robot.name:
            raise FleetError(f"robot id {robot.id} is claimed by {known!r} and by {robot.name!r}: give every "
                             "robot of the fleet its own fleet.robot_id; packets of the second are ignored")

    @property
    def received(self) -> int:
        """Keyframes received from other robots (distinct)."""
        return len(self._seen_keyframes)

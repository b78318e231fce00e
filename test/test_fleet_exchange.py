"""The descriptor exchange between robots (issue 35): the bandwidth budget is never exceeded and
loses nothing, candidates are found in both directions (a robot joining late still meets the
keyframes it overlaps), duplicated and reordered packets are handled, another model is refused
once with the reason. Real faiss; a simulated clock (times are arguments, nothing sleeps)."""
from __future__ import annotations

import numpy as np
import pytest

from vpr_ros.errors import FleetError, ForeignModel
from vpr_ros.fleet.codec import FleetCodec, Robot
from vpr_ros.fleet.exchange import ByteBudget, CandidateMatcher, DescriptorSharer
from vpr_ros.mapping.map_store import ModelIdentity

MODEL = ModelIdentity("fleet-model", "ab" * 32, 224, 2048)
A, B, C, X = Robot("robot_a", 1), Robot("robot_b", 2), Robot("robot_c", 3), Robot("robot_x", 9)


def places(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, MODEL.descriptor_dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def view(p: np.ndarray, seed: int, noise: float = 0.5) -> np.ndarray:
    x = p + noise * np.random.default_rng(seed).standard_normal(p.shape).astype(np.float32) / np.sqrt(p.shape[1])
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_the_budget_is_never_exceeded_and_nothing_is_dropped():
    codec = FleetCodec(MODEL)
    rate, burst = 3000.0, 2500.0
    sharer = DescriptorSharer(codec, A, ByteBudget(rate, burst), per_packet=2)
    sharer.add(range(40), np.arange(40) * 0.1, places(40))
    sent: list[tuple[float, int]] = []
    ids: list[int] = []
    for step in range(400):  # a clock with irregular steps, one going back
        now = 0.05 * step + (0.03 if step % 7 == 0 else 0.0) - (0.2 if step == 100 else 0.0)
        for p in sharer.packets(now):
            sent.append((now, len(p)))
            ids += codec.decode(p).keyframe_ids.tolist()
    assert ids == list(range(40))  # every keyframe, once, in order
    assert sharer.waiting == 0 and sharer.sent_keyframes == 40
    times = np.array([t for t, _ in sent])
    sizes = np.array([s for _, s in sent])
    for i in range(len(sent)):  # every window [t_i, t_j]: at most burst + rate * (t_j - t_i)
        for j in range(i, len(sent)):
            window = sizes[(times >= times[i]) & (times <= times[j])].sum()
            assert window <= burst + rate * max(0.0, times[j] - times[i]) + 1e-6
    with pytest.raises(FleetError, match="can never fit"):
        ByteBudget(1000.0, 500.0).take(993, 0.0)


def test_candidates_are_found_whichever_side_comes_first():
    codec = FleetCodec(MODEL)
    shared = places(30, seed=1)             # places both robots pass
    a_only, b_only = places(40, seed=2), places(40, seed=3)
    a = CandidateMatcher(codec, A, threshold=0.6)
    found = a.add_own(range(70), np.arange(70.0), np.concatenate([view(shared, 4), a_only]))
    assert found == []  # nothing received yet
    b_codes = DescriptorSharer(codec, B, ByteBudget(1e9, 1e6))
    b_codes.add(range(100, 170), np.arange(70.0) + 500, np.concatenate([view(shared, 5), b_only]))
    packets = b_codes.packets(0.0)
    got = [c for p in packets for c in a.receive(p)]
    pairs = {(c.keyframe, c.own_keyframe) for c in got}
    assert {(100 + i, i) for i in range(30)} <= pairs  # every shared place proposed
    assert all(c.keyframe < 130 and c.own_keyframe < 30 for c in got)  # and no unshared one
    assert all(c.robot == B and c.score >= 0.6 for c in got)
    assert got[0].stamp == 500.0 and got[0].own_stamp == 0.0
    # a robot that joins late: it has heard robot_b first, its own keyframes come after
    late = CandidateMatcher(codec, C, threshold=0.6)
    for p in packets:
        assert late.receive(p) == []
    found = late.add_own(range(5), np.arange(5.0), view(shared[:5], 6))
    assert {(c.keyframe, c.own_keyframe) for c in found} >= {(100 + i, i) for i in range(5)}


def test_duplicates_reordering_own_echo_and_another_model():
    codec = FleetCodec(MODEL)
    shared = places(20, seed=7)
    a = CandidateMatcher(codec, A, threshold=0.6)
    a.add_own(range(20), np.arange(20.0), view(shared, 8))
    b = DescriptorSharer(codec, B, ByteBudget(1e9, 1e6), per_packet=5)
    b.add(range(20), np.arange(20.0), view(shared, 9))
    packets = b.packets(0.0)
    assert len(packets) == 4
    first = [c for p in reversed(packets) for c in a.receive(p)]  # reordered
    assert {c.keyframe for c in first} == set(range(20))
    assert all(a.receive(p) == [] for p in packets) and a.duplicates == 4  # duplicated
    assert a.received == 20
    echo = DescriptorSharer(codec, A, ByteBudget(1e9, 1e6))
    echo.add([0], [0.0], view(shared[:1], 10))
    assert a.receive(echo.packets(0.0)[0]) == []  # our own packet heard back on the shared topic
    other = DescriptorSharer(FleetCodec(ModelIdentity("other", "cd" * 32, 224, 2048)), X,
                             ByteBudget(1e9, 1e6))
    other.add([0, 1], [0.0, 1.0], shared[:2])
    foreign = other.packets(0.0)
    with pytest.raises(ForeignModel, match="robot 'robot_x' \\(id 9\\) runs another model"):
        a.receive(foreign[0])
    assert "another model" in a.refused[X.id]
    assert a.receive(foreign[0]) == []  # said once
    impostor = DescriptorSharer(codec, Robot("robot_b2", B.id), ByteBudget(1e9, 1e6))
    impostor.add([50], [0.0], view(shared[:1], 11))
    with pytest.raises(FleetError, match="robot id 2 is claimed by 'robot_b' and by 'robot_b2'"):
        a.receive(impostor.packets(0.0)[0])

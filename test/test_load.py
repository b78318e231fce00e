"""Behaviour under load: a 30 Hz camera into a backend three times too slow, for 5,000 frames.

The backend is the real (tiny) network plus a fixed delay: a deliberately slow model, not a
mock. The localizer must keep only the newest frame, count the dropped ones, keep its memory
flat and publish matches for recent frames (not an ever-growing backlog)."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from vpr_ros.runtime.base import DescriptorBackend  # noqa: E402

from conftest import TINY_MODEL  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]

RATE_HZ, FRAMES, DELAY_S = 30.0, 5000, 0.1


class SlowBackend(DescriptorBackend):
    """The real backend, slowed to ~10 Hz."""

    name = "slow"

    def __init__(self, inner: DescriptorBackend, delay: float) -> None:
        super().__init__(inner.model_id, inner.weights_sha256, inner.weights_source, inner.input_size,
                         inner.descriptor_dim, inner.pca_id)
        self.inner, self.delay = inner, delay

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(self.delay)
        return self.inner.infer(batch)


def rss_mib() -> float:
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024


def test_30hz_stream_into_a_slow_backend(rclpy_context, built_map, tiny_backend, traversals):
    from vpr_ros.ros.localizer_node import LocalizerNode
    from vpr_ros.ros.player import QueryPlayer

    params = {**{f"model.{k}": v for k, v in TINY_MODEL.items()}, "map_dir": str(built_map), "qos": "reliable",
              "diagnostics_period": 0.5}
    node = LocalizerNode(backend=SlowBackend(tiny_backend, DELAY_S),
                         parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    ex = MultiThreadedExecutor(num_threads=2)
    ex.add_node(node)
    spin = threading.Thread(target=ex.spin, daemon=True)
    spin.start()
    try:
        p = QueryPlayer("image")
        assert p.wait_for_localizer(20)
        images = [np.ascontiguousarray(im[:56, :56]) for im in traversals[1].images]
        lags: list[float] = []
        latest = [0.0]
        # newest stamp sent minus the stamp answered, in stream time
        p.table_listeners.append(lambda msg: lags.append(latest[0] - msg.data[0]) if msg.data else None)
        start = time.monotonic()
        rss = {}
        for i in range(FRAMES):
            stamp = 2000.0 + i / RATE_HZ
            latest[0] = stamp
            p.send(images[i % len(images)], stamp)
            if i in (1000, FRAMES - 1):
                rss[i] = rss_mib()
            target = start + (i + 1) / RATE_HZ
            while time.monotonic() < target:
                rclpy.spin_once(p, timeout_sec=max(0.0, target - time.monotonic()))
        elapsed = time.monotonic() - start
        p.spin_until(lambda: False, 1.0)
        c, s = node.counters, node.slots
        assert elapsed < FRAMES / RATE_HZ * 1.15, f"the publisher fell behind ({elapsed:.0f} s)"
        assert s.received >= FRAMES * 0.98, s.received
        assert 0.15 * FRAMES < c.processed < 0.5 * FRAMES, c.processed  # ~1/3: the model runs at ~10 Hz
        assert s.dropped >= FRAMES * 0.5 and s.pending() <= 1  # only the newest frame waits
        assert rss[FRAMES - 1] - rss[1000] < 40, rss  # flat memory (MiB)
        lag = np.array(lags[len(lags) // 10:])
        assert np.percentile(lag, 95) < 0.5, np.percentile(lag, 95)  # answers are for recent frames
        p.log.diagnostics.clear()
        assert p.spin_until(lambda: bool(p.log.diagnostics), 3)
        vals = {kv.key: kv.value for kv in p.log.diagnostics[-1].status[0].values}
        assert int(vals["frames_dropped"]) == s.dropped or int(vals["frames_dropped"]) >= FRAMES * 0.5
        print(f"received {s.received}, processed {c.processed}, dropped {s.dropped}, "
              f"lag p95 {np.percentile(lag, 95):.3f} s, RSS {rss[1000]:.0f} -> {rss[FRAMES - 1]:.0f} MiB")
        p.destroy_node()
    finally:
        ex.shutdown()
        node.destroy_node()

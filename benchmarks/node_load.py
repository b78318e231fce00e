"""Localizer under load: a 30 Hz camera into a model three times too slow, for N frames.

The backend is the real tiny network plus a fixed delay (a deliberately slow model). Prints
what reached the node, what it processed and dropped (and counted on /diagnostics), how far
behind the stream its answers were (95th percentile, stream time), and the process memory
growth. Expected: ~1/3 of the frames processed, the rest dropped and counted, answers for
recent frames (lag well under a second), flat memory. Nothing here is asserted: on a busy
machine the publisher itself falls behind, which the output says.

    python benchmarks/node_load.py [--frames 5000] [--rate 30] [--delay 0.1]
"""
from __future__ import annotations

import argparse
import os
import random
import tempfile
import threading
import time

import numpy as np


def rss_mib() -> float:
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=5000)
    ap.add_argument("--rate", type=float, default=30.0, help="camera rate (Hz)")
    ap.add_argument("--delay", type=float, default=0.1, help="extra seconds per inference (slow model)")
    a = ap.parse_args(argv)
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(150, 220)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter

    from vpr_ros.config import KeyframeConfig, ModelConfig
    from vpr_ros.demo.synthetic import make_traversals
    from vpr_ros.mapping.builder import MapBuilder, frames_from_lists
    from vpr_ros.ros.localizer_node import LocalizerNode
    from vpr_ros.ros.player import QueryPlayer
    from vpr_ros.runtime.base import DescriptorBackend
    from vpr_ros.runtime.factory import open_backend

    tiny = {"backbone": "vit_test", "input_size": 56, "seed": 3}

    class SlowBackend(DescriptorBackend):
        name = "slow"

        def __init__(self, inner: DescriptorBackend) -> None:
            super().__init__(inner.model_id, inner.weights_sha256, inner.weights_source, inner.input_size,
                             inner.descriptor_dim, inner.pca_id)
            self.inner = inner

        def _infer(self, batch: np.ndarray) -> np.ndarray:
            time.sleep(a.delay)  # the deliberately slow model
            return self.inner.infer(batch)

    first, second = make_traversals(n_places=24, seed=11)
    # ONNX Runtime runs a whole inference without the GIL; a PyTorch model in this same process
    # would be slowed many times over by the publisher loop below (GIL contention), which a
    # robot, where the node has its own process, does not have.
    inner = open_backend("onnxruntime", ModelConfig(**tiny))
    tmp = tempfile.mkdtemp(prefix="vpr_node_load_")
    b = MapBuilder(inner, KeyframeConfig(min_distance=0.5), source="benchmark")
    b.add_many(frames_from_lists(first.images, first.stamps, first.poses))
    map_dir = b.save(f"{tmp}/map")

    rclpy.init()
    params = {**{f"model.{k}": v for k, v in tiny.items()}, "map_dir": str(map_dir), "qos": "reliable",
              "diagnostics_period": 0.5}
    node = LocalizerNode(backend=SlowBackend(inner), parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    ex = MultiThreadedExecutor(num_threads=2)
    ex.add_node(node)
    threading.Thread(target=ex.spin, daemon=True).start()
    p = QueryPlayer("image")
    if not p.wait_for_localizer(30):
        print("the localizer did not come up")
        return 1
    images = [np.ascontiguousarray(im[:56, :56]) for im in second.images]
    lags: list[float] = []
    latest = [0.0]
    p.table_listeners.append(lambda msg: lags.append(latest[0] - msg.data[0]) if msg.data else None)
    start = time.monotonic()
    rss = {}
    for i in range(a.frames):
        stamp = 2000.0 + i / a.rate
        latest[0] = stamp
        p.send(images[i % len(images)], stamp)
        if i in (min(1000, a.frames // 5), a.frames - 1):
            rss[i] = rss_mib()
        target = start + (i + 1) / a.rate
        while time.monotonic() < target:
            rclpy.spin_once(p, timeout_sec=max(0.0, target - time.monotonic()))
    elapsed = time.monotonic() - start
    p.spin_until(lambda: False, 1.0)
    c, s = node.counters, node.slots
    lag = np.array(lags[len(lags) // 10:]) if lags else np.zeros(1)
    r0, r1 = rss[min(rss)], rss[max(rss)]
    print(f"frames sent {a.frames} at {a.rate:.0f} Hz in {elapsed:.1f} s "
          f"({'on time' if elapsed < a.frames / a.rate * 1.15 else 'the PUBLISHER fell behind: busy machine'})")
    print(f"received {s.received} ({s.received / a.frames:.1%}), processed {c.processed} "
          f"({c.processed / max(1, s.received):.1%}), dropped and counted {s.dropped}, still waiting {s.pending()}")
    print(f"answer lag behind the stream: p50 {np.percentile(lag, 50):.3f} s, p95 {np.percentile(lag, 95):.3f} s")
    print(f"memory: {r0:.0f} -> {r1:.0f} MiB ({r1 - r0:+.1f} MiB over {max(rss) - min(rss)} frames)")
    p.destroy_node()
    ex.shutdown()
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

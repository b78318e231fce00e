"""Localizer node: end-to-end latency over model-only latency (batch 1, CPU), and idle CPU use.

The node runs as its own process (the localize.launch graph, as on a robot). Frames are sent
one at a time; end-to-end = publish -> vpr/match_table received. Model-only = preprocess +
inference of the same frames in this process with the same backend. Then the node is left idle
for --idle seconds and its CPU time is read from /proc. Target: end-to-end / model <= 1.2.

    python benchmarks/node_latency.py [--frames 40] [--model-config models/d2vpr_student.yaml]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import yaml


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--idle", type=float, default=10.0)
    ap.add_argument("--model-config", default="models/d2vpr_student.yaml")
    a = ap.parse_args(argv)
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(150, 220)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    from vpr_ros.config import KeyframeConfig, model_config_from
    from vpr_ros.demo.synthetic import make_traversals
    from vpr_ros.launch_graph import localize_graph, start_graph, stop_graph
    from vpr_ros.mapping.builder import MapBuilder, frames_from_lists
    from vpr_ros.runtime.factory import open_backend
    from vpr_ros.runtime.preprocess import preprocess

    tmp = Path(tempfile.mkdtemp(prefix="vpr_node_bench_"))
    os.environ["VPR_ROS_CACHE"] = str(tmp / "cache")
    cfg = model_config_from(a.model_config)
    first, second = make_traversals(n_places=max(a.frames, 20))
    with open_backend("auto", cfg, "cpu") as backend:
        b = MapBuilder(backend, KeyframeConfig(min_distance=0.5))
        b.add_many(frames_from_lists(first.images, first.stamps, first.poses))
        b.save(tmp / "map")
        backend.infer(preprocess(second.images[0], backend.input_size)[None])
        model_ms = []
        for img in second.images[: a.frames]:
            t = time.perf_counter()
            backend.infer(preprocess(img, backend.input_size)[None])
            model_ms.append((time.perf_counter() - t) * 1e3)
        name = backend.name
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "map_dir": str(tmp / "map"), "qos": "reliable", **{f"model.{k}": v for k, v in vars(cfg).items()}}}}))
    procs = start_graph(localize_graph(params_file=str(params)), log_dir=str(tmp / "logs"))
    from vpr_ros.ros.player import play_session

    try:
        warm = [5000.0, 5001.0, 5002.0]
        measured = [6000.0 + i for i in range(a.frames)]
        log, answered = play_session("image", list(second.images[:3]) + list(second.images[: a.frames]),
                                     warm + measured, frame_timeout=60.0)
        if log is None:
            print((tmp / "logs" / "localizer.log").read_text()[-2000:])
            return 1
        e2e_ms = [log.latency_s[t] * 1e3 for t in measured if t in log.latency_s]
        pid = procs[0].pid
        c0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(a.idle)  # no input: the node should do (almost) nothing
        idle = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
    finally:
        stop_graph(procs)
    e2e, model = statistics.median(e2e_ms), statistics.median(model_ms)
    print(f"backend {name}; {len(e2e_ms)} frames of 160x120")
    print(f"model only (preprocess + inference, batch 1): median {model:.1f} ms")
    print(f"end to end (publish -> match_table received): median {e2e:.1f} ms, p95 "
          f"{sorted(e2e_ms)[int(0.95 * (len(e2e_ms) - 1))]:.1f} ms")
    print(f"ratio end-to-end / model: {e2e / model:.2f}   (target <= 1.2)")
    print(f"idle node CPU: {idle:.1%} of one core over {a.idle:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""ONNX Runtime vs PyTorch on the CPU for the D2-VPR student (ViT-S/14, 224 px), side by side.

* latency at batch 1 and 8 with the same thread count, repetitions interleaved with pauses, median;
* peak resident memory of each backend (each measured in its own child process);
* the aggregator's share of the PyTorch forward time;
* ONNX Runtime with idle threads sleeping (our default) against spinning (its own default), at a
  10 Hz camera rate: latency and CPU time per frame.
Target (deployment issue): ONNX Runtime >= 1.3x faster than PyTorch at batch 1 on 2 cores.

    python benchmarks/backend_speed.py [--threads 2] [--repeats 10] [--model-config models/d2vpr_student.yaml]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


def peak_memory_child(backend: str, model_config: str, threads: int, cache: str) -> float:
    """Peak RSS (MiB) of a fresh process that opens ``backend`` and runs batch 8 once.
    The ONNX Runtime child never imports torch (as on a robot without it)."""
    if backend == "torch":
        open_code = (f"import torch; torch.set_num_threads({threads})\n"
                     "from vpr_ros.runtime.torch_backend import TorchBackend\nb = TorchBackend(cfg)\n")
    else:
        open_code = ("from vpr_ros.runtime.factory import onnx_for\n"
                     "from vpr_ros.runtime.onnxruntime_backend import OnnxRuntimeBackend\n"
                     f"b = OnnxRuntimeBackend(onnx_for(cfg, {cache!r}), threads={threads})\n")
    code = ("import sys, numpy as np\n"
            "from vpr_ros.config import model_config_from\n"
            f"cfg = model_config_from({model_config!r})\n" + open_code +
            "b.infer(np.zeros((8, 3, b.input_size, b.input_size), np.float32))\n"
            # VmHWM: peak of this address space (ru_maxrss would include the parent's peak before exec)
            "hwm = open('/proc/self/status').read().split('VmHWM:')[1].split()[0]\n"
            "print(int(hwm) / 1024, 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    mib, torch_loaded = out.stdout.strip().splitlines()[-1].split()
    if backend != "torch" and torch_loaded == "True":
        raise RuntimeError("the ONNX Runtime child imported torch")
    return float(mib)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--model-config", default="models/d2vpr_student.yaml")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    from vpr_ros.config import model_config_from
    from vpr_ros.runtime.onnxruntime_backend import OnnxRuntimeBackend
    from vpr_ros.runtime.factory import onnx_for
    from vpr_ros.runtime.torch_backend import TorchBackend

    cfg = model_config_from(a.model_config)
    cache = tempfile.mkdtemp(prefix="vpr_bench_")
    t0 = time.perf_counter()
    onnx_path = onnx_for(cfg, cache)
    export_s = time.perf_counter() - t0
    tb = TorchBackend(cfg)
    ob = OnnxRuntimeBackend(onnx_path, threads=a.threads)
    s = cfg.input_size
    rows = []
    for batch in (1, 8):
        x = np.random.default_rng(batch).normal(size=(batch, 3, s, s)).astype(np.float32)
        diff = float(np.abs(tb.infer(x) - ob.infer(x)).max())
        tt, to = [], []
        for _ in range(a.repeats):
            # a pause after each call: one backend's idle threads must not slow the other's run
            t = time.perf_counter()
            tb.infer(x)
            tt.append(time.perf_counter() - t)
            time.sleep(0.2)
            t = time.perf_counter()
            ob.infer(x)
            to.append(time.perf_counter() - t)
            time.sleep(0.2)
        mt, mo = statistics.median(tt) * 1e3, statistics.median(to) * 1e3
        rows.append({"batch": batch, "torch_ms": mt, "onnxruntime_ms": mo, "speedup": mt / mo, "max_abs_diff": diff})
    # the aggregator's share of the torch forward (same shapes as inside the model)
    model = tb.model
    agg_share = {}
    with torch.inference_mode():
        for batch in (1, 8):
            x = torch.randn(batch, 3, s, s)
            f = torch.randn(batch, model.aggregator.generator[0].in_channels // 2, s // 14, s // 14)
            c = torch.randn(batch, f.shape[1])
            ta, tm = [], []
            for _ in range(a.repeats):
                t = time.perf_counter()
                model.aggregator(f, c)
                ta.append(time.perf_counter() - t)
                t = time.perf_counter()
                model(x)
                tm.append(time.perf_counter() - t)
            agg_share[batch] = statistics.median(ta) / statistics.median(tm)
    # idle threads: sleeping (ours) vs spinning (ONNX Runtime's default), frames 0.1 s apart, interleaved
    spinning = OnnxRuntimeBackend(onnx_path, threads=a.threads, spin=True)
    x = np.random.default_rng(0).normal(size=(1, 3, s, s)).astype(np.float32)
    idle = {"sleeping": ([], []), "spinning": ([], [])}
    for _ in range(a.repeats):
        for label, b in (("sleeping", ob), ("spinning", spinning)):
            c, t = time.process_time(), time.perf_counter()
            b.infer(x)
            idle[label][0].append(time.perf_counter() - t)
            time.sleep(0.1)  # the camera's period: what the idle threads do now is what differs
            idle[label][1].append(time.process_time() - c)
    mem = {b: peak_memory_child(b, a.model_config, a.threads, cache) for b in ("torch", "onnxruntime")}
    print(f"model {tb.model_id}, {a.threads} threads, export {export_s:.1f} s")
    print(f"{'batch':>5} {'torch ms':>9} {'ORT ms':>8} {'ORT speed-up':>13} {'max|diff|':>10} {'aggregator share':>17}")
    for r in rows:
        print(f"{r['batch']:>5} {r['torch_ms']:>9.1f} {r['onnxruntime_ms']:>8.1f} {r['speedup']:>12.2f}x "
              f"{r['max_abs_diff']:>10.1e} {agg_share[r['batch']]:>16.1%}")
    lat = {k: statistics.median(v[0]) * 1e3 for k, v in idle.items()}
    cpu = {k: statistics.median(v[1]) * 1e3 for k, v in idle.items()}
    print(f"ORT idle threads at 10 Hz, batch 1: sleeping {lat['sleeping']:.1f} ms, {cpu['sleeping']:.0f} ms CPU per "
          f"frame; spinning {lat['spinning']:.1f} ms, {cpu['spinning']:.0f} ms CPU per frame "
          f"(CPU ratio {cpu['sleeping'] / cpu['spinning']:.2f}, latency ratio {lat['sleeping'] / lat['spinning']:.2f})")
    print(f"peak RSS (own process, batch 8): torch {mem['torch']:.0f} MiB, onnxruntime {mem['onnxruntime']:.0f} MiB")
    print(json.dumps({"rows": rows, "aggregator_share": agg_share, "peak_rss_mib": mem,
                      "ort_idle_threads": {"latency_ms": lat, "cpu_ms_per_frame": cpu}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

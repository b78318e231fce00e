"""Explicit INT8 (Q/DQ graph) against FP32 on ONNX Runtime CPU, side by side in one run.

For the D2-VPR student (ViT-S/14, 224 px): quantizes the FP32 export with calibration images
(procedural street views, disjoint from the evaluation data), then measures
* agreement with FP32 (the accuracy gate: descriptor cosine, local features, nearest neighbour);
* Recall@1/5/10 on the corridor benchmark (../shared/data/corridor) with FP32 and with INT8;
* latency at batch 1 and 8, same thread count, repetitions interleaved, median; the speed-up.
Goal (deployment issue): INT8 >= 1.5x faster than FP32 ONNX Runtime at no Recall@1 loss.
Weights are random unless --model-config names trained ones (none are reachable here).

    python benchmarks/int8_cpu.py [--threads 2] [--method percentile] [--repeats 10]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def latency(backend, x: np.ndarray) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    backend.infer(x)
    return (time.perf_counter() - t) * 1e3


def main(argv: list[str] | None = None) -> int:
    from vpr_ros.config import ModelConfig, model_config_from
    from vpr_ros.datasets import read_eval_dataset
    from vpr_ros.eval_run import describe_images, evaluate_descriptors
    from vpr_ros.export.accuracy_gate import compare, gate_images
    from vpr_ros.export.quantize import quantize_int8
    from vpr_ros.runtime.factory import onnx_for
    from vpr_ros.runtime.onnxruntime_backend import OnnxRuntimeBackend

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-config", default="")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--method", default="percentile")
    ap.add_argument("--target", default="cpu", help="'cpu' (ONNX Runtime's fast INT8 form) or 'tensorrt'")
    ap.add_argument("--calibration-images", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--corridor", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "corridor"))
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "vpr_ros_int8_bench"))
    a = ap.parse_args(argv)
    cfg = model_config_from(a.model_config) if a.model_config else ModelConfig()
    fp32 = onnx_for(cfg, a.cache)
    from vpr_ros.demo.synthetic import place_views
    from vpr_ros.runtime.preprocess import preprocess_batch

    calib = preprocess_batch(list(place_views(a.calibration_images // 2, 2, cfg.input_size, seed=5)
                                  .reshape(-1, cfg.input_size, cfg.input_size, 3)), cfg.input_size)
    t = time.time()
    int8 = quantize_int8(fp32, Path(a.cache) / f"{fp32.stem}-int8-{a.target}-{a.method}.onnx",
                         [calib[i:i + 8] for i in range(0, len(calib), 8)], a.method, a.target)
    print(f"quantized in {time.time() - t:.0f} s: {int8} ({int8.stat().st_size / 2**20:.1f} MiB; FP32 "
          f"{fp32.stat().st_size / 2**20:.1f} MiB)")
    with OnnxRuntimeBackend(fp32, threads=a.threads) as f, OnnxRuntimeBackend(int8, threads=a.threads) as q:
        images, source = gate_images(size=cfg.input_size)
        gate = compare(f, q, images, "int8", source)
        print(f"gate: {gate.summary()} -> {'PASS' if gate.passed else 'FAIL'}")
        corridor = Path(a.corridor)
        if corridor.is_dir():
            ds = read_eval_dataset(corridor)
            for name, b in (("FP32", f), ("INT8", q)):
                db = describe_images(b, ds.database, 8, False)
                qu = describe_images(b, ds.queries, 8, False)
                r = evaluate_descriptors(db, qu, ds.positives).recalls
                print(f"corridor {name}: R@1 {r[1]:.3f} R@5 {r[5]:.3f} R@10 {r[10]:.3f}")
        else:
            print(f"corridor benchmark not found at {corridor}: Recall not measured")
        rng = np.random.default_rng(0)
        for batch in (1, 8):
            x = rng.standard_normal((batch, 3, cfg.input_size, cfg.input_size)).astype(np.float32)
            for b in (f, q):
                b.infer(x)
            tf, tq = [], []
            for _ in range(a.repeats):  # interleaved, with a pause: neither warms the other's caches
                tf.append(latency(f, x))
                time.sleep(0.05)
                tq.append(latency(q, x))
                time.sleep(0.05)
            mf, mq = statistics.median(tf), statistics.median(tq)
            print(f"batch {batch}: FP32 {mf:7.1f} ms, INT8 {mq:7.1f} ms -> INT8 {mf / mq:.2f}x faster "
                  f"({a.threads} threads)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

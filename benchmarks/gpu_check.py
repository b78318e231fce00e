"""GPU measurements of the D2-VPR student, side by side in one run (needs CUDA).

1. environment: GPU, torch, TensorRT / pycuda / ONNX Runtime providers present or not;
   the package's backends end to end: eager FP32 PyTorch vs the CUDA-graph backend (FP16, BF16)
   at batch 1 and 32, with descriptor and local-feature parity;
2. a large fp16 GEMM as the FLOP/s ceiling of this run;
3. the student (ViT-S/14, 224 px) at batch 1 and 32: PyTorch eager FP32, eager FP16,
   torch.compile FP16 -> latency (median of CUDA-event timings), images/s, model FLOP/s as a
   fraction of the GEMM ceiling; FP16 vs FP32 descriptor cosine (must be >= 0.999);
4. the fused vs per-region aggregator on the GPU;
5. a short fine-tuning run (stage 2 recipe: blocks 1-8 frozen, multi-similarity loss + miner,
   AdamW 2e-4 / wd 1e-3, warm-up, AMP) on procedurally generated places: images/s, peak memory,
   loss curve, Recall@1 on held-out places before/after.

    python benchmarks/gpu_check.py --out results_dir

Weights are random (no pretrained weights are reachable here), made non-trivial so that every
path is exercised; speed and parity do not depend on the values.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from vpr_ros.config import ModelConfig
from vpr_ros.model.factory import create
from vpr_ros.model.report import compute


def event_time(fn, reps: int = 30, warmup: int = 5) -> float:  # type: ignore[no-untyped-def]
    """Median milliseconds of ``fn`` measured with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def perturb(model: torch.nn.Module, scale: float = 0.02) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if not n.endswith("gem.p"):
                p.add_(torch.randn(p.shape, generator=g).to(p.device) * scale)


def environment() -> dict:
    env = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda}
    for mod in ("tensorrt", "pycuda", "onnxruntime"):
        try:
            m = __import__(mod)
            env[mod] = getattr(m, "__version__", "present")
        except Exception as exc:  # noqa: BLE001
            env[mod] = f"absent ({type(exc).__name__})"
    try:
        import onnxruntime as ort

        env["onnxruntime_providers"] = ort.get_available_providers()
    except Exception:  # noqa: BLE001
        pass
    return env


def gemm_ceiling(dtype: torch.dtype = torch.float16, n: int = 8192) -> float:
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    ms = event_time(lambda: a @ b, reps=20)
    return 2 * n**3 / (ms / 1e3)


def inference(results: dict, gemm: float) -> None:
    cfg = ModelConfig()
    gmac, _ = compute(cfg)
    flop_per_img = 2 * gmac * 1e9
    model = create(cfg).cuda().eval()
    perturb(model)
    model.fold_batchnorm()
    model.backbone.fix_pos_embed()
    half = copy.deepcopy(model).half()
    compiled = torch.compile(half)
    graphed = torch.compile(copy.deepcopy(half), mode="reduce-overhead")  # CUDA graphs
    rows = []
    for batch in (1, 32):
        x = torch.randn(batch, 3, 224, 224, device="cuda")
        xh = x.half()
        with torch.inference_mode():
            ref = model(x).float()
            fp16 = half(xh).float()
            comp = compiled(xh).float()
            cos = torch.nn.functional.cosine_similarity(ref, fp16, dim=1)
            cos_c = torch.nn.functional.cosine_similarity(ref, comp, dim=1)
            graphed(xh)
            for name, fn in (("eager fp32", lambda: model(x)), ("eager fp16", lambda: half(xh)),
                             ("compile fp16", lambda: compiled(xh)),
                             ("compile+graph fp16", lambda: graphed(xh).clone())):
                ms = event_time(fn)
                rows.append({"backend": name, "batch": batch, "latency_ms": ms,
                             "images_per_s": batch / (ms / 1e3),
                             "model_tflops": flop_per_img * batch / (ms / 1e3) / 1e12,
                             "fraction_of_gemm": flop_per_img * batch / (ms / 1e3) / gemm})
        results.setdefault("fp16_cosine_min", {})[f"batch{batch}"] = {
            "eager": cos.min().item(), "compile": cos_c.min().item()}
    results["inference"] = rows
    results["model_gmac_per_image"] = gmac


def backends(results: dict) -> None:
    """The package's backends end to end (numpy in, numpy out, host copies included): eager FP32
    PyTorch vs the CUDA-graph backend (fp16, bf16), batch 1 and 32, side by side; parity of
    descriptors and dense local features against FP32."""
    from vpr_ros.runtime.cudagraph_backend import CudaGraphBackend
    from vpr_ros.runtime.torch_backend import TorchBackend

    cfg = ModelConfig()
    rng = np.random.default_rng(0)
    rows, parity = [], {}
    opened = {"eager fp32 (torch)": TorchBackend(cfg, device="cuda")}
    for prec in ("fp16", "bf16"):
        opened[f"cudagraph {prec}"] = CudaGraphBackend(cfg, "cuda", prec, max_batch=32)
    for batch in (1, 32):
        x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
        ref_d, ref_l = opened["eager fp32 (torch)"].infer_local(x)
        for name, b in opened.items():
            d, loc = b.infer_local(x)
            cos_d = float(((d * ref_d).sum(1) / np.linalg.norm(d, axis=1) / np.linalg.norm(ref_d, axis=1)).min())
            cos_l = float(((loc * ref_l).sum(-1)).mean())
            for _ in range(5):
                b.infer(x)
            times = []
            for _ in range(30):
                t = time.perf_counter()
                b.infer(x)
                times.append((time.perf_counter() - t) * 1e3)
            ms = statistics.median(times)
            rows.append({"backend": name, "batch": batch, "latency_ms": ms, "images_per_s": batch / (ms / 1e3)})
            parity[f"{name} batch{batch}"] = {"descriptor_cos_min": cos_d, "local_cos_mean": cos_l}
    base = {r["batch"]: r["latency_ms"] for r in rows if r["backend"].startswith("eager")}
    for r in rows:
        r["speedup_vs_eager_fp32"] = base[r["batch"]] / r["latency_ms"]
    for b in opened.values():
        b.close()
    results["backends"] = rows
    results["backend_parity"] = parity


def aggregator(results: dict) -> None:
    from vpr_ros.model.aggregator import FusedDeformableAggregator

    agg = FusedDeformableAggregator(768).cuda().eval()
    perturb(agg)
    out = []
    for b in (8, 32):
        f, c = torch.randn(b, 768, 16, 16, device="cuda"), torch.randn(b, 768, device="cuda")
        with torch.inference_mode():
            diff = (agg(f, c) - agg.forward_per_region(f, c)).abs().max().item()
            tf = event_time(lambda: agg(f, c))
            tp = event_time(lambda: agg.forward_per_region(f, c))
        out.append({"batch": b, "fused_ms": tf, "per_region_ms": tp, "ratio": tp / tf, "max_diff": diff})
    results["aggregator_gpu"] = out


def synthetic_places(n_places: int, views: int, seed: int) -> np.ndarray:
    """[n_places, views, 224, 224, 3] uint8 from the demo's procedural street."""
    from vpr_ros.demo.synthetic import place_views

    return place_views(n_places, views, 224, seed)


def to_batch(imgs: np.ndarray) -> torch.Tensor:
    from vpr_ros.runtime.preprocess import preprocess_batch

    return torch.from_numpy(preprocess_batch(list(imgs), 224))


def recall_at_1(model: torch.nn.Module, db: torch.Tensor, q: torch.Tensor) -> float:
    model.eval()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
        d = torch.cat([model(db[i:i + 64].cuda()).float() for i in range(0, len(db), 64)])
        e = torch.cat([model(q[i:i + 64].cuda()).float() for i in range(0, len(q), 64)])
    return (e @ d.T).argmax(1).eq(torch.arange(len(q), device="cuda")).float().mean().item()


def finetune(results: dict, steps: int, places_per_batch: int) -> None:
    from pytorch_metric_learning import losses, miners

    k = 4
    t0 = time.time()
    train = synthetic_places(240, k, seed=1)
    val = synthetic_places(100, 2, seed=2)
    gen_s = time.time() - t0
    train_t = to_batch(train.reshape(-1, 224, 224, 3)).reshape(240, k, 3, 224, 224)
    val_db, val_q = to_batch(val[:, 0]), to_batch(val[:, 1])
    model = create(ModelConfig()).cuda()
    model.freeze_for("finetune")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=1e-3)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    loss_fn = losses.MultiSimilarityLoss(alpha=1.0, beta=50.0, base=0.0)
    miner = miners.MultiSimilarityMiner(epsilon=0.1)
    scaler = torch.amp.GradScaler("cuda")
    r1_before = recall_at_1(model, val_db, val_q)
    rng = np.random.default_rng(0)
    curve = []
    skipped = 0
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    start = time.time()
    for step in range(steps):
        model.train()
        ids = rng.choice(240, places_per_batch, replace=False)
        x = train_t[ids].reshape(-1, 3, 224, 224).cuda(non_blocking=True)
        labels = torch.arange(places_per_batch, device="cuda").repeat_interleave(k)
        with torch.autocast("cuda", dtype=torch.float16):
            emb = model(x)
        emb = emb.float()
        loss = loss_fn(emb, labels, miner(emb, labels))
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scale_before = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        skipped += scaler.get_scale() < scale_before  # GradScaler skipped a non-finite step
        sched.step()
        if step % 10 == 0 or step == steps - 1:
            curve.append((step, loss.item()))
    torch.cuda.synchronize()
    elapsed = time.time() - start
    r1_after = recall_at_1(model, val_db, val_q)
    results["finetune"] = {
        "steps": steps, "batch": places_per_batch * k, "images_per_s": steps * places_per_batch * k / elapsed,
        "seconds": elapsed, "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
        "trainable_params_m": sum(p.numel() for p in params) / 1e6, "data_generation_s": gen_s,
        "recall_at_1_before": r1_before, "recall_at_1_after": r1_after, "skipped_steps": int(skipped),
        "loss_curve": curve}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_results")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--places-per-batch", type=int, default=16)
    ap.add_argument("--skip-finetune", action="store_true")
    ap.add_argument("--skip-inference", action="store_true")
    ap.add_argument("--backends-only", action="store_true",
                    help="environment + the package's backends only (no torch.compile rows, aggregator, fine-tuning)")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device")
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # FP32 means FP32 in the parity check
    torch.backends.cudnn.allow_tf32 = False
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"environment": environment()}
    gemm = gemm_ceiling()
    results["gemm_fp16_tflops"] = gemm / 1e12
    if a.backends_only:
        backends(results)
    elif not a.skip_inference:
        backends(results)
        inference(results, gemm)
        aggregator(results)
    if not a.skip_finetune and not a.backends_only:
        finetune(results, a.steps, a.places_per_batch)
    (out / "gpu_results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results["environment"]))
    print(f"GEMM fp16 8192^3: {results['gemm_fp16_tflops']:.0f} TFLOP/s; "
          f"student {results.get('model_gmac_per_image', 0):.2f} GMAC/img")
    print(f"{'backend':>19} {'batch':>5} {'ms':>8} {'img/s':>9} {'TFLOP/s':>8} {'of GEMM':>8}")
    for r in results.get("inference", []):
        print(f"{r['backend']:>19} {r['batch']:>5} {r['latency_ms']:>8.2f} {r['images_per_s']:>9.0f} "
              f"{r['model_tflops']:>8.1f} {r['fraction_of_gemm']:>8.1%}")
    print("fp16 vs fp32 cosine (min):", json.dumps(results.get("fp16_cosine_min")))
    print("package backends, end to end (numpy in/out):")
    for r in results.get("backends", []):
        print(f"  {r['backend']:>20} batch {r['batch']:>2}: {r['latency_ms']:7.2f} ms {r['images_per_s']:8.0f} img/s "
              f"{r['speedup_vs_eager_fp32']:5.2f}x vs eager fp32")
    for k, v in results.get("backend_parity", {}).items():
        print(f"  parity {k}: descriptor cos min {v['descriptor_cos_min']:.6f}, local cos mean {v['local_cos_mean']:.5f}")
    for r in results.get("aggregator_gpu", []):
        print(f"aggregator batch {r['batch']}: fused {r['fused_ms']:.2f} ms, per-region {r['per_region_ms']:.2f} ms, "
              f"{r['ratio']:.1f}x, max diff {r['max_diff']:.1e}")
    if "finetune" in results:
        f = results["finetune"]
        print(f"finetune: {f['steps']} steps x batch {f['batch']} AMP: {f['images_per_s']:.0f} img/s, "
              f"peak {f['peak_memory_gib']:.2f} GiB, skipped {f['skipped_steps']}, R@1 {f['recall_at_1_before']:.3f} -> {f['recall_at_1_after']:.3f}")
        print("loss:", " ".join(f"{s}:{v:.3f}" for s, v in f["loss_curve"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Training data path, side by side in one run: today's thread loader vs the worker-process loader.

Both read the same GSV-Cities-layout batches (procedural places written as JPEG files at
``--source-px``, resized to 224 and RandAugment-ed as in training) for the same steps:

* threads: ``BatchLoader`` (decode + augment + normalise in a thread pool, float32 batches);
* processes: ``step_loader`` (DataLoader workers, uint8 batches, normalised by ``to_model_input``
  in the consumer, as the trainer does; JPEGs decoded at reduced scale where large enough);
* the thread loader as it was before the process loader (``--baseline-rev``, run from a
  ``git archive`` of that revision in a subprocess, same files and batches);
* processes reading the decoded-image cache (``data.decoded_cache``: images decoded and resized
  once, so a batch costs only augmentation; built before timing).

Each loader is measured ``--repeats`` times, interleaved, and the median is reported (a small
shared VM varies by +-20% from one run to the next).

With ``--model`` it also measures how many images per second a fine-tuning step of the
ViT-S student consumes on ``--device`` (the loader should stay ahead of it).

    python benchmarks/loader_speed.py --workers 2 --threads 4 --steps 12
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch


def make_dataset(root: Path, places: int, px: int) -> list[Path]:
    from vpr_ros.demo.synthetic import place_views, write_gsv_cities
    from vpr_ros.training.gsv_cities import read_gsv_cities

    if not (root / "Dataframes").is_dir():
        write_gsv_cities(root, place_views(places, 4, px, seed=3), "Benchville")
    return read_gsv_cities(root).paths


def rate_threads(paths: list[Path], plan, steps: int, threads: int) -> float:  # type: ignore[no-untyped-def]
    from vpr_ros.training.batches import BatchLoader

    loader = BatchLoader(paths, 224, 0, True, 3, 9, threads)
    it = loader.iterate(plan, 0, steps + 1)
    next(it)  # first batch: start-up, not throughput
    t, n = time.perf_counter(), 0
    for _, x, _, _ in it:
        n += len(x)
    rate = n / (time.perf_counter() - t)
    loader.close()
    return rate


def rate_threads_at(rev: str, root: Path, places_per_batch: int, steps: int, threads: int,
                    src: Path | None = None) -> float:
    """The thread loader as it was at git revision ``rev`` (``git archive`` of it into a temporary
    folder, or ``src`` holding that archive's vpr_ros/), run in a subprocess on the same files
    and batch plan."""
    import sys

    if src is None:
        repo = Path(__file__).resolve().parent.parent
        src = Path(tempfile.mkdtemp(prefix="vpr_ros_baseline_"))
        archive = subprocess.run(["git", "-C", str(repo), "archive", rev, "vpr_ros"], check=True,
                                 capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    code = f"""
import time
from vpr_ros.training.batches import BatchLoader
from vpr_ros.training.gsv_cities import read_gsv_cities
from vpr_ros.training.sampler import PlaceBatches
d = read_gsv_cities({str(root)!r})
plan = PlaceBatches(d.place_members(), {places_per_batch}, 4, 0)
loader = BatchLoader(d.paths, 224, 0, True, 3, 9, {threads})
it = loader.iterate(plan, 0, {steps + 1})
next(it)
t, n = time.perf_counter(), 0
for _, x, _, _ in it:
    n += len(x)
print(n / (time.perf_counter() - t))
loader.close()
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(src)}, cwd=str(src))
    return float(out.stdout.strip().splitlines()[-1])


def rate_processes(paths: list[Path], plan, steps: int, workers: int, prefetch: int = 2,  # type: ignore[no-untyped-def]
                   device: str = "cpu", decoded: Path | None = None) -> float:
    """Images/s of the worker-process loader once every worker has started and filled its
    read-ahead; batches normalised on ``device`` as the trainer does."""
    from vpr_ros.training.batches import BatchSource, StepBatches, step_loader, to_model_input

    warm = workers * (prefetch + 1)
    dev = torch.device(device)
    loader = step_loader(StepBatches(BatchSource(paths, 224, 0, True, 3, 9, decoded=decoded), plan), 0, warm + steps,
                         workers, pin_memory=dev.type == "cuda", prefetch=prefetch)
    it = iter(loader)
    for _ in range(warm):  # start-up (process start, imports) and the read-ahead: not throughput
        next(it)
    t, n = time.perf_counter(), 0
    for _, images, _, _ in it:
        n += len(to_model_input(images, dev))
    if dev.type == "cuda":
        torch.cuda.synchronize()
    rate = n / (time.perf_counter() - t)
    del it, loader
    return rate


def rate_model(device: str, batch: int, steps: int) -> float:
    """Images/s of fine-tuning steps of the ViT-S student (AMP on CUDA) on random inputs."""
    from vpr_ros.config import ModelConfig
    from vpr_ros.model.factory import create
    from vpr_ros.training.objectives import MultiSimilarity

    dev = torch.device(device)
    model = create(ModelConfig()).to(dev)
    model.freeze_for("finetune")
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    ms = MultiSimilarity()
    x = torch.randn(batch, 3, 224, 224, device=dev)
    labels = torch.arange(batch // 4, device=dev).repeat_interleave(4)
    amp = torch.autocast(dev.type, dtype=torch.float16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)

    def step() -> None:
        with amp:
            d = model(x)
        loss, _ = ms(d.float(), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="", help="GSV-Cities tree to read (default: a generated one)")
    ap.add_argument("--places", type=int, default=96)
    ap.add_argument("--source-px", type=int, default=480, help="side of the generated JPEG files")
    ap.add_argument("--places-per-batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=4, help="thread loader: threads (today's default 4)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="process loader: workers")
    ap.add_argument("--baseline-rev", default="f9ff1b6",
                    help="git revision whose thread loader is measured too ('' = skip); f9ff1b6 is the "
                         "last one before the process loader")
    ap.add_argument("--baseline-src", default="", help="folder holding vpr_ros/ of --baseline-rev "
                    "(where git is not available)")
    ap.add_argument("--repeats", type=int, default=3, help="measurements of each loader (median reported)")
    ap.add_argument("--model", action="store_true", help="also measure the model's consumption")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args(argv)
    from vpr_ros.training.sampler import PlaceBatches
    from vpr_ros.training.gsv_cities import read_gsv_cities

    root = Path(a.root) if a.root else Path(tempfile.gettempdir()) / f"vpr_ros_loader_bench_{a.places}_{a.source_px}"
    paths = make_dataset(root, a.places, a.source_px)
    members = read_gsv_cities(root).place_members()
    plan = PlaceBatches(members, a.places_per_batch, 4, 0)
    print(f"{len(paths)} images ({a.source_px} px JPEG) -> 224 px with RandAugment (3 ops, magnitude 9); "
          f"batches of {plan.batch_size}; {os.cpu_count()} CPU cores")
    from vpr_ros.training.decoded_cache import open_or_build

    decoded = open_or_build(root / "decoded_cache", paths, 224, a.workers, progress=False)
    runs: dict[str, list[float]] = {"old": [], "threads": [], "processes": [], "decoded": []}
    src = Path(a.baseline_src) if a.baseline_src else None
    for _ in range(a.repeats):
        if a.baseline_rev:
            try:
                runs["old"].append(rate_threads_at(a.baseline_rev, root, a.places_per_batch, a.steps, a.threads, src))
            except (OSError, subprocess.CalledProcessError) as exc:
                print(f"baseline {a.baseline_rev} not measured: {exc}")
                a.baseline_rev = ""
        runs["threads"].append(rate_threads(paths, plan, a.steps, a.threads))
        runs["processes"].append(rate_processes(paths, plan, a.steps, a.workers, device=a.device))
        runs["decoded"].append(rate_processes(paths, plan, a.steps, a.workers, device=a.device, decoded=decoded))
    med = {k: statistics.median(v) for k, v in runs.items() if v}
    spread = {k: f"({min(v):.0f}-{max(v):.0f})" for k, v in runs.items() if v}
    old, thr = med.get("old", 0.0), med["threads"]

    def vs(rate: float) -> str:
        return f"{rate / thr:.2f}x the thread loader" + (f", {rate / old:.2f}x the thread loader at {a.baseline_rev}"
                                                         if old else "")

    print(f"median of {a.repeats} runs (range):")
    if old:
        print(f"thread loader at {a.baseline_rev} ({a.threads} threads): {old:7.1f} images/s {spread['old']}")
    print(f"thread loader, today's image code ({a.threads} threads): {thr:7.1f} images/s {spread['threads']}")
    proc = med["processes"]
    print(f"process loader ({a.workers} workers, normalised on {a.device}): {proc:7.1f} images/s {spread['processes']} "
          f"= {vs(proc)}")
    print(f"process loader reading the decoded-image cache: {med['decoded']:7.1f} images/s {spread['decoded']} "
          f"= {vs(med['decoded'])}")
    if a.model:
        model = rate_model(a.device, plan.batch_size * 4, 10)
        print(f"model fine-tuning step on {a.device}: {model:7.1f} images/s consumed; process loader / model = "
              f"{proc / model:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``vpr_ros_eval_loops``: loop-closure detection on one image sequence, scored against ground truth.

The images go in order through the map builder's live loop-closure code (every frame is a
keyframe, matched against the frames at least --exclude-recent s older, then added). Reported for
four detectors from the same run (global/re-ranked score; + geometric verification; + the temporal
rules; both): the precision-recall curve over the score threshold, its area and the maximum recall
at 100 % precision, and the time per frame. Writes loops.csv, results.json and loops.png.

Sources: a folder of images (sorted by name, one frame per --frame-period s) with --ground-truth
(a loop matrix: .npy, .csv or an image such as RTAB-Map's *_GT.bmp) or --poses (CSV
image,x,y: loops within --radius m); a rosbag2 recording (--image-topic, and --pose-topic or
--trajectory for loops within --radius m at least --exclude-recent s apart, or --ground-truth over
its frames with a pose); or a VPR layout with ref/, query/ and ground_truth.csv (the reference
pass, then the query pass: a sequence that revisits, e.g. ../shared/data/corridor).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from vpr_ros.cli import EXPECTED_ERRORS, HelpWithDefaults, non_negative_float, positive_float, report_error
from vpr_ros.cli.camera_args import add_camera_args
from vpr_ros.cli.model_args import add_model_args, model_with_args, warn_if_random
from vpr_ros.config import MAP_BUILDER_SECTIONS, load_node_config
from vpr_ros.mapping.bag_source import is_bag
from vpr_ros.errors import DatasetError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(formatter_class=HelpWithDefaults, prog="vpr_ros_eval_loops",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="folder of images in sequence order, or a VPR layout (ref/, query/, ground_truth.csv)")
    ap.add_argument("--ground-truth", default="", metavar="FILE",
                    help="loop matrix [N, N] (.npy, .csv / .txt of 0/1, or an image: non-zero pixel (i, j) = loop)")
    ap.add_argument("--poses", default="", metavar="CSV", help="poses CSV image,x,y[,yaw][,stamp]: loops within --radius")
    ap.add_argument("--radius", type=positive_float, default=2.0, help="--poses: frames this close (m) are a loop")
    ap.add_argument("--frame-period", type=positive_float, default=1.0, help="seconds between two frames of the folder")
    ap.add_argument("--exclude-recent", type=non_negative_float, default=None,
                    help="frames this many seconds older or less are never matched (default: the params file's "
                         "loop_closure.exclude_recent, 30 s)")
    ap.add_argument("--image-topic", default="", help="bag: image topic (Image or CompressedImage)")
    ap.add_argument("--pose-topic", default="", help="bag: Odometry / PoseStamped topic (the ground truth's poses)")
    ap.add_argument("--trajectory", default="", help="bag: TUM or CSV trajectory instead of a pose topic")
    add_camera_args(ap)
    ap.add_argument("--params-file", default="", help="map_builder params YAML (model, verification, loop_closure)")
    ap.add_argument("--output", default="loops_output", help="where loops.csv, results.json and loops.png go")
    ap.add_argument("--reverse-queries", action="store_true",
                    help="ref/ + query/ layout: play the query pass last to first (a revisit in the other direction)")
    ap.add_argument("--rerank-all", action="store_true",
                    help="re-rank every older frame (verification.rerank_top_k 500), not the global top-k: the "
                         "'inliers' detector is then the re-ranker alone")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in logs)")
    add_model_args(ap)
    a = ap.parse_args(argv)
    try:
        return _run(a, argv)
    except EXPECTED_ERRORS as exc:
        return report_error("vpr_ros_eval_loops", exc)


def _sequence(a: argparse.Namespace, exclude_recent: float) -> tuple[list[Any], list[str], np.ndarray, np.ndarray, str]:
    """(images or decoders in order, their names, stamps [N], ground truth [N, N], what the sequence is)."""
    from vpr_ros.datasets import list_images, read_eval_dataset, read_poses_csv
    from vpr_ros.loop_eval import loops_from_poses, read_loop_matrix

    src = Path(a.source)
    if is_bag(src):
        return _bag_sequence(a, src, exclude_recent)
    if (src / "ref").is_dir() and (src / "query").is_dir():
        if a.ground_truth or a.poses:
            raise DatasetError(f"{src}: a ref/ + query/ layout brings its own ground truth; no --ground-truth/--poses")
        ds = read_eval_dataset(src)
        order = list(range(len(ds.queries)))[::-1] if a.reverse_queries else list(range(len(ds.queries)))
        images = [*ds.database, *(ds.queries[q] for q in order)]
        n_ref = len(ds.database)
        gt = np.zeros((len(images), len(images)), bool)
        for k, q in enumerate(order):
            for r in ds.positives[q]:
                gt[n_ref + k, r] = gt[r, n_ref + k] = True
        stamps = np.arange(len(images), dtype=np.float64) * a.frame_period
        return images, [f"{p.parent.name}/{p.name}" for p in images], stamps, gt, \
            f"{ds.name}: {n_ref} reference frames, then {len(ds.queries)} query frames" + \
            (" played last to first" if a.reverse_queries else "")
    if a.reverse_queries:
        raise DatasetError(f"{src}: --reverse-queries is for a ref/ + query/ layout")
    images = list_images(src)
    stamps = np.arange(len(images), dtype=np.float64) * a.frame_period
    if bool(a.ground_truth) == bool(a.poses):
        raise DatasetError("give the ground truth: --ground-truth FILE or --poses CSV (one of them)")
    if a.ground_truth:
        gt = read_loop_matrix(a.ground_truth, len(images))
    else:
        poses = read_poses_csv(a.poses)
        missing = [p.name for p in images if p.name not in poses]
        if missing:
            raise DatasetError(f"{a.poses}: no pose for {len(missing)} image(s), e.g. {missing[0]}")
        xy = np.array([[poses[p.name][0], poses[p.name][1], 0.0] for p in images])
        gt = loops_from_poses(xy, stamps, a.radius, 0.0)
    return images, [p.name for p in images], stamps, gt, f"{src.name}: {len(images)} frames"


def _bag_sequence(a: argparse.Namespace, bag: Path,
                  exclude_recent: float) -> tuple[list[Any], list[str], np.ndarray, np.ndarray, str]:
    """A bag's frames that have a pose, in order; loops from those poses (or --ground-truth)."""
    from vpr_ros.loop_eval import loops_from_poses, read_loop_matrix
    from vpr_ros.mapping.bag_source import bag_frames

    if a.reverse_queries:
        raise DatasetError(f"{bag}: --reverse-queries is for a ref/ + query/ layout, not a bag")
    if not a.image_topic or not (a.pose_topic or a.trajectory):
        raise DatasetError(f"{bag}: a bag needs --image-topic and --pose-topic or --trajectory (the frames' poses)")
    if a.poses:
        raise DatasetError("--poses is for image folders; a bag's poses come from --pose-topic / --trajectory")
    frames = [(dec, kf) for dec, kf in bag_frames(bag, a.image_topic, a.pose_topic, a.trajectory)]
    if not frames:
        raise DatasetError(f"{bag}: no frame on {a.image_topic} has a pose")
    stamps = np.array([kf.stamp for _, kf in frames])
    if a.ground_truth:
        gt = read_loop_matrix(a.ground_truth, len(frames))
    else:
        gt = loops_from_poses(np.array([kf.pose[:3] for _, kf in frames]), stamps, a.radius, exclude_recent)
    names = [f"{a.image_topic}@{kf.stamp:.6f}" for _, kf in frames]
    return [dec for dec, _ in frames], names, stamps, gt, f"{bag.name}: {len(frames)} frames with a pose"


def _run(a: argparse.Namespace, argv: list[str] | None) -> int:
    from vpr_ros import __version__
    from vpr_ros.cli.camera_args import camera_model_of
    from vpr_ros.eval_run import check_output_dir
    from vpr_ros.loop_eval import VARIANTS, run_sequence, score_variants
    from vpr_ros.runtime.factory import open_backend

    cfg = load_node_config(a.params_file or None, "map_builder", MAP_BUILDER_SECTIONS)
    cfg["model"] = model_with_args(cfg["model"], a)
    node = dataclasses.replace(cfg[""], **{k: getattr(a, k) for k in ("backend", "device") if getattr(a, k)})
    live = dataclasses.replace(cfg["loop_closure"], enabled=True, score_threshold=-1.0)
    if a.exclude_recent is not None:
        live = dataclasses.replace(live, exclude_recent=a.exclude_recent)
    if a.rerank_all:
        cfg["verification"] = dataclasses.replace(cfg["verification"], rerank_top_k=500)
    out = Path(a.output)
    check_output_dir(out)
    images, names, stamps, gt, what = _sequence(a, live.exclude_recent)
    if a.rerank_all and len(images) > 500:
        print(f"[loops] --rerank-all: {len(images)} frames, only the global top 500 are re-ranked", file=sys.stderr)
    intrinsics = camera_model_of(a, is_bag(Path(a.source)), Path(a.source), "vpr_ros_eval_loops")
    print(f"[loops] {what}; {int(np.triu(gt, 1).sum())} ground-truth loop pairs; frames {live.exclude_recent:g} s "
          "or less apart are never matched")
    with open_backend(node.backend, cfg["model"], node.device, node.engine_cache_dir or None) as backend:
        warn_if_random("vpr_ros_eval_loops", backend)
        bar = None
        if not a.no_progress:
            from tqdm import tqdm

            bar = tqdm(total=len(images), desc="frames in order", unit="frame")
        try:
            run, descriptors = run_sequence(backend, images, stamps, live, cfg["verification"], intrinsics,
                                            progress=(lambda _i: bar.update(1)) if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()
        title = f"{backend.model_id} ({backend.weights_source})"
    curves = score_variants(run, gt, live.exclude_recent, live.temporal_consistency, live.consistency_window,
                            live.max_loop_closure_rate, descriptors)
    ms = np.array([d.ms for d in run])
    for name in (v for v in VARIANTS if v in curves):
        c = curves[name]
        at = f" (threshold {c.threshold_at_full_precision:.3f})" if c.max_recall_at_full_precision > 0 else ""
        print(f"[loops] {name:22s} AUC {c.auc:.3f}   max recall at 100% precision "
              f"{c.max_recall_at_full_precision:.3f}{at}")
    print(f"[loops] {curves['retrieval'].positives} frames have a loop to find; per frame {np.median(ms):.1f} ms "
          f"median, {np.percentile(ms, 95):.1f} ms p95 (encoding, search, re-ranking, verification)")
    settings = {"source": str(Path(a.source).resolve()), "sequence": what, "image_topic": a.image_topic, "pose_topic": a.pose_topic, "trajectory": a.trajectory, "model": dataclasses.asdict(cfg["model"]),
                "backend": node.backend, "loop_closure": dataclasses.asdict(live),
                "verification": dataclasses.asdict(cfg["verification"]), "frame_period_s": a.frame_period,
                "ground_truth": a.ground_truth, "poses": a.poses, "radius_m": a.radius, "camera_info": a.camera_info,
                "command": "vpr_ros_eval_loops " + " ".join(sys.argv[1:] if argv is None else argv),
                "vpr_ros_version": __version__}
    files = _write(out, run, names, gt, curves, stamps, live.exclude_recent, settings, title)
    print(f"[loops] wrote {', '.join(str(f) for f in files)}")
    return 0


def _write(out: Path, run: list, names: list[str], gt: np.ndarray, curves: dict, stamps: np.ndarray,
           exclude_recent: float, settings: dict, title: str) -> list[Path]:
    from vpr_ros.errors import VprError
    from vpr_ros.files import replaced_atomically
    from vpr_ros.loop_eval import VARIANTS, searchable_positives

    out.mkdir(parents=True, exist_ok=True)
    positive = searchable_positives(gt, stamps, exclude_recent)
    with replaced_atomically(out / "loops.csv", VprError) as tmp, tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["frame", "image", "stamp", "top1", "score", "rerank_score", "verified", "method", "inliers", "ms",
                    "has_loop", "top1_correct"])
        for d in run:
            w.writerow([d.index, names[d.index], f"{d.stamp:.3f}", d.top1,
                        f"{d.score:.6f}" if d.top1 >= 0 else "", d.local_score if d.local_score >= 0 else "",
                        int(d.verified), d.method, d.inliers, f"{d.ms:.1f}",
                        int(positive[d.index]), int(d.top1 >= 0 and bool(gt[d.index, d.top1]))])
    summary = {name: {"auc": c.auc, "max_recall_at_100_precision": c.max_recall_at_full_precision,
                      "threshold_at_100_precision": None if np.isnan(c.threshold_at_full_precision)
                      else c.threshold_at_full_precision,
                      "curve": {"threshold": c.thresholds.tolist(), "precision": c.precision.tolist(),
                                "recall": c.recall.tolist()}} for name, c in curves.items()}
    ms = [d.ms for d in run]
    with replaced_atomically(out / "results.json", VprError) as tmp:
        tmp.write_text(json.dumps({"frames": len(run), "frames_with_a_loop": int(positive.sum()),
                                   "ms_per_frame": {"median": float(np.median(ms)), "p95": float(np.percentile(ms, 95))},
                                   "detectors": summary, "settings": settings}, indent=1, allow_nan=False))
    return [out / "loops.csv", out / "results.json", _plot(out / "loops.png", run, gt, positive, curves, title)]


def _plot(path: Path, run: list, gt: np.ndarray, positive: np.ndarray, curves: dict, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vpr_ros.errors import VprError
    from vpr_ros.files import replaced_atomically
    from vpr_ros.loop_eval import VARIANTS

    fig, (ax, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 5.2), gridspec_kw={"width_ratios": [1.2, 1.6, 1]})
    for name, style in zip(VARIANTS, ("-", "--", "-.", ":", "-", "--", ":")):
        if name not in curves:
            continue
        c = curves[name]
        ax.plot(c.recall, c.precision, style, lw=1.5,
                label=f"{name}: AUC {c.auc:.2f}, max recall at 100% precision {c.max_recall_at_full_precision:.2f}")
    ax.set(xlabel="recall (frames with a loop found correctly)", ylabel="precision (accepted decisions correct)",
           xlim=(0, 1.02), ylim=(0, 1.05), title="precision-recall over the score threshold")
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    idx = np.array([d.index for d in run if d.top1 >= 0])
    sc = np.array([d.score for d in run if d.top1 >= 0])
    ok = np.array([bool(gt[d.index, d.top1]) for d in run if d.top1 >= 0])
    ver = np.array([d.verified for d in run if d.top1 >= 0])
    if len(idx):
        for sel, colour, label in ((ok & ver, "tab:green", "correct, verified"), (ok & ~ver, "tab:olive", "correct, not verified"),
                                   (~ok & ver, "tab:red", "wrong, verified"), (~ok & ~ver, "0.6", "wrong, not verified")):
            if sel.any():
                ax2.plot(idx[sel], sc[sel], "o", ms=3, color=colour, label=f"{label} ({int(sel.sum())})")
    has = np.flatnonzero(positive)
    if len(has):
        ax2.plot(has, np.full(len(has), np.nanmin(sc) if len(sc) else 0.0), "|", color="tab:blue", ms=6,
                 label=f"frames with a loop to find ({len(has)})")
    ax2.set(xlabel="frame (sequence order)", ylabel="top-1 cosine score", title="each frame's top-1 match")
    ax2.legend(fontsize=7, loc="best")
    ax3.imshow(gt, cmap="Greys", interpolation="nearest")
    ax3.set(xlabel="frame j", ylabel="frame i", title="ground truth: frame i revisits frame j")
    fig.suptitle(f"loop-closure detection, frames in order through the map builder's live code; {title}", fontsize=10)
    fig.tight_layout()
    try:
        with replaced_atomically(path, VprError) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path


if __name__ == "__main__":
    raise SystemExit(main())

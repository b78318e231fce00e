"""``vpr_ros_demo``: build a map and localize against it through the real ROS 2 nodes.

With no arguments: render two drives through a textured 3-D corridor (the second offset
sideways, with heading and pitch jitter) with a pinhole camera, build a map from the first
with the MapBuilder (the map_builder node's code path: global descriptors, SIFT features and
3-D points from the rendered depth), start the localizer node as its own process (the launch
graph of ``localize.launch.py``), publish the camera's ``CameraInfo`` and play the second drive
to it as ``sensor_msgs/Image`` messages over ROS 2 topics, and report Recall@1, the loop
closures it published (geometrically verified, with a metric relative pose), the error of
``/vpr/pose`` against the true poses and per-frame latency, with a PNG plot.

``--dataset PATH`` uses a real folder pair instead (``ref/`` = map, ``query/`` = live,
``ground_truth.csv`` as in VPR-Bench), e.g. ``../shared/data/corridor``. ``--slam`` shows live loop
closure for a SLAM back end instead (:mod:`vpr_ros.cli.demo_slam`), ``--fleet`` three robots merging
their maps (:mod:`vpr_ros.cli.demo_fleet`).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from vpr_ros.config import WEIGHT_FREE, KeyframeConfig, ModelConfig, model_config_from
from vpr_ros.cli import EXPECTED_ERRORS, HelpWithDefaults, report_error
from vpr_ros.cli.model_args import add_model_args, model_with_args
from vpr_ros.evaluation import positives_within, recall_at_n
from vpr_ros.geometry import planar_pose
from vpr_ros.launch_graph import localize_graph, start_graph, stop_graph
from vpr_ros.mapping.builder import MapBuilder, frames_from_lists

CAMERA_TOPIC = "camera/image"


@dataclass
class DemoData:
    """Map images (with poses/stamps), query images (with stamps), correct map ids per query."""

    name: str
    map_images: list[np.ndarray]
    map_stamps: list[float]
    map_poses: list[tuple]
    query_images: list[np.ndarray]
    query_stamps: list[float]
    positives: list[set[int]]
    tolerance: str
    map_depths: list[np.ndarray] | None = None    # metres, aligned to the map images
    intrinsics: object | None = None             # CameraIntrinsics of both drives
    query_poses: list[tuple] | None = None        # ground truth of the live drive


def scene_data(n_places: int, seed: int) -> DemoData:
    """Two drives through a rendered 3-D corridor (positives: map places within 2 m)."""
    from vpr_ros.demo.scene3d import corridor_traversals

    first, second = corridor_traversals(n_places, seed=seed)
    positions = lambda poses: np.array([p[:2] for p in poses])  # noqa: E731
    positives = positives_within(positions(second.poses), positions(first.poses), radius=2.0)
    return DemoData(f"rendered 3-D corridor ({n_places} places, seed {seed})", first.images, first.stamps,
                    first.poses, second.images, second.stamps, positives, "within 2 m", first.depths,
                    first.intrinsics, second.poses)


def synthetic_data(n_places: int, seed: int) -> DemoData:
    """Procedural two-traversal street (positives: map places within 2 m)."""
    from vpr_ros.demo.synthetic import make_traversals

    first, second = make_traversals(n_places=n_places, seed=seed)
    positives = positives_within(second.positions, first.positions, radius=2.0)
    return DemoData(f"synthetic street ({n_places} places, seed {seed})", first.images, first.stamps,
                    first.poses, second.images, second.stamps, positives, "within 2 m")


def folder_data(path: str) -> DemoData:
    """VPR-Bench folder pair; map keyframes placed 1 m apart in frame order."""
    from vpr_ros.datasets import read_rgb, read_vpr_bench

    pair = read_vpr_bench(path)
    refs = [read_rgb(p) for p in pair.ref]
    queries = [read_rgb(p) for p in pair.query]
    period = 0.5
    map_stamps = [i * period for i in range(len(refs))]
    start = map_stamps[-1] + 100.0  # the live run happens later: every match is a loop candidate
    return DemoData(f"{pair.root} ({len(refs)} refs, {len(queries)} queries)", refs, map_stamps,
                    [planar_pose(float(i), 0.0) for i in range(len(refs))], queries,
                    [start + i * period for i in range(len(queries))], pair.positives,
                    "ground_truth.csv")


def _isolated_ros_env() -> dict[str, str]:
    """A private ROS domain on localhost unless the user chose one."""
    env = {"ROS_AUTOMATIC_DISCOVERY_RANGE": os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")}
    env["ROS_DOMAIN_ID"] = os.environ.get("ROS_DOMAIN_ID", str(random.Random().randint(120, 200)))
    return env


def demo_model(args: argparse.Namespace) -> ModelConfig:
    """The model the demo runs: the params file's and the flags'; a network without weights runs
    with random weights (asked for here, on the demo's behalf, and labelled in its output)."""
    cfg = model_with_args(model_config_from("", args.params_file), args)
    if cfg.arch not in WEIGHT_FREE and not cfg.weights:
        cfg = dataclasses.replace(cfg, random_weights=True)
    return cfg


def run(args: argparse.Namespace) -> int:
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.fleet:
        from vpr_ros.cli.demo_fleet import run_fleet

        return run_fleet(args, demo_model(args))
    if args.slam:
        from vpr_ros.cli.demo_slam import run_slam

        model_cfg = demo_model(args)
        if model_cfg.random_weights:
            print("[demo] WEIGHTS: random initialisation: the global descriptor means little; the closures come "
                  "from SIFT re-ranking and geometric verification")
        return run_slam(args, model_cfg)
    if args.dataset:
        data = folder_data(args.dataset)
    elif args.scene == "street":
        data = synthetic_data(args.places, args.seed)
    else:
        data = scene_data(args.places, args.seed)
    model_cfg = demo_model(args)
    print(f"[demo] data: {data.name}")

    from vpr_ros.runtime.factory import open_backend

    with open_backend(args.backend, model_cfg, args.device) as backend:
        print(f"[demo] model: {backend.model_id} on backend '{backend.name}'")
        weights_note = ("RANDOM WEIGHTS: recall means nothing" if backend.weights_source.startswith("random")
                        else f"weights {Path(backend.weights_source).name}")
        if backend.weights_source.startswith("random"):
            print("[demo] WEIGHTS: random initialisation (no pretrained weights ship with vpr_ros). "
                  "Accuracy numbers below mean NOTHING about real performance; they only show "
                  "that the pipeline runs end to end. Pass --weights FILE for real results.")
        elif model_cfg.arch in WEIGHT_FREE:
            weights_note = f"weight-free {backend.model_id}"
            print(f"[demo] MODEL: weight-free ({backend.model_id}, vocabulary {backend.weights_source}); no network")
        else:
            print(f"[demo] WEIGHTS: {backend.weights_source}")
        builder = _demo_map(backend, data, f"vpr_ros_demo: {data.name}", progress=True)
        map_dir = builder.save(out / "map")
        print(f"[demo] map: {len(builder.map)} keyframes -> {map_dir}")

    params = {"/**": {"ros__parameters": {
        "map_dir": str(map_dir), "backend": args.backend,
        **({"verification.loop_closures": "none"} if args.no_verification else {}),
        **{f"model.{k}": v for k, v in vars(model_cfg).items()}}}}
    if data.intrinsics is None and not args.no_verification:
        print("[demo] NOTE: this dataset has no camera model: loop closures are verified with the fundamental "
              "matrix on pixel matches and published without a metric relative pose (verification method 1 / 4); "
              "--no-verification shows the temporal rules alone")
    params_file = out / "localizer_params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))

    env = _isolated_ros_env()
    os.environ.update(env)
    specs = localize_graph(params_file=str(params_file), camera_topic=CAMERA_TOPIC)
    print(f"[demo] starting localizer node (ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']}): {' '.join(specs[0].command())}")
    procs = start_graph(specs, env=env, log_dir=str(out / "logs"))
    try:
        from vpr_ros.ros.player import play_session

        log, answered = play_session(CAMERA_TOPIC, data.query_images, data.query_stamps, args.frame_timeout,
                                     camera_info=data.intrinsics)
    finally:
        stop_graph(procs)
    if log is None:
        print(f"[demo] ERROR: the localizer did not come up; see {out / 'logs' / 'localizer.log'}:")
        print((out / "logs" / "localizer.log").read_text(errors="replace")[-3000:])
        return 1
    return _report(data, log, answered, out, weights_note, args.weight_free and model_cfg.arch not in WEIGHT_FREE)


def _report(data: DemoData, log, answered: int, out: Path, weights_note: str = "",  # type: ignore[no-untyped-def]
            weight_free: bool = True) -> int:
    n = len(data.query_stamps)
    ranked = np.full((n, 5), -1, np.int64)
    scores = np.full(n, np.nan)
    latency = np.full(n, np.nan)
    for i, t in enumerate(data.query_stamps):
        rows = log.tables.get(round(t, 6), [])
        for r in rows[:5]:
            ranked[i, int(r["rank"])] = int(r["db_id"])
        if rows:
            scores[i] = rows[0]["score"]
        latency[i] = log.latency_s.get(round(t, 6), np.nan) * 1e3
    rec = recall_at_n(ranked, data.positives, ns=(1, 5))
    map_index = {round(t, 6): i for i, t in enumerate(data.map_stamps)}
    q_index = {round(t, 6): i for i, t in enumerate(data.query_stamps)}
    lc_ok = [map_index.get(round(tm, 6), -1) in data.positives[q_index.get(round(tq, 6), 0)]
             for tq, tm in log.loop_closures]
    lat = latency[np.isfinite(latency)]
    print()
    print(f"[demo] frames answered: {answered}/{n}")
    print(f"[demo] Recall@1 = {rec[1]:.3f}   Recall@5 = {rec[5]:.3f}   (positives: {data.tolerance})")
    revisits = sum(1 for p in data.positives if p)
    print(f"[demo] loop closures published on vpr/loop_closures: {len(log.loop_closures)}"
          + (f", {sum(lc_ok)} correct (precision {np.mean(lc_ok):.2f}, recall {sum(lc_ok) / max(1, revisits):.2f} "
             f"of {revisits} revisited places)" if lc_ok else ""))
    diag = {kv.key: kv.value for kv in log.diagnostics[-1].status[0].values} if log.diagnostics else {}
    verified = [r for r in log.loop_table if r["status"] == 1.0 and r.get("method", 0.0) > 0]
    metric = [r for r in verified if r.get("method") == 3.0]
    refused = diag.get("loop_closures_refused_by_geometry", "?")  # the node's own count (every reason)
    print(f"[demo] geometric verification: {len(verified)} verified ({len(metric)} with a metric relative pose "
          f"from the keyframe's depth), {refused} candidates refused by the localizer (too few matches or inliers)")
    if data.query_poses is not None and metric:
        truth = {round(t, 6): p for t, p in zip(data.query_stamps, data.query_poses)}
        kf = {round(t, 6): p for t, p in zip(data.map_stamps, data.map_poses)}
        err_pose, err_kf = [], []
        for r in metric:
            tq = round(r["t_query"], 6)
            pos = log.poses[tq].pose.pose.position if tq in log.poses else None
            if pos is not None:
                err_pose.append(float(np.linalg.norm(np.array([pos.x, pos.y, pos.z]) - np.array(truth[tq][:3]))))
                err_kf.append(float(np.linalg.norm(np.array(kf[round(r["t_match"], 6)][:3]) - np.array(truth[tq][:3]))))
        if err_pose:
            print(f"[demo] /vpr/pose at verified closures: median error {np.median(err_pose) * 100:.1f} cm "
                  f"(the matched keyframe's own pose would be {np.median(err_kf) * 100:.1f} cm off)")
    for (tq, tm), ok in list(zip(log.loop_closures, lc_ok))[:10]:
        print(f"         [t_query={tq:.2f}, t_match={tm:.2f}]  {'correct' if ok else 'wrong'}")
    if len(lat):
        print(f"[demo] per-frame latency (publish -> match_table received): median {np.median(lat):.1f} ms, "
              f"p95 {np.percentile(lat, 95):.1f} ms, max {lat.max():.1f} ms")
    if log.diagnostics:
        vals = {kv.key: kv.value for kv in log.diagnostics[-1].status[0].values}
        print(f"[demo] localizer diagnostics: inference {vals.get('inference_ms_mean')} ms mean, "
              f"{vals.get('frames_processed')} processed, {vals.get('frames_dropped')} dropped")
    with (out / "results.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["query", "t_query", "top1_db_id", "top1_score", "correct", "latency_ms"])
        for i in range(n):
            w.writerow([i, data.query_stamps[i], ranked[i, 0], scores[i],
                        int(ranked[i, 0] in data.positives[i]), latency[i]])
    beside = _weight_free_beside(data, out) if weight_free else None
    png = _plot(data, ranked, scores, latency, log, out / "demo.png", weights_note, beside)
    print(f"[demo] wrote {out / 'results.csv'} and {png}")
    return 0 if answered == n else 1


def _demo_map(backend: Any, data: DemoData, source: str, progress: bool = False) -> MapBuilder:
    """The map of the first drive, built by the map builder's code with ``backend``. Map frames are
    1 m apart, so every frame becomes a keyframe (map id = frame index); with depth, each keyframe
    also stores the 3-D points of its local features."""
    builder = MapBuilder(backend, KeyframeConfig(min_distance=0.5), source=source,
                         intrinsics=data.intrinsics)  # type: ignore[arg-type]
    frames = frames_from_lists(data.map_images, data.map_stamps, data.map_poses, CAMERA_TOPIC)
    depths = data.map_depths if data.map_depths is not None else [None] * len(frames)
    builder.add_many([(img, kf, d) for (img, kf), d in zip(frames, depths)], progress=progress)
    return builder


def _weight_free_beside(data: DemoData, out: Path) -> dict[str, Any]:
    """The weight-free descriptor on the same drive: a vocabulary fitted on the map's images, a map
    built with it by the map builder's code, the live drive localised by the localizer's code
    (offline, same defaults as the node). Returns its Recall@1/@5 and loop closures."""
    from vpr_ros.config import LocalizerConfig, ModelConfig, VerificationConfig
    from vpr_ros.localization import Localizer
    from vpr_ros.runtime.factory import open_backend
    from vpr_ros.vocabulary import Vocabulary, fit_vocabulary, rgb_chunks

    settings = Vocabulary(np.zeros((2, 128), np.float32), 224, "")
    vocab, _ = fit_vocabulary(rgb_chunks(data.map_images, settings), settings, 64,
                              f"the demo's {len(data.map_images)} map images")
    vocab.save(out / "vocabulary.npz")
    cfg = ModelConfig(arch="vlad", vocabulary=str(out / "vocabulary.npz"), input_size=vocab.input_size)
    with open_backend("auto", cfg) as backend:
        builder = _demo_map(backend, data, f"vpr_ros_demo (weight-free): {data.name}")
        loc = Localizer(backend, builder.map, LocalizerConfig(), VerificationConfig())
        ranked = np.full((len(data.query_images), 5), -1, np.int64)
        closures = correct = 0
        top_scores = np.full(len(data.query_images), np.nan)
        for i, (img, t) in enumerate(zip(data.query_images, data.query_stamps)):
            r = loc.localize(img, t, intrinsics=data.intrinsics)  # type: ignore[arg-type]
            for j, m in enumerate(r.matches[:5]):
                ranked[i, j] = m.db_id
            if r.matches:
                top_scores[i] = r.matches[0].score
            if r.loop is not None and r.loop.publish:
                closures += 1
                correct += int(r.loop.db_id in data.positives[i])
    rec = recall_at_n(ranked, data.positives, ns=(1, 5))
    print(f"[demo] beside it, on the same drive: the weight-free descriptor (model.arch vlad: dense SIFT VLAD, "
          f"{vocab.clusters} words fitted on the map's {len(data.map_images)} images; no network, no weights), map "
          f"and localizer code run offline: Recall@1 = {rec[1]:.3f}   Recall@5 = {rec[5]:.3f}   loop closures "
          f"{closures} ({correct} correct; its top-1 cosines run lower than a network's, median "
          f"{np.nanmedian(top_scores) if np.isfinite(top_scores).any() else float('nan'):.2f} against score_threshold "
          f"{LocalizerConfig().score_threshold}: tune that threshold for it)")
    return {"recall@1": rec[1], "recall@5": rec[5], "closures": closures, "correct": correct, "top1": ranked[:, 0],
            "scores": top_scores}


def _plot(data: DemoData, ranked: np.ndarray, scores: np.ndarray, latency: np.ndarray,  # type: ignore[no-untyped-def]
          log, path: Path, weights_note: str = "", beside: dict[str, Any] | None = None) -> Path:
    """Top-1 matches against the ground truth, top-1 scores with the acceptance threshold, the error
    of /vpr/pose (where the true poses are known) and the latency distribution with its median/p95."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vpr_ros.config import LocalizerConfig

    n = len(ranked)
    q = np.arange(n)
    ok = np.array([ranked[i, 0] in data.positives[i] for i in range(n)])
    fig, ax = plt.subplots(1, 4, figsize=(20, 4.8))
    for i, pos in enumerate(data.positives):
        if pos:
            ax[0].plot([i, i], [min(pos), max(pos)], color="0.85", lw=3, zorder=0)
    ax[0].plot([], [], color="0.85", lw=3, label="correct keyframes (ground truth)")
    ax[0].scatter(q[ok], ranked[ok, 0], s=12, c="tab:green", label="top-1 correct")
    ax[0].scatter(q[~ok], ranked[~ok, 0], s=12, c="tab:red", label="top-1 wrong")
    q_index = {round(t, 6): i for i, t in enumerate(data.query_stamps)}
    m_index = {round(t, 6): i for i, t in enumerate(data.map_stamps)}
    lc = [(q_index.get(round(a, 6), -1), m_index.get(round(b, 6), -1)) for a, b in log.loop_closures]
    if lc:
        ax[0].scatter(*zip(*lc), marker="x", s=40, c="k", label="loop closure published")
    title = "Top-1 match per query"
    if beside is not None:
        ax[0].scatter(q, beside["top1"], s=26, facecolors="none", edgecolors="tab:purple", lw=0.8,
                      label=f"weight-free VLAD top-1 (same drive, R@1 {beside['recall@1']:.2f})")
        title += f": network R@1 {np.mean(ok):.2f}, weight-free {beside['recall@1']:.2f}"
    ax[0].set(xlabel="query frame", ylabel="matched map keyframe", title=title)
    ax[0].legend(loc="upper left", fontsize=7)
    threshold = LocalizerConfig().score_threshold
    ax[1].plot(q, scores, ".-", lw=0.8, label="top-1 cosine score")
    if beside is not None:
        ax[1].plot(q, beside["scores"], ".-", lw=0.8, color="tab:purple", label="weight-free VLAD top-1 cosine")
    ax[1].axhline(threshold, color="tab:orange", ls="--", lw=1, label=f"score_threshold {threshold} (accepted above)")
    ax[1].set(xlabel="query frame", ylabel="cosine similarity", title="Top-1 score")
    ax[1].legend(loc="lower left", fontsize=7)
    if data.query_poses is not None and log.poses:
        err = np.full(n, np.nan)
        for i, t in enumerate(data.query_stamps):
            msg = log.poses.get(round(t, 6))
            if msg is not None:
                pp = msg.pose.pose.position
                err[i] = float(np.linalg.norm(np.array([pp.x, pp.y, pp.z]) - np.array(data.query_poses[i][:3])))
        verified_t = {round(r["t_query"], 6) for r in log.loop_table if r["status"] == 1.0 and r.get("method") == 3.0}
        metric = np.array([round(t, 6) in verified_t for t in data.query_stamps])
        ax[2].plot(q[~metric], err[~metric] * 100, "o", ms=3, color="tab:gray", label="other frames")
        ax[2].plot(q[metric], err[metric] * 100, "o", ms=4, color="tab:green", label="at a published loop closure (PnP)")
        ax[2].set(ylim=(0, None), xlabel="query frame", ylabel="position error (cm)", title="/vpr/pose error vs true pose")
        ax[2].legend(loc="upper left", fontsize=7)
    else:
        ax[2].text(0.5, 0.5, "no true poses for this data", ha="center", va="center", transform=ax[2].transAxes)
        ax[2].set(title="/vpr/pose error", xticks=[], yticks=[])
    lat = latency[np.isfinite(latency)]
    ax[3].hist(lat, bins=30, color="tab:blue")
    if len(lat):
        for v, name, style in ((np.median(lat), "median", "-"), (np.percentile(lat, 95), "p95", "--")):
            ax[3].axvline(v, color="k", ls=style, lw=1, label=f"{name} {v:.0f} ms")
        ax[3].legend(fontsize=7)
    ax[3].set(xlabel="ms", ylabel="frames", title="Per-frame latency (publish -> match table)")
    fig.suptitle(f"vpr_ros demo - {data.name}" + (f"  ({weights_note})" if weights_note else ""), fontsize=10,
                 color="tab:red" if "RANDOM" in weights_note else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(formatter_class=HelpWithDefaults, prog="vpr_ros_demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="", help="folder with ref/, query/ (and ground_truth.csv); "
                    "default: a rendered 3-D corridor")
    ap.add_argument("--scene", choices=("corridor", "street"), default="corridor",
                    help="generated data: a rendered 3-D corridor with depth and a camera model (default), or "
                    "the panoramic street of earlier versions (no camera model)")
    ap.add_argument("--no-verification", action="store_true",
                    help="publish loop closures on the temporal rules alone (verification.loop_closures: none)")
    ap.add_argument("--output", default="demo_output", help="output directory (map, plot, CSV, logs)")
    ap.add_argument("--places", type=int, default=40, help="places (1 m apart) in the generated data")
    ap.add_argument("--seed", type=int, default=7, help="seed of the generated data")
    ap.add_argument("--params-file", default="", help="localizer params YAML whose model.* settings to use")
    add_model_args(ap)
    ap.add_argument("--frame-timeout", type=float, default=60.0, help="seconds to wait for each answer")
    ap.add_argument("--no-weight-free", dest="weight_free", action="store_false",
                    help="skip the weight-free descriptor (model.arch vlad) run beside the network on the same drive")
    ap.add_argument("--slam", action="store_true",
                    help="live loop closure instead: one session with revisits through the map_builder node, the "
                         "closures fed to a LIO-SAM-style pose graph (writes slam.png)")
    ap.add_argument("--fleet", action="store_true",
                    help="three robots in their own odometry frames find each other's places, close loops between "
                         "them and merge their maps (writes fleet.png; docs/fleet.md)")
    ap.add_argument("--slam-rate", type=float, default=2.0, help="--slam: frames per second sent to the node")
    args = ap.parse_args(argv)
    args.backend, args.device = args.backend or "auto", args.device or "cpu"
    try:
        return run(args)
    except EXPECTED_ERRORS as exc:
        return report_error("vpr_ros_demo", exc)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

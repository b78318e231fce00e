"""``vpr_ros_demo``: build a map and localize against it through the real ROS 2 nodes.

With no arguments: generate two traversals of a procedural street (the second with
viewpoint jitter, lighting change and noise), build a map from the first with the
MapBuilder (the map_builder node's code path), start the localizer node as its own
process (the launch graph of ``localize.launch.py``), play the second traversal to it
as ``sensor_msgs/Image`` messages over ROS 2 topics, and report Recall@1, the loop
closures it published and per-frame latency, with a PNG plot.

``--dataset PATH`` uses a real folder pair instead (``ref/`` = map, ``query/`` = live,
``ground_truth.csv`` as in VPR-Bench), e.g. ``../shared/data/corridor``.
"""
from __future__ import annotations

import argparse
import csv
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from vpr_ros.config import KeyframeConfig, model_config_from
from vpr_ros.errors import VprError
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


def run(args: argparse.Namespace) -> int:
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = folder_data(args.dataset) if args.dataset else synthetic_data(args.places, args.seed)
    model_cfg = model_config_from("", args.params_file, weights=args.weights, backbone=args.backbone)
    print(f"[demo] data: {data.name}")

    from vpr_ros.runtime.factory import open_backend

    with open_backend(args.backend, model_cfg, "cpu") as backend:
        print(f"[demo] model: {backend.model_id} on backend '{backend.name}'")
        if backend.weights_source.startswith("random"):
            print("[demo] WEIGHTS: random initialisation (no pretrained weights ship with vpr_ros). "
                  "Accuracy numbers below mean NOTHING about real performance; they only show "
                  "that the pipeline runs end to end. Pass --weights FILE for real results.")
        else:
            print(f"[demo] WEIGHTS: {backend.weights_source}")
        # Map frames are 1 m apart, so every frame becomes a keyframe (map id = frame index).
        builder = MapBuilder(backend, KeyframeConfig(min_distance=0.5), source=f"vpr_ros_demo: {data.name}")
        builder.add_many(frames_from_lists(data.map_images, data.map_stamps, data.map_poses, CAMERA_TOPIC),
                         progress=True)
        map_dir = builder.save(out / "map")
        print(f"[demo] map: {len(builder.map)} keyframes -> {map_dir}")

    params = {"/**": {"ros__parameters": {
        "map_dir": str(map_dir), "backend": args.backend,
        **{f"model.{k}": v for k, v in vars(model_cfg).items()}}}}
    params_file = out / "localizer_params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))

    env = _isolated_ros_env()
    os.environ.update(env)
    specs = localize_graph(params_file=str(params_file), camera_topic=CAMERA_TOPIC)
    print(f"[demo] starting localizer node (ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']}): {' '.join(specs[0].command())}")
    procs = start_graph(specs, env=env, log_dir=str(out / "logs"))
    try:
        from vpr_ros.ros.player import play_session

        log, answered = play_session(CAMERA_TOPIC, data.query_images, data.query_stamps, args.frame_timeout)
    finally:
        stop_graph(procs)
    if log is None:
        print(f"[demo] ERROR: the localizer did not come up; see {out / 'logs' / 'localizer.log'}:")
        print((out / "logs" / "localizer.log").read_text(errors="replace")[-3000:])
        return 1
    return _report(data, log, answered, out)


def _report(data: DemoData, log, answered: int, out: Path) -> int:  # type: ignore[no-untyped-def]
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
    print(f"[demo] loop closures published on vpr/loop_closures: {len(log.loop_closures)}"
          + (f", {sum(lc_ok)} correct (precision {np.mean(lc_ok):.2f})" if lc_ok else ""))
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
    png = _plot(data, ranked, scores, latency, log, out / "demo.png")
    print(f"[demo] wrote {out / 'results.csv'} and {png}")
    return 0 if answered == n else 1


def _plot(data: DemoData, ranked: np.ndarray, scores: np.ndarray, latency: np.ndarray,
          log, path: Path) -> Path:  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(ranked)
    q = np.arange(n)
    ok = np.array([ranked[i, 0] in data.positives[i] for i in range(n)])
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.6))
    for i, pos in enumerate(data.positives):
        if pos:
            ax[0].plot([i, i], [min(pos), max(pos)], color="0.85", lw=3, zorder=0)
    ax[0].scatter(q[ok], ranked[ok, 0], s=12, c="tab:green", label="top-1 correct")
    ax[0].scatter(q[~ok], ranked[~ok, 0], s=12, c="tab:red", label="top-1 wrong")
    q_index = {round(t, 6): i for i, t in enumerate(data.query_stamps)}
    m_index = {round(t, 6): i for i, t in enumerate(data.map_stamps)}
    lc = [(q_index.get(round(a, 6), -1), m_index.get(round(b, 6), -1)) for a, b in log.loop_closures]
    if lc:
        ax[0].scatter(*zip(*lc), marker="x", s=40, c="k", label="loop closure published")
    ax[0].set(xlabel="query frame", ylabel="matched map keyframe", title="Top-1 match (grey: ground truth)")
    ax[0].legend(loc="upper left", fontsize=8)
    ax[1].plot(q, scores, ".-", lw=0.8)
    ax[1].set(xlabel="query frame", ylabel="cosine similarity", title="Top-1 score")
    ax[2].hist(latency[np.isfinite(latency)], bins=30, color="tab:blue")
    ax[2].set(xlabel="ms", ylabel="frames", title="Per-frame latency (publish -> match)")
    fig.suptitle(f"vpr_ros demo - {data.name}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vpr_ros_demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="", help="folder with ref/, query/ (and ground_truth.csv); "
                    "default: a procedurally generated street")
    ap.add_argument("--output", default="demo_output", help="output directory (map, plot, CSV, logs)")
    ap.add_argument("--places", type=int, default=60, help="places in the synthetic street")
    ap.add_argument("--seed", type=int, default=7, help="seed of the synthetic street")
    ap.add_argument("--weights", default="", help="weights file for the model (default: random init)")
    ap.add_argument("--backbone", default="", help="backbone preset (default: vits14)")
    ap.add_argument("--params-file", default="", help="localizer params YAML whose model.* settings to use")
    ap.add_argument("--backend", default="auto", help="inference backend")
    ap.add_argument("--frame-timeout", type=float, default=60.0, help="seconds to wait for each answer")
    args = ap.parse_args(argv)
    try:
        return run(args)
    except VprError as exc:
        print(f"vpr_ros_demo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

"""``vpr_ros_eval``: Recall@N and precision-recall of a model on a VPR dataset.

Layouts: gmberton (``database/`` + ``queries/`` with ``@utm_east@utm_north@`` names, positives
within --radius m), VPR-Bench (``ref/`` + ``query/`` + ``ground_truth.csv``), sequences
(``ref/`` + ``query/``, positives within +-``--tolerance`` frames). Descriptors are cached, so a
second evaluation with another PCA or threshold does not run the network again.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

from vpr_ros.config import model_config_from
from vpr_ros.datasets import LAYOUTS, read_eval_dataset
from vpr_ros import __version__
from vpr_ros.cli import EXPECTED_ERRORS, HelpWithDefaults, non_negative_int, positive_float, positive_int, report_error
from vpr_ros.cli.model_args import add_model_args, model_with_args, warn_if_random
from vpr_ros.errors import DatasetError


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "vpr_ros" / "descriptors"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(formatter_class=HelpWithDefaults, prog="vpr_ros_eval", description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", help="dataset folder")
    ap.add_argument("--layout", choices=LAYOUTS, default="auto",
                    help="dataset layout: gmberton (database/ and queries/ with @UTM@ names), vpr_bench "
                         "(ref/ query/ ground_truth.npy), sequence (ground_truth.csv of frame ids); auto detects it")
    ap.add_argument("--radius", type=positive_float, default=25.0, help="gmberton: positives within this many metres")
    ap.add_argument("--tolerance", type=non_negative_int, default=2, help="sequence: positives within +- this many frames")
    ap.add_argument("--params-file", default="", help="params YAML whose model.* section to use")
    add_model_args(ap)
    ap.add_argument("--batch-size", type=positive_int, default=16,
                    help="images per forward pass (also the group size of cross-image encoders)")
    ap.add_argument("--pca", default="", help="PCA file (.npz from training) applied to the descriptors")
    ap.add_argument("--rerank", choices=("none", "classical", "dense"), default="none",
                    help="re-rank the global top-K by local matching: 'classical' (robust fundamental-matrix "
                    "inliers of SIFT/ORB features) or 'dense' (mutual nearest neighbours of the network's "
                    "dense features)")
    ap.add_argument("--rerank-top-k", type=positive_int, default=20, help="candidates re-ranked per query")
    ap.add_argument("--features", choices=("sift", "orb"), default="sift", help="local features for --rerank")
    ap.add_argument("--min-inliers", type=positive_int, default=30,
                    help="inliers that make a re-ranked top-1 a verified loop closure (its precision/recall)")
    ap.add_argument("--cache-dir", default=str(default_cache_dir()), help="descriptor cache ('' disables)")
    ap.add_argument("--output", default="eval_output", help="where results.json, CSVs and eval.png go")
    a = ap.parse_args(argv)
    try:
        cfg = model_with_args(model_config_from("", a.params_file), a)
        a.backend, a.device = a.backend or "auto", a.device or "cpu"
        from vpr_ros.eval_run import check_output_dir, evaluate, write_outputs

        check_output_dir(Path(a.output))
        dataset = read_eval_dataset(a.dataset, a.layout, a.radius, a.tolerance)
        print(f"[eval] {dataset.name} ({dataset.layout}): {len(dataset.database)} database, "
              f"{len(dataset.queries)} queries")
        for note in dataset.notes:
            print(f"[eval] NOTE: {note}")
        if not dataset.database or not dataset.queries:
            raise DatasetError(f"{a.dataset}: {len(dataset.database)} database and {len(dataset.queries)} "
                               "query images: nothing to evaluate")
        from vpr_ros.pca import Pca
        from vpr_ros.runtime.factory import open_backend

        pca = Pca.load(a.pca) if a.pca else None  # a bad file stops here, before the model is built
        with open_backend(a.backend, cfg, a.device, batch_dependent_ok=True) as backend:
            backend_name = backend.name
            random_weights = backend.weights_source.startswith("random")
            if pca is not None:
                pca.check_fits(backend.descriptor_dim, backend.model_id, a.pca)
            title = f"{backend.model_id} ({backend.weights_source})" + (f" + {pca.pca_id}" if pca else "")
            print(f"[eval] model {title} on '{backend.name}'")
            if not backend.batch_independent:
                print(f"[eval] NOTE: this model's cross-image encoder makes each descriptor depend on the "
                      f"other {a.batch_size - 1} images of its batch (--batch-size), as in the official "
                      "evaluation; it cannot be used for maps")
            warn_if_random("vpr_ros_eval", backend)
            vcfg = None
            if a.rerank != "none":  # a setting the backend cannot serve stops here, before the long work
                from vpr_ros.config import VerificationConfig
                from vpr_ros.verification.verifier import Verifier

                kind = "dense" if a.rerank == "dense" else a.features
                vcfg = VerificationConfig(features=kind, rerank=a.rerank, rerank_top_k=a.rerank_top_k,
                                          min_inliers=max(6, a.min_inliers))
                Verifier(vcfg).check_backend(backend)
            result = evaluate(dataset, backend, a.batch_size, Path(a.cache_dir) if a.cache_dir else None,
                              pca, progress=True, depth=a.rerank_top_k if a.rerank != "none" else 0)
            if result.cached:
                print("[eval] descriptors loaded from cache (the network did not run)")
            summary = None
            if vcfg is not None:
                from vpr_ros.eval_run import rerank

                print("[eval] global: " + "   ".join(f"R@{n} {v:.3f}" for n, v in result.recalls.items()))
                summary = rerank(result, dataset, vcfg, progress=True, backend=backend)
                what = summary.score_unit
                print(f"[eval] re-ranked top-{summary.top_k} by {vcfg.features} {what} ({summary.ms_per_query:.1f} ms/query):")
                print(f"[eval] verified top-1 ({what} >= {vcfg.min_inliers}): {summary.verified} of "
                      f"{len(dataset.queries)} queries, precision "
                      + (f"{summary.precision:.3f}" if summary.verified else "n/a (none verified)")
                      + f", recall {summary.recall:.3f}")
                if summary.verified >= 0.95 * len(dataset.queries) and len(dataset.queries) >= 10:
                    print(f"[eval] NOTE: {summary.verified} of {len(dataset.queries)} top-1 matches reach {vcfg.min_inliers} "
                          f"{what}: the threshold separates nothing here; raise --min-inliers (dense scores count "
                          "mutual nearest neighbours of every patch, far more than geometric inliers)")
        print("[eval] " + ("re-ranked: " if summary is not None else "")
              + "   ".join(f"R@{n} {v:.3f}" for n, v in result.recalls.items()))
        print(f"[eval] PR AUC {result.pr.auc:.3f}   recall at 100% precision {result.pr.recall_at_100_precision:.3f}"
              " (of the global top-1 scores)")
        if summary is not None and summary.pr_local is not None:
            print(f"[eval] PR AUC {summary.pr_local.auc:.3f}   recall at 100% precision "
                  f"{summary.pr_local.recall_at_100_precision:.3f} (of the re-ranked top-1's {summary.score_unit})")
        print("[eval] timings: " + ", ".join(f"{k} {v:.2f}" if math.isfinite(v) else
                                             f"{k} n/a ({'descriptors from the cache' if 'describe' in k else 'not run'})"
                                             for k, v in result.timings.items()))
        settings = {
            "dataset_path": str(Path(a.dataset).resolve()), "layout": a.layout, "radius_m": a.radius,
            "tolerance_frames": a.tolerance, "model": dataclasses.asdict(cfg), "backend": backend_name,
            "random_weights": random_weights,
            "device": a.device, "batch_size": a.batch_size, "pca": str(Path(a.pca).resolve()) if a.pca else "",
            "rerank": a.rerank, "rerank_top_k": a.rerank_top_k, "features": a.features, "min_inliers": a.min_inliers,
            "command": "vpr_ros_eval " + " ".join(sys.argv[1:] if argv is None else argv),
            "vpr_ros_version": __version__}
        files = write_outputs(result, dataset, Path(a.output), title, summary, settings)
        print(f"[eval] wrote {', '.join(str(f) for f in files)}")
        return 0
    except EXPECTED_ERRORS as exc:
        return report_error("vpr_ros_eval", exc)


if __name__ == "__main__":
    raise SystemExit(main())

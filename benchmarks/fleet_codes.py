"""Fleet descriptors (issue 35): bytes per keyframe and Recall on the corridor's real images, the
compact fleet code (random orthogonal projection to 976 values, int8) beside the full descriptor a
Swarm-SLAM-style exchange sends (float64, as its ``GlobalDescriptor``), through the same search.

    python benchmarks/fleet_codes.py                 # the weight-free VLAD model (fitted on the map's images)
    python benchmarks/fleet_codes.py --model default # the default student (untrained: no weights ship)

Two ways of matching a query robot's keyframes against a map robot's, by exact search:
  full      both sides' full descriptors (what a float64 exchange gives);
  codes     both sides' fleet codes, as sent (decoded): what a robot does with a code it receives.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np


def corridor_descriptors(model: str, corridor: Path, work: Path) -> tuple[np.ndarray, np.ndarray, object, object]:
    """(map descriptors [N, D], query descriptors [M, D], positives, ModelIdentity)."""
    from vpr_ros.config import ModelConfig
    from vpr_ros.datasets import read_eval_dataset
    from vpr_ros.eval_run import describe_images
    from vpr_ros.mapping.map_store import ModelIdentity
    from vpr_ros.runtime.factory import open_backend

    ds = read_eval_dataset(corridor)
    if model == "vlad":
        from vpr_ros.cli.fit_vocabulary import main as fit

        vocabulary = work / "vocabulary.npz"
        with contextlib.redirect_stdout(io.StringIO()):
            assert fit([str(corridor / "ref"), "--output", str(vocabulary), "--clusters", "32", "--no-progress"]) == 0
        cfg = ModelConfig(arch="vlad", vocabulary=str(vocabulary))
    else:
        cfg = ModelConfig(random_weights=True)
    with open_backend("auto", cfg) as b:
        db = describe_images(b, ds.database, 8, False)
        q = describe_images(b, ds.queries, 8, False)
        identity = ModelIdentity(b.model_id, b.weights_sha256, b.input_size, b.descriptor_dim)
    return db, q, ds.positives, identity


def recalls(map_d: np.ndarray, queries: np.ndarray, positives, ns=(1, 5)) -> dict[int, float]:  # type: ignore[no-untyped-def]
    import faiss

    index = faiss.IndexFlatIP(map_d.shape[1])
    index.add(np.ascontiguousarray(map_d, np.float32))
    _, ranked = index.search(np.ascontiguousarray(queries, np.float32), max(ns))
    return {n: float(np.mean([bool(set(r[:n].tolist()) & p) for r, p in zip(ranked, positives)])) for n in ns}


def main(argv: list[str] | None = None) -> int:
    from vpr_ros.fleet.codec import FleetCodec

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["vlad", "default"], default="vlad")
    ap.add_argument("--corridor", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "corridor"))
    ap.add_argument("--per-packet", type=int, default=10, help="keyframes per packet (Swarm-SLAM sends 10)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        db, q, positives, identity = corridor_descriptors(a.model, Path(a.corridor), Path(tmp))
    codec = FleetCodec(identity)
    n = a.per_packet
    packet = codec.encode("robot_a", 0, np.arange(n), np.zeros(n), db[:n])
    ours = len(packet) / n
    swarm = 8 * identity.descriptor_dim + 8 + 8  # float64 values + keyframe id + robot id (int64 each)
    decoded_db = np.concatenate([codec.decode(codec.encode("map", 0, np.arange(i, min(len(db), i + 64)),
                                                           np.zeros(min(len(db), i + 64) - i), db[i:i + 64])).vectors
                                 for i in range(0, len(db), 64)])
    decoded_q = np.concatenate([codec.decode(codec.encode("query", 0, np.arange(i, min(len(q), i + 64)),
                                                          np.zeros(min(len(q), i + 64) - i), q[i:i + 64])).vectors
                                for i in range(0, len(q), 64)])
    print(f"model {identity.model_id} ({identity.descriptor_dim}-d); corridor: {len(db)} map, {len(q)} query images")
    print(f"bytes per keyframe: fleet code {ours:.0f} (packets of {n}), full float64 {swarm} "
          f"({swarm / ours:.0f}x), full float32 {4 * identity.descriptor_dim + 16}")
    for name, (m, qq) in {"full": (db, q), "codes": (decoded_db, decoded_q)}.items():
        r = recalls(m, qq, positives)
        print(f"{name:6s} R@1 {r[1]:.3f} R@5 {r[5]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

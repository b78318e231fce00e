"""Fleet exchange on rendered drives (issue 35, SPEC section 10 item 12): three robots drive overlapping
routes through the rendered corridor, each in its own odometry frame with drift, sharing keyframes as
they take them; printed side by side for vpr_ros's exchange (fleet codes within a byte budget) and a
Swarm-SLAM-style one (full float64 descriptors, no budget) run through the same code:
precision of the inter-robot closures, time from a pair's first overlap to its first closure,
bytes per shared keyframe and per closure, and the merged map's alignment error where robots met (the
relative pose of each closure's two keyframes in the merged map against the true one).

    python benchmarks/fleet_exchange.py                  # weight-free VLAD descriptors (fitted on robot_a's images)
    python benchmarks/fleet_exchange.py --model default  # the default student (untrained: no weights ship)

The descriptors are real (a real model on the rendered images); messages go through a simulated shared
topic (every message delivered, in order) with a simulated clock, 0.25 s per step, each robot taking a
keyframe every metre at 1 m/s.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import struct
import tempfile
from pathlib import Path

import numpy as np

from vpr_ros.config import FleetConfig, ModelConfig, VerificationConfig
from vpr_ros.fleet.codec import KIND_DESCRIPTORS, MAGIC, VERSION, DescriptorPacket, FleetCodec, Robot
from vpr_ros.geometry import compose, inverse, quat_to_matrix

STEP = 0.25


class FullCodec(FleetCodec):
    """Swarm-SLAM's exchange through the same code: the full descriptor as float64 (its
    ``GlobalDescriptor``), no reduction, no quantisation."""

    @property
    def fingerprint(self) -> bytes:  # type: ignore[override]
        return b"full-f64"

    def project(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    def round_trip(self, descriptors: np.ndarray) -> np.ndarray:
        return self.project(np.asarray(descriptors, np.float64).astype(np.float32))

    def encode(self, robot: Robot, seq: int, keyframe_ids, stamps, descriptors) -> bytes:  # type: ignore[no-untyped-def]
        head = struct.pack("<4sBB8sH", MAGIC, VERSION, KIND_DESCRIPTORS, self.fingerprint, robot.id) + \
            robot.wire()[2:] + struct.pack("<IH", seq, len(keyframe_ids))
        body = b"".join(struct.pack("<Id", int(i), float(s)) + np.asarray(d, "<f8").tobytes()
                        for i, s, d in zip(keyframe_ids, stamps, self.project(descriptors)))
        return head + body

    def decode(self, data: bytes) -> DescriptorPacket:
        rid, size = struct.unpack_from("<HB", data, 14)
        name = data[17:17 + size].decode()
        at = 17 + size
        seq, n = struct.unpack_from("<IH", data, at)
        at += 6
        rec = 12 + 8 * self.model.descriptor_dim
        ids, stamps, vecs = [], [], []
        for k in range(n):
            i, s = struct.unpack_from("<Id", data, at + k * rec)
            ids.append(i)
            stamps.append(s)
            vecs.append(np.frombuffer(data, "<f8", self.model.descriptor_dim, at + k * rec + 12))
        return DescriptorPacket(Robot(name, rid), seq, np.array(ids, np.int64), np.array(stamps),
                                np.array(vecs, np.float32))


def describe(model: str, images: list, fit_on: list, work: Path) -> tuple:  # type: ignore[type-arg]
    from vpr_ros.runtime.factory import open_backend
    from vpr_ros.runtime.preprocess import preprocess_batch

    if model == "vlad":
        import cv2

        from vpr_ros.cli.fit_vocabulary import main as fit

        folder = work / "fit"
        folder.mkdir()
        for k, img in enumerate(fit_on):
            cv2.imwrite(str(folder / f"{k:04d}.png"), img[:, :, ::-1])
        with contextlib.redirect_stdout(io.StringIO()):
            assert fit([str(folder), "--output", str(work / "v.npz"), "--clusters", "32", "--no-progress"]) == 0
        cfg = ModelConfig(arch="vlad", vocabulary=str(work / "v.npz"))
    else:
        cfg = ModelConfig(random_weights=True)
    with open_backend("auto", cfg) as b:
        out = np.concatenate([b.infer(preprocess_batch(images[i:i + 8], b.input_size)) for i in range(0, len(images), 8)])
        from vpr_ros.mapping.map_store import ModelIdentity

        return out, ModelIdentity(b.model_id, b.weights_sha256, b.input_size, b.descriptor_dim)


def run(variant: str, robots: dict, identity, budget: float, threshold: float, top_k: int) -> dict:  # type: ignore[no-untyped-def,type-arg]
    """One fleet run; returns the measured figures."""
    from vpr_ros.fleet.alignment import align_fleet
    from vpr_ros.fleet.peer import DESCRIPTORS, FEATURES, REQUESTS, FleetPeer
    from vpr_ros.verification.verifier import Verifier

    codec = FullCodec(identity, dim=identity.descriptor_dim) if variant == "full" else FleetCodec(identity)
    cfg = FleetConfig(bandwidth_bytes_per_s=budget, burst_bytes=65536 if budget < 1e9 else 10**9, threshold=threshold,
                      top_k=top_k)
    verifier = Verifier(VerificationConfig(features="sift"))
    peers = {}
    for rid, (name, r) in enumerate(robots.items(), 1):
        peers[name] = FleetPeer(Robot(name, rid), codec, cfg, verifier, r["features"].get)
    handlers = {DESCRIPTORS: "on_descriptors", REQUESTS: "on_request", FEATURES: "on_features"}
    added = {n: 0 for n in robots}
    first_closure: dict[frozenset, float] = {}  # type: ignore[type-arg]
    closures = []
    end = max(r["times"][-1] for r in robots.values()) + 120.0
    t = 0.0
    while t <= end:
        for name, r in robots.items():
            k = added[name]
            while k < len(r["times"]) and r["times"][k] <= t:
                peers[name].add_own([k], [r["times"][k]], r["descriptors"][k:k + 1], [r["odometry"][k]])
                k += 1
            added[name] = k
        messages = [(p, kind, data) for p in peers.values() for kind, data in p.outgoing(t)]
        for sender, kind, data in messages:
            for p in peers.values():
                if p is not sender:
                    for c in getattr(p, handlers[kind])(data) or []:
                        closures.append(c)
                        first_closure.setdefault(frozenset((c.robot.name, c.other.name)), t)
        t += STEP
    def correct(c) -> bool:  # type: ignore[no-untyped-def]
        """The closure's relative pose is the true one (0.3 m, 3 deg): what a back end may use."""
        truth = compose(inverse(robots[c.robot.name]["world"][c.keyframe]), robots[c.other.name]["world"][c.other_keyframe])
        rot = np.degrees(np.arccos(np.clip((np.trace(quat_to_matrix(c.pose[3:]).T @ quat_to_matrix(truth[3:])) - 1) / 2,
                                           -1, 1)))
        return float(np.linalg.norm(np.subtract(c.pose[:3], truth[:3]))) <= 0.3 and rot <= 3.0

    true = [c for c in closures if correct(c)]
    overlap: dict[frozenset, float] = {}  # type: ignore[type-arg]
    names = list(robots)
    for i, a in enumerate(names):  # the first time both robots have keyframes within 2 m (their views overlap)
        for b in names[i + 1:]:
            ra, rb = robots[a], robots[b]
            shared = [max(ta, tb) for pa, ta in zip(ra["world"], ra["times"]) for pb, tb in zip(rb["world"], rb["times"])
                      if np.linalg.norm(np.subtract(pa[:3], pb[:3])) <= 2.0]
            if shared:
                overlap[frozenset((a, b))] = min(shared)
    sent = {n: sum(p.stats.sent_bytes.values()) for n, p in peers.items()}
    desc = sum(p.stats.sent_bytes[DESCRIPTORS] for p in peers.values())
    shared_kf = sum(p.sharer.sent_keyframes for p in peers.values())
    frames = align_fleet(closures, 1, [1, 2, 3])
    transforms = {name: frames[rid].transform for rid, name in enumerate(robots, 1)}
    errors = []  # where robots met: the merged map's relative pose of each closure's keyframes against the true one
    for c in closures:
        Ta, Tb = transforms[c.robot.name], transforms[c.other.name]
        if Ta is None or Tb is None:
            continue
        mine = compose(Ta, robots[c.robot.name]["odometry"][c.keyframe])
        theirs = compose(Tb, robots[c.other.name]["odometry"][c.other_keyframe])
        rel = compose(inverse(mine), theirs)
        truth = compose(inverse(robots[c.robot.name]["world"][c.keyframe]), robots[c.other.name]["world"][c.other_keyframe])
        rot = np.degrees(np.arccos(np.clip((np.trace(quat_to_matrix(rel[3:]).T @ quat_to_matrix(truth[3:])) - 1) / 2,
                                           -1, 1)))
        errors.append((float(np.linalg.norm(np.subtract(rel[:3], truth[:3]))), float(rot)))
    return {"closures": len(closures), "precision": len(true) / len(closures) if closures else float("nan"),
            "delays": {tuple(sorted(k)): first_closure.get(k, float("nan")) - v for k, v in overlap.items()},
            "bytes": sent, "bytes_per_kf": desc / max(1, shared_kf),
            "bytes_per_closure": sum(sent.values()) / max(1, len(closures)),
            "aligned": [rid for rid in (2, 3) if frames[rid].transform is not None],
            "error_m": max((e[0] for e in errors), default=float("nan")),
            "error_deg": max((e[1] for e in errors), default=float("nan"))}


def main(argv: list[str] | None = None) -> int:
    from vpr_ros.demo.fleet_drives import fleet_drives
    from vpr_ros.verification.verifier import Verifier

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["vlad", "default"], default="vlad")
    ap.add_argument("--budget", type=float, default=FleetConfig().bandwidth_bytes_per_s,
                    help="vpr_ros's bytes per second per robot")
    ap.add_argument("--yaw-drift", type=float, default=0.05, help="odometry yaw drift, degrees per metre")
    ap.add_argument("--scale-drift", type=float, default=0.002, help="odometry scale error")
    ap.add_argument("--threshold", type=float, default=FleetConfig().threshold, help="fleet.threshold")
    ap.add_argument("--top-k", type=int, default=FleetConfig().top_k, help="fleet.top_k")
    a = ap.parse_args(argv)
    drives = fleet_drives(a.yaw_drift, a.scale_drift)
    v = Verifier(VerificationConfig(features="sift"))
    robots = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, d in drives.items():
            robots[name] = {"places": d.places, "times": d.times, "world": d.world, "odometry": d.odometry,
                            "features": {k: v.features(img).with_depth(dep, d.intrinsics)
                                         for k, (img, dep) in enumerate(zip(d.images, d.depths))}}
        x, identity = describe(a.model, [img for d in drives.values() for img in d.images], drives["robot_a"].images,
                               Path(tmp))
    at = 0
    for r in robots.values():
        r["descriptors"] = x[at:at + len(r["places"])]
        at += len(r["places"])
    print(f"model {identity.model_id} ({identity.descriptor_dim}-d); robots: "
          + ", ".join(f"{n} places {r['places'][0]}..{r['places'][-1]} from t={r['times'][0]:.0f} s"
                      for n, r in robots.items())
          + f"; odometry drift {a.yaw_drift} deg/m yaw, {100 * a.scale_drift:.1f}% scale; candidates: cosine >= "
          f"{a.threshold}, top {a.top_k}")
    rows = [("vpr_ros (codes, budget %.0f B/s)" % a.budget, run("codes", robots, identity, a.budget, a.threshold, a.top_k)),
            ("Swarm-SLAM-style (float64, no budget)", run("full", robots, identity, 1e9, a.threshold, a.top_k))]
    for label, r in rows:
        delays = ", ".join(f"{'-'.join(k)} {v:.1f} s" for k, v in sorted(r["delays"].items()))
        print(f"{label}: {r['closures']} closures, precision {r['precision']:.2f}; first overlap -> first closure: "
              f"{delays}; bytes per shared keyframe {r['bytes_per_kf']:.0f}, per closure {r['bytes_per_closure']:.0f} "
              f"(sent {sum(r['bytes'].values())} in all); robots aligned to robot_a: {r['aligned']}; merged map where "
              f"robots met: within {100 * r['error_m']:.2f} cm, {r['error_deg']:.3f} deg of the true relative poses")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What per-keyframe durability costs the map builder, side by side with the store it replaced.

Both run the map builder's own work per keyframe on the same frames, interleaved in rounds:
* **durable (format 2)**: the accepted frame's raw image is committed (fsynced) before encoding,
  then the encoded keyframe replaces it in a second commit (what the map_builder node does);
* **v0.3 (format 1)**: encode, add in memory, save the whole map at the end (the old store's most
  favourable case: the node also rewrote the whole map at every autosave).
The model is the D2-VPR student (ViT-S/14, random weights) on ONNX Runtime with SIFT features on
640x480 frames, as the node runs by default. Prints time per keyframe and disk size, and ratios.

    python benchmarks/map_durability.py [--keyframes 20] [--rounds 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def frames(n: int, seed: int) -> list[np.ndarray]:
    from vpr_ros.demo.synthetic import place_views

    views = place_views(n, 1, 224, seed=seed).reshape(-1, 224, 224, 3)
    import cv2

    return [cv2.resize(v, (640, 480), interpolation=cv2.INTER_LINEAR) for v in views]


def dir_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and f.name != "writer.lock")


STORE_SECONDS: list[float] = []  # time inside the store's two commits, per keyframe


def run_durable(backend, images, root: Path) -> float:  # type: ignore[no-untyped-def]
    from vpr_ros.config import KeyframeConfig
    from vpr_ros.geometry import planar_pose
    from vpr_ros.mapping.builder import MapBuilder
    from vpr_ros.mapping.map_store import Keyframe, ModelIdentity, VprMap
    from vpr_ros.mapping.store.pending import PendingFrame, RawImage

    t = time.perf_counter()
    vmap = VprMap.open_writer(root, ModelIdentity.of_backend(backend), durable=True)
    b = MapBuilder(backend, KeyframeConfig(), base=vmap)
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        frame = PendingFrame(Keyframe(float(i), planar_pose(i, 0.0)), RawImage(img.tobytes(), "rgb8", h, w, 3 * w))
        t0 = time.perf_counter()
        seq = vmap.add_pending(frame)  # in the image callback: on disk before anything else
        t1 = time.perf_counter()
        desc, feats = b.encode_frame(frame)
        t2 = time.perf_counter()
        b.add_encoded(desc, [frame.keyframe], feats, pending=[seq])  # the encoder thread's commit
        STORE_SECONDS.append(t1 - t0 + time.perf_counter() - t2)
    b.save()
    vmap.close()
    return time.perf_counter() - t


OLD = r"""
import sys, time, json, numpy as np
sys.path.insert(0, sys.argv[1])
from vpr_ros.config import KeyframeConfig, ModelConfig
from vpr_ros.runtime.onnxruntime_backend import OnnxRuntimeBackend
from vpr_ros.mapping.builder import MapBuilder
from vpr_ros.mapping.map_store import Keyframe
from vpr_ros.geometry import planar_pose
images = np.load(sys.argv[3], allow_pickle=False)
with OnnxRuntimeBackend(sys.argv[2], threads=int(sys.argv[5])) as backend:
    backend.infer(np.zeros((1, 3, 224, 224), np.float32))
    t = time.perf_counter()
    b = MapBuilder(backend, KeyframeConfig())
    for i, img in enumerate(images):
        b.offer(img, Keyframe(float(i), planar_pose(i, 0.0)))
    b.save(sys.argv[4])
    print(json.dumps({"seconds": time.perf_counter() - t, "keyframes": len(b.map)}))
"""


def run_old(src: Path, onnx: Path, images_npy: Path, root: Path, threads: int) -> float:
    import json

    out = subprocess.run([sys.executable, "-c", OLD, str(src), str(onnx), str(images_npy), str(root), str(threads)],
                         capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])


def main(argv: list[str] | None = None) -> int:
    from vpr_ros.config import ModelConfig
    from vpr_ros.runtime.factory import onnx_for
    from vpr_ros.runtime.onnxruntime_backend import OnnxRuntimeBackend

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keyframes", type=int, default=20, help="keyframes per round and store")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rev", default="f5a240d", help="git revision of the previous store (v0.3)")
    a = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="vpr_durability_"))
    src = tmp / "old"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", a.rev, "vpr_ros"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    onnx = onnx_for(ModelConfig(), str(tmp / "cache"))
    images = frames(a.keyframes, seed=4)
    npy = tmp / "images.npy"
    np.save(npy, np.stack(images), allow_pickle=False)
    new_t, old_t, new_b, old_b = [], [], [], []
    with OnnxRuntimeBackend(onnx, threads=a.threads) as backend:
        backend.infer(np.zeros((1, 3, 224, 224), np.float32))
        for r in range(a.rounds):  # interleaved: the machine's noise falls on both
            root_new, root_old = tmp / f"new{r}", tmp / f"old{r}"
            new_t.append(run_durable(backend, images, root_new) / a.keyframes)
            old_t.append(run_old(src, onnx, npy, root_old, a.threads) / a.keyframes)
            new_b.append(dir_bytes(root_new))
            old_b.append(dir_bytes(root_old))
            print(f"round {r}: durable {new_t[-1] * 1e3:.1f} ms/keyframe, v0.3 {old_t[-1] * 1e3:.1f} ms/keyframe; "
                  f"disk {new_b[-1] / 1e6:.2f} MB vs {old_b[-1] / 1e6:.2f} MB")
    tn, to = statistics.median(new_t), statistics.median(old_t)
    bn, bo = statistics.median(new_b), statistics.median(old_b)
    print(f"median of {a.rounds} rounds, {a.keyframes} keyframes of 640x480 each, {a.threads} threads:")
    print(f"  time per keyframe: durable {tn * 1e3:.1f} ms, v0.3 {to * 1e3:.1f} ms -> {tn / to:.3f}x "
          f"({(tn / to - 1) * 100:+.1f}%; target <= +10%)")
    print(f"  of which the store's two commits (raw image, then the encoded keyframe): "
          f"{statistics.median(STORE_SECONDS) * 1e3:.1f} ms median per keyframe")
    print(f"  disk: durable {bn / a.keyframes / 1024:.1f} KiB, v0.3 {bo / a.keyframes / 1024:.1f} KiB per keyframe "
          f"-> {bn / bo:.3f}x ({(bn / bo - 1) * 100:+.1f}%; target <= +20%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

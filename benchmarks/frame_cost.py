"""Cost of one localizer frame by image size: time and peak memory from a raw ``mono8`` message
to a verified match (conversion, preprocessing, network, SIFT, re-ranking), 640x480 ... 8000x8000.

Each size runs in a fresh process (peak RSS is per process), through the localizer's own path:
``raw_to_rgb`` (the node's decoder) then ``Localizer.localize`` against a small SIFT map. The
network is the tiny test student on the torch backend: its cost does not depend on the image size
(every frame is resized to the network input), so what grows is conversion and local features.
Printed side by side: features detected on the image shrunk to ``verification.max_side`` (1600,
the default) and at full resolution (the behaviour before v0.4), whose cost grows with the pixels
(full resolution is skipped above 12 MP: SIFT on 7900 x 8000 took 15 GB and a minute).

    python benchmarks/frame_cost.py [--sizes 640x480 1920x1080 4000x3000 8000x8000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FULL_RES_LIMIT = 12_000_000  # pixels: above this, full-resolution SIFT is not run


def textured(h: int, w: int, seed: int) -> np.ndarray:
    """A mono8 image with structure at every scale (SIFT finds features at any size)."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(8, h // 32), max(8, w // 32)), dtype=np.uint8)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    noise = rng.integers(0, 40, (h, w), dtype=np.uint8)
    return cv2.add(img, noise)


def one_size(raw_file: str, h: int, w: int, max_side: int, repeats: int) -> dict:
    """Run in a child process: build a map, read the frame's bytes (the message a node holds), then
    time ``repeats`` frames; memory is the peak RSS above the RSS before the first frame."""
    from vpr_ros.config import KeyframeConfig, LocalizerConfig, ModelConfig, VerificationConfig
    from vpr_ros.images import raw_to_rgb
    from vpr_ros.localization import Localizer
    from vpr_ros.mapping.builder import MapBuilder
    from vpr_ros.mapping.map_store import Keyframe
    from vpr_ros.runtime.torch_backend import TorchBackend

    ver = VerificationConfig(features="sift", max_side=max_side)
    with TorchBackend(ModelConfig(backbone="vit_test", input_size=56, seed=5)) as backend:
        builder = MapBuilder(backend, KeyframeConfig(min_distance=0.5), verification=ver)
        for i in range(4):
            rgb = np.repeat(textured(480, 640, i)[:, :, None], 3, axis=2)
            builder.offer(rgb, Keyframe(stamp=float(i), pose=(float(i), 0, 0, 0, 0, 0, 1)))
        loc = Localizer(backend, builder.map, LocalizerConfig(), ver)
        data = Path(raw_file).read_bytes()
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        times = []
        for r in range(repeats):
            t0 = time.perf_counter()
            rgb = raw_to_rgb("mono8", h, w, w, False, data)
            loc.localize(rgb, stamp=100.0 + r)
            times.append((time.perf_counter() - t0) * 1e3)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"ms": statistics.median(times), "frame_mib": peak - base}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["640x480", "1920x1080", "4000x3000", "8000x8000"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(one_size(a.child[0], *(int(v) for v in a.child[1:]))))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in a.sizes:
            w, h = (int(v) for v in size.lower().split("x"))
            raw = Path(tmp) / f"{size}.raw"
            raw.write_bytes(textured(h, w, 99).tobytes())
            cells = []
            for max_side in (1600, 16384):
                if max_side == 16384 and h * w > FULL_RES_LIMIT:
                    cells.append(None)
                    continue
                out = subprocess.run([sys.executable, __file__, "--child", str(raw), str(h), str(w), str(max_side),
                                      str(a.repeats)], capture_output=True, text=True, check=True,
                                     cwd=Path(__file__).resolve().parents[1])
                cells.append(json.loads(out.stdout.strip().splitlines()[-1]))
            raw.unlink()
            rows.append((h * w / 1e6, cells[0]["frame_mib"]))
            print(f"{size:>10} ({h * w / 1e6:5.1f} MP): max_side 1600 {cells[0]['ms']:7.0f} ms {cells[0]['frame_mib']:6.0f} MiB"
                  + (f"   | full resolution {cells[1]['ms']:7.0f} ms {cells[1]['frame_mib']:6.0f} MiB   ratio "
                     f"{cells[1]['ms'] / cells[0]['ms']:.1f}x time, {cells[1]['frame_mib'] / max(cells[0]['frame_mib'], 1):.1f}x memory"
                     if cells[1] else "   | full resolution: not run"), flush=True)
    mp, mib = np.array(rows).T
    slope, intercept = np.polyfit(mp, mib, 1) if len(rows) > 1 else (0.0, float(mib[0]))
    from vpr_ros.images import MAX_PIXELS

    print(f"memory of one frame (peak RSS above the process holding the message): about {intercept:.0f} MiB + "
          f"{slope:.1f} MiB per megapixel; at the {MAX_PIXELS / 1e6:.0f} MP limit (larger frames are refused) "
          f"{intercept + slope * MAX_PIXELS / 1e6:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

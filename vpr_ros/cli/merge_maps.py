"""``vpr_ros_merge_maps``: merge several robots' maps into one map, aligned to a reference robot's frame
by the inter-robot loop closures found between them (the fleet exchange, run offline)."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from vpr_ros.cli import EXPECTED_ERRORS, HelpWithDefaults, report_error


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(formatter_class=HelpWithDefaults, prog="vpr_ros_merge_maps",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("maps", nargs="+", help="the robots' map directories (same model; built with depth and "
                    "CameraInfo, so that closures are metric)")
    ap.add_argument("--output", required=True, help="the merged map directory (must not hold a map)")
    ap.add_argument("--robot-ids", type=int, nargs="+", default=None,
                    help="the robots' fleet ids, in the order of the maps (default 0, 1, 2, ...)")
    ap.add_argument("--reference", type=int, default=None, help="the robot whose map frame the merged map keeps "
                    "(default the first map's)")
    ap.add_argument("--min-closures", type=int, default=3, help="agreeing closures needed to align two robots")
    ap.add_argument("--min-extent", type=float, default=1.0, help="metres the agreeing closures must span")
    ap.add_argument("--threshold", type=float, default=0.4, help="least fleet-code cosine of a candidate (fleet.threshold)")
    a = ap.parse_args(argv)
    ids = a.robot_ids if a.robot_ids is not None else list(range(len(a.maps)))
    if len(ids) != len(a.maps) or len(set(ids)) != len(ids) or len(a.maps) < 2:
        ap.error(f"give two maps or more and one distinct id per map (got {len(a.maps)} maps, ids {ids})")
    reference = ids[0] if a.reference is None else a.reference
    out = Path(a.output)
    try:
        from vpr_ros.config import FleetConfig
        from vpr_ros.fleet.codec import Robot
        from vpr_ros.fleet.merge import merge_maps, offline_closures
        from vpr_ros.mapping.map_store import VprMap

        from vpr_ros.errors import MapError

        if (out / "manifest.yaml").exists():
            raise MapError(f"{out} holds a map already: give a new directory")
        robots = [Robot(Path(p).resolve().name[:64] or f"robot{i}", i) for p, i in zip(a.maps, ids)]
        maps = [VprMap.load(p) for p in a.maps]
        cfg = FleetConfig(bandwidth_bytes_per_s=1e9, burst_bytes=10**9, threshold=a.threshold)
        closures = offline_closures(robots, maps, cfg, progress=lambda s: print(f"  {s}", flush=True))
        print(f"{len(closures)} verified inter-robot closures")
        report = merge_maps(robots, maps, out, reference, closures, a.min_closures, a.min_extent)
    except EXPECTED_ERRORS as exc:
        return report_error("vpr_ros_merge_maps", exc)
    for r in robots:
        f = report.frames[r.id]
        if f.transform is None:
            print(f"  robot {r}: left out: {f.reason}")
        elif r.id == reference:
            print(f"  robot {r}: reference")
        else:
            x, y, z = f.transform[:3]
            yaw = math.degrees(2 * math.atan2(f.transform[5], f.transform[6]))
            print(f"  robot {r}: aligned through {' -> '.join(map(str, f.path))} from "
                  f"{sum(h.inliers for h in f.hops)} agreeing closures: at ({x:.2f}, {y:.2f}, {z:.2f}) m, "
                  f"yaw {yaw:.1f} deg in the reference frame")
    print(f"wrote {out}: {report.keyframes} keyframes")
    return 0 if not report.left_out else 3


if __name__ == "__main__":
    raise SystemExit(main())

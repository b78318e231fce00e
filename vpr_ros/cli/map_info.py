"""``vpr_ros_map_info``: print a map's manifest and statistics (validates the map on the way)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from vpr_ros.errors import VprError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vpr_ros_map_info", description=__doc__.split("\n\n")[0])
    ap.add_argument("map_dir")
    a = ap.parse_args(argv)
    try:
        from vpr_ros.mapping.map_store import MANIFEST, VprMap

        vmap = VprMap.load(a.map_dir)
    except VprError as exc:
        print(f"vpr_ros_map_info: error: {exc}", file=sys.stderr)
        return 2
    m = vmap.manifest
    root = Path(a.map_dir)
    print(f"map {root}  (format {m.format_version}, generation {m.generation}, created {m.created})")
    print(f"  source        {m.source}")
    print(f"  model         {m.model.model_id}  (weights sha256 {m.model.weights_sha256[:16]}...)")
    print(f"  descriptors   {m.count} x {m.model.descriptor_dim}, {m.metric}, index '{m.index_type}'"
          + (f", PCA {m.model.pca_id}" if m.model.pca_id else ""))
    print(f"  input         {m.model.input_size} px, mean {list(m.model.mean)}, std {list(m.model.std)}")
    if len(vmap):
        poses = vmap.poses()
        stamps = np.array([k.stamp for k in vmap.keyframes])
        steps = np.linalg.norm(np.diff(poses[:, :3], axis=0), axis=1) if len(poses) > 1 else np.zeros(0)
        cams: dict[str, int] = {}
        for k in vmap.keyframes:
            cams[k.camera] = cams.get(k.camera, 0) + 1
        print(f"  frame         {m.map_frame}; x [{poses[:, 0].min():.1f}, {poses[:, 0].max():.1f}] "
              f"y [{poses[:, 1].min():.1f}, {poses[:, 1].max():.1f}] m; path length {steps.sum():.1f} m")
        print(f"  stamps        {stamps.min():.3f} .. {stamps.max():.3f} s ({stamps.max() - stamps.min():.1f} s)")
        print(f"  cameras       {', '.join(f'{c} ({n})' for c, n in sorted(cams.items()))}")
        print(f"  with GPS      {sum(k.gps is not None for k in vmap.keyframes)}")
        n_feat, mean_bytes = vmap.feature_stats()
        kind = m.local_features or "none"
        print(f"  local features {kind}: {n_feat} keyframes, {mean_bytes / 1024:.1f} KiB per keyframe"
              + (" (for re-ranking and geometric verification)" if n_feat else ""))
        n_kf = len(vmap)
        total = sum(f.stat().st_size for f in (root / x for x in m.files()))
        print(f"  size          {total / max(1, n_kf) / 1024:.1f} KiB per keyframe on disk (index + table)")
    files = [root / MANIFEST, *(root / f for f in m.files())]
    print("  files         " + ", ".join(f"{f.name} {f.stat().st_size / 1e6:.2f} MB" for f in files))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

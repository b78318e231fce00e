"""``vpr_ros_map_info``: print a map's description and statistics, after validating it (every checksum,
the database structure, the index snapshot) — the writer lock holder and the pending keyframes too."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from vpr_ros.cli import EXPECTED_ERRORS, HelpWithDefaults, cosine, non_negative_float, non_negative_int, report_error


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(formatter_class=HelpWithDefaults, prog="vpr_ros_map_info", description=__doc__.split("\n\n")[0])
    ap.add_argument("map_dir", help="map directory")
    ap.add_argument("--plot", default="", metavar="PNG", help="draw the map top-down into this PNG: keyframes "
                    "coloured by session, revisit edges, thumbnails with --thumbnails")
    ap.add_argument("--edge-score", type=cosine, default=0.8,
                    help="--plot: draw an edge from a keyframe to its best match among keyframes at least "
                         "--edge-gap s older when their cosine reaches this")
    ap.add_argument("--edge-gap", type=non_negative_float, default=30.0, help="--plot: seconds between revisit edge ends")
    ap.add_argument("--thumbnails", type=non_negative_int, default=0, help="--plot: show up to this many keyframe images "
                    "(maps built from image folders; bag images are not stored)")
    a = ap.parse_args(argv)
    try:
        from vpr_ros.mapping.map_store import VprMap

        vmap = VprMap.load(a.map_dir, check_structure=True)
    except EXPECTED_ERRORS as exc:
        return report_error("vpr_ros_map_info", exc)
    m = vmap.manifest
    root = Path(a.map_dir)
    from vpr_ros.mapping.map_store import writer_holder

    holder = writer_holder(root)
    print(f"map {root}  (format {m.format_version}, generation {m.generation}, created {m.created})")
    print(f"  source        {m.source}")
    print(f"  model         {m.model.model_id}  (weights sha256 {m.model.weights_sha256[:16]}...)")
    print(f"  descriptors   {m.count} x {m.model.descriptor_dim}, {m.metric}, index '{m.index_type}'"
          + (f", PCA {m.model.pca_id}" if m.model.pca_id else ""))
    print(f"  input         {m.model.input_size} px, mean {list(m.model.mean)}, std {list(m.model.std)}")
    print(f"  writer        {holder or 'none (no process is writing this map)'}")
    if m.format_version >= 2:
        print(f"  pending       {vmap.pending} accepted keyframe(s) not yet encoded"
              + (" (the map builder encodes them at its next start; or vpr_ros_build_map --finish)"
                 if vmap.pending else ""))
        n_feat = vmap.feature_stats()[0]
        print(f"  checksums     OK: metadata, {len(vmap)} keyframe rows with descriptors, {n_feat} local-feature "
              "rows, database structure" + ("; " + "; ".join(vmap.notes) if vmap.notes else
                                            (", index snapshot" if m.index_type != "flat" else "")))
    else:
        print("  checksums     none (format 1, vpr_ros v0.3: migrated to format 3 by its next writer)")
    if len(vmap):
        poses = vmap.poses()
        stamps = np.array([k.stamp for k in vmap.keyframes])
        steps = np.linalg.norm(np.diff(poses[:, :3], axis=0), axis=1) if len(poses) > 1 else np.zeros(0)
        cams: dict[str, int] = {}
        sessions: dict[int, int] = {}
        for k in vmap.keyframes:
            cams[k.camera] = cams.get(k.camera, 0) + 1
            sessions[k.session] = sessions.get(k.session, 0) + 1
        print(f"  frame         {m.map_frame}; x [{poses[:, 0].min():.1f}, {poses[:, 0].max():.1f}] "
              f"y [{poses[:, 1].min():.1f}, {poses[:, 1].max():.1f}] m; path length {steps.sum():.1f} m")
        print(f"  stamps        {stamps.min():.3f} .. {stamps.max():.3f} s ({stamps.max() - stamps.min():.1f} s)")
        print(f"  cameras       {', '.join(f'{c} ({n})' for c, n in sorted(cams.items()))}")
        print(f"  sessions      {', '.join(f'{s} ({n})' for s, n in sorted(sessions.items()))}")
        if len(sessions) > 1 or vmap.session_records:
            for s in sorted(sessions):
                print(f"    session {s}: {vmap.session_record(s).describe()}")
        print(f"  with GPS      {sum(k.gps is not None for k in vmap.keyframes)}")
        n_feat, mean_bytes = vmap.feature_stats()
        kind = m.local_features or "none"
        print(f"  local features {kind}: {n_feat} keyframes, {mean_bytes / 1024:.1f} KiB per keyframe"
              + (" (for re-ranking and geometric verification)" if n_feat else ""))
        total = sum(f.stat().st_size for f in vmap.files)
        print(f"  size          {total / max(1, len(vmap)) / 1024:.1f} KiB per keyframe on disk (all files)")
        cost = vmap.cost()
        print(f"  memory        {cost['memory_per_keyframe'] / 1024:.2f} KiB per keyframe held by a node that loads it "
              f"({cost['memory_bytes'] / 2**20:.0f} MiB: the '{cost['index']}' index and the keyframe table, estimated; "
              "local features and vectors to re-rank are read when used; the network comes on top)")
    print("  files         " + ", ".join(f"{f.name} {f.stat().st_size / 1e6:.2f} MB" for f in vmap.files))
    try:
        if a.plot and len(vmap):
            from vpr_ros.mapping.map_plot import plot_map

            out, n_edges = plot_map(vmap, Path(a.plot), f"{root.name}: {len(vmap)} keyframes", a.edge_score,
                                    a.edge_gap, a.thumbnails)
            from vpr_ros.mapping.map_plot import edges_label

            print(f"  plot          {out} ({edges_label(vmap, a.edge_score, a.edge_gap, n_edges)})")
    except EXPECTED_ERRORS as exc:
        return report_error("vpr_ros_map_info", exc)
    finally:
        vmap.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

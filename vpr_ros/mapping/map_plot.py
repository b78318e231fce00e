"""A map you can see (ROS-free): top-down keyframe trajectory, sessions coloured, place-recognition
edges, and optional thumbnails of keyframes whose images are files."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vpr_ros.errors import VprError
from vpr_ros.files import replaced_atomically


def revisit_edges(vmap: Any, min_score: float, min_gap_s: float, verify: bool = True) -> list[tuple[int, int, float]]:
    """(keyframe, earlier keyframe, cosine) for each keyframe whose best match among the keyframes
    taken at least ``min_gap_s`` s before it scores >= ``min_score`` and, with ``verify`` and local
    features stored in the map, passes geometric verification as a loop closure would (without a
    camera model: the fundamental matrix): the revisits the map shows. Cosines alone mean nothing
    for a network with random weights (every pair scores ~0.998)."""
    if len(vmap) < 2:
        return []
    candidates = _candidate_edges(vmap, min_score, min_gap_s)
    if not verify or not vmap.manifest.local_features:
        return candidates
    from vpr_ros.config import VerificationConfig
    from vpr_ros.verification.verifier import Verifier

    verifier = Verifier(VerificationConfig(features=vmap.manifest.local_features))
    out = []
    for i, j, score in candidates:
        a, b = vmap.local_features(i), vmap.local_features(j)
        if a is not None and b is not None and verifier.verify(a, b).verified:
            out.append((i, j, score))
    return out


def edges_label(vmap: Any, min_score: float, min_gap_s: float, n: int) -> str:
    """What the edges are, for the legend and map_info."""
    how = ("geometrically verified" if vmap.manifest.local_features else
           "NOT verified: the map stores no local features, and cosines of untrained weights mean nothing")
    return f"revisits: cosine >= {min_score}, >= {min_gap_s:g} s apart, {how} ({n})"


def _candidate_edges(vmap: Any, min_score: float, min_gap_s: float) -> list[tuple[int, int, float]]:
    desc = vmap.descriptors()
    stamps = np.array([k.stamp for k in vmap.keyframes])
    edges = []
    for start in range(0, len(stamps), 256):  # 256 x N similarities at a time: bounded memory for any map
        sims = desc[start:start + 256] @ desc.T
        for r, i in enumerate(range(start, min(start + 256, len(stamps)))):
            older = np.flatnonzero(stamps <= stamps[i] - min_gap_s)
            if older.size:
                j = int(older[np.argmax(sims[r, older])])
                if sims[r, j] >= min_score:
                    edges.append((i, j, float(sims[r, j])))
    return edges


def plot_map(vmap: Any, path: Path, title: str, min_score: float = 0.8, min_gap_s: float = 30.0,
             thumbnails: int = 0) -> tuple[Path, int]:
    """Write the top-down plot of ``vmap`` to ``path``; returns (path, number of edges drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    poses = vmap.poses()
    origin = np.zeros(2)
    if len(poses) and np.abs(poses[:, :2]).max() > 1e4:  # UTM-sized coordinates: relative to the first keyframe
        origin = poses[0, :2].copy()
        poses = poses.copy()
        poses[:, :2] -= origin
    sessions = np.array([k.session for k in vmap.keyframes], int)
    fig, ax = plt.subplots(figsize=(9, 8))
    edges = revisit_edges(vmap, min_score, min_gap_s)
    for i, j, _ in edges:
        ax.plot(poses[[i, j], 0], poses[[i, j], 1], "-", color="tab:purple", lw=0.7, alpha=0.6, zorder=1)
    cmap = plt.get_cmap("tab10")
    for s in np.unique(sessions):
        sel = sessions == s
        ax.plot(poses[sel, 0], poses[sel, 1], "-o", ms=3, lw=1, color=cmap(int(s) % 10), zorder=2,
                label=f"session {s} ({int(sel.sum())} keyframes)")
    if len(poses):
        ax.plot(*poses[0, :2], "k^", ms=8, label="first keyframe", zorder=3)
    if edges:
        ax.plot([], [], "-", color="tab:purple", label=edges_label(vmap, min_score, min_gap_s, len(edges)))
    shown = 0
    if thumbnails:
        from matplotlib.offsetbox import AnnotationBbox, OffsetImage

        from vpr_ros.datasets import read_rgb

        for k in np.linspace(0, len(poses) - 1, min(thumbnails, len(poses))).astype(int):
            ref = Path(vmap.keyframes[k].image_ref) if vmap.keyframes[k].image_ref else None
            if ref is None or not ref.is_file():
                continue  # built from a bag: the image is not a file
            img = read_rgb(ref)
            zoom = 60.0 / max(img.shape[:2])
            ax.add_artist(AnnotationBbox(OffsetImage(img, zoom=zoom), poses[k, :2], frameon=True, pad=0.1, zorder=4))
            shown += 1
    shift = f" - {origin[0]:.1f}" if origin.any() else ""
    ax.set(xlabel=f"x{shift} (m, frame '{vmap.manifest.map_frame}')",
           ylabel=f"y{f' - {origin[1]:.1f}' if origin.any() else ''} (m)",
           title=title + (f"; {shown} thumbnails" if thumbnails else ""))
    ax.axis("equal")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    try:  # a full disk or a FIFO leaves no half-written PNG behind, and names the file
        with replaced_atomically(path, VprError) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path, len(edges)

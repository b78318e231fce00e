"""Diagnostic key/values the nodes share."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vpr_ros.mapping.map_store import VprMap


def map_cost_values(vmap: "VprMap") -> dict[str, str]:
    """/diagnostics values of what a map costs: index kind, memory (estimated: index and keyframe
    table) and disk, in total (MiB) and per keyframe (KiB)."""
    c = vmap.cost()
    return {"map_index": c["index"], "map_memory_mib": f"{c['memory_bytes'] / 2**20:.1f}",
            "map_memory_per_keyframe_kib": f"{c['memory_per_keyframe'] / 1024:.2f}",
            "map_disk_mib": f"{c['disk_bytes'] / 2**20:.1f}",
            "map_disk_per_keyframe_kib": f"{c['disk_per_keyframe'] / 1024:.2f}"}

"""Engine cache keys and files (no TensorRT needed: testable anywhere).

An engine depends on the exact ONNX file, the TensorRT version, the GPU (name and compute
capability), the precision, the optimisation profile and the builder settings; all of them form
the key, so a changed driver stack or GPU never
loads a stale engine. Each engine has a JSON sidecar describing it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class EngineSpec:
    """Everything an engine depends on; its hash is the cache key."""

    onnx_sha256: str
    tensorrt_version: str
    gpu: str
    precision: str
    input_size: int
    max_batch: int
    compute_capability: str = ""   # 'sm_87' (all Orin modules report the name 'Orin')
    builder: str = ""              # builder settings that change the engine (workspace, strongly typed)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:24]

    def paths(self, cache_dir: Path) -> tuple[Path, Path]:
        """(engine file, JSON sidecar) in ``<cache_dir>/engines``."""
        root = Path(cache_dir) / "engines"
        return root / f"{self.key()}.engine", root / f"{self.key()}.json"

    def sidecar(self, **extra: object) -> str:
        return json.dumps({**asdict(self), **extra}, indent=1)


def slug(text: str) -> str:
    """File-name-safe version of a GPU or version string."""
    return "".join(c if c.isalnum() else "_" for c in text)

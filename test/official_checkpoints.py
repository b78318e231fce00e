"""Random-weight checkpoints laid out exactly as the official code writes them.

The layouts (key names, shapes, dtypes) are facts recorded from the official repositories and
committed under ``fixtures/official_layouts/`` (see each file's ``source``). Nothing here is
derived from vpr_ros's own converters, so a converter that renames, drops, adds or reshapes a
key fails against these files.

Every tensor is drawn from a generator seeded by its key name (without any ``module.``
prefix), so the same key holds the same values in every layout and envelope: a file with the
cross-image encoder and one without share all other weights.
"""
from __future__ import annotations

import io
import json
import zipfile
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

FIXTURES = Path(__file__).parent / "fixtures"
LAYOUTS = FIXTURES / "official_layouts"
REFERENCES = FIXTURES / "official_references.json"


@lru_cache(maxsize=None)
def layout(name: str) -> dict:
    """The recorded layout ``name``: {'layout', 'source', 'envelope', 'keys': [[key, shape, dtype]]}."""
    return json.loads((LAYOUTS / f"{name}.json").read_text())


def layout_names() -> list[str]:
    return sorted(p.stem for p in LAYOUTS.glob("*.json"))


def shapes(name: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """key -> (shape, dtype name) of a recorded layout."""
    return {k: (tuple(s), t) for k, s, t in layout(name)["keys"]}


def _tensor(key: str, shape: tuple[int, ...], dtype: str) -> torch.Tensor:
    """Deterministic, well-scaled random values for one parameter, by its name."""
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    if dtype == "int64":  # BatchNorm num_batches_tracked
        return torch.tensor(1000, dtype=torch.int64).reshape(shape)
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "running_var":
        return 0.5 + torch.rand(shape, generator=g)
    if leaf == "running_mean":
        return 0.1 * torch.randn(shape, generator=g)
    if leaf in ("gamma", "lambda1"):  # layer scale
        return 0.05 + 0.15 * torch.rand(shape, generator=g)
    if leaf == "p":  # GeM exponent
        return 3.0 + 0.1 * torch.randn(shape, generator=g)
    if leaf in ("pos_embed", "position_embeddings"):
        return 0.5 * torch.randn(shape, generator=g)
    if len(shape) == 1 and leaf == "weight":  # LayerNorm / BatchNorm scale
        return 1.0 + 0.1 * torch.randn(shape, generator=g)
    if len(shape) >= 2 and leaf in ("weight", "in_proj_weight"):
        fan_in = int(np.prod(shape[1:]))
        return torch.randn(shape, generator=g) / fan_in ** 0.5
    return 0.02 * torch.randn(shape, generator=g)


def random_state(name: str, prefix: str = "") -> dict[str, torch.Tensor]:
    """A full random-weight state dict in layout ``name`` (keys prefixed with ``prefix``)."""
    return {prefix + k: _tensor(k, tuple(s), t) for k, s, t in layout(name)["keys"]}


def empty_state(name: str) -> dict[str, torch.Tensor]:
    """Zero tensors in layout ``name`` (fast: for key/shape checks only)."""
    dt = {"float32": torch.float32, "int64": torch.int64}
    return {k: torch.zeros(s, dtype=dt[t]) for k, s, t in layout(name)["keys"]}


def _training_extras() -> dict:
    """What util.save_checkpoint stores beside the weights in D2VPR distillation.py, CricaVPR
    train.py and SciceVPR train_scicevpr.py: epoch, optimizer state, recalls (numpy float64
    array from test.test), best R@5 (numpy float64 once improved), patience counter."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p], lr=1e-5)
    p.grad = torch.ones(3)
    opt.step()
    return {"epoch_num": 4, "optimizer_state_dict": opt.state_dict(),
            "recalls": np.array([91.7, 95.8, 96.8, 97.5]), "best_r5": np.float64(95.8),
            "not_improved_num": 0}


def _as_numpy1_pickle(path: Path) -> None:
    """Rewrite a torch.save zip so that its pickle names numpy as numpy 1.x did
    (``numpy.core.multiarray``): files released before numpy 2 carry those names."""
    with zipfile.ZipFile(path) as z:
        entries = [(i, z.read(i.filename)) for i in z.infolist()]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for info, data in entries:
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            z.writestr(info, data)
    path.write_bytes(buf.getvalue())


def write_file(name: str, path: Path, envelope: str | None = None) -> Path:
    """Write a random-weight checkpoint of layout ``name`` as the official code stores it.

    Envelopes: ``raw`` (``torch.save(state_dict)``: DINOv2 releases), ``safetensors``
    (Hugging Face ``model.safetensors``), ``model_state_dict`` (``{'model_state_dict': sd}``:
    D2-VPR finetune.py and the released files), ``training`` (util.save_checkpoint of a
    DataParallel model: ``module.`` keys plus optimizer state and numpy recalls) and
    ``training_numpy1`` (the same, pickled under numpy 1.x names).
    """
    envelope = envelope or layout(name)["envelope"]
    path.parent.mkdir(parents=True, exist_ok=True)
    if envelope == "safetensors":
        from safetensors.torch import save_file

        save_file(random_state(name), str(path))
    elif envelope == "raw":
        torch.save(random_state(name), path)
    elif envelope == "model_state_dict":
        torch.save({"model_state_dict": random_state(name)}, path)
    elif envelope in ("training", "training_numpy1"):
        torch.save({"model_state_dict": random_state(name, "module."), **_training_extras()}, path)
        if envelope == "training_numpy1":
            _as_numpy1_pickle(path)
    else:
        raise ValueError(f"unknown envelope {envelope!r}")
    return path


def probe_images(batch: int = 2, size: int = 224) -> torch.Tensor:
    """A deterministic, normalised-looking input batch [batch, 3, size, size] (no RNG)."""
    i = torch.arange(size, dtype=torch.float64).view(1, 1, size, 1)
    j = torch.arange(size, dtype=torch.float64).view(1, 1, 1, size)
    c = torch.arange(3, dtype=torch.float64).view(1, 3, 1, 1)
    b = torch.arange(batch, dtype=torch.float64).view(batch, 1, 1, 1)
    x = 1.5 * torch.sin(0.05 * i * (c + 1) + 0.07 * j + 0.9 * b) + 0.5 * torch.cos(0.013 * i * j / (1 + b))
    return x.float()


def sample(t: torch.Tensor, stride: int = 97) -> list[float]:
    """Every ``stride``-th value of a flattened output (what the references store)."""
    return [float(v) for v in t.detach().reshape(-1)[::stride]]


def reference(name: str) -> dict:
    """Output samples of the official code on :func:`write_file`'s weights and :func:`probe_images`."""
    return json.loads(REFERENCES.read_text())[name]

"""Reading weight files safely and loading them with a report of what did not fit.

Only tensor-safe formats: ``torch.load(weights_only=True)`` for .pth/.pt and
safetensors. Wrapper dicts (``model_state_dict``, ``state_dict``, ``model``) and a
DataParallel ``module.`` prefix are unwrapped. The training scripts of D2-VPR, CricaVPR and
SciceVPR store numpy arrays and scalars (``recalls``, ``best_r5``) beside the weights; those
numpy types are allowed to the weights-only unpickler under their numpy 1.x and 2.x names
(data only: no code can run).
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from vpr_ros.errors import CheckpointError

_WRAPPERS = ("model_state_dict", "state_dict", "model")
#: names listed per category in a load error before "... and N more".
log = logging.getLogger(__name__)
_LIST_AT_MOST = 8


def _numpy_safe_globals() -> list:
    """numpy's array/scalar/dtype reconstructors for ``torch.serialization.safe_globals``,
    under the module names numpy 2 (``numpy._core``) and numpy 1 (``numpy.core``) pickle them with."""
    import numpy as np
    from numpy._core import multiarray

    dtype_classes = [type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDG"]
    out: list = [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype, *dtype_classes]
    out += [(multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
            (multiarray.scalar, "numpy.core.multiarray.scalar")]
    return out


def _torch_load(p: Path) -> object:
    with torch.serialization.safe_globals(_numpy_safe_globals()):
        return torch.load(str(p), map_location="cpu", weights_only=True)


def _listed(names: list[str]) -> str:
    more = len(names) - _LIST_AT_MOST
    return ", ".join(names[:_LIST_AT_MOST]) + (f", ... and {more} more" if more > 0 else "")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a weights file into a flat name -> tensor dict (CPU)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: weights file not found")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(p), device="cpu")
        else:
            obj = _torch_load(p)
    except Exception as exc:  # corrupt/truncated/foreign files raise many kinds of errors
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        if "weights_only" in str(exc) or "Weights only load failed" in first:
            # torch's own advice (retry with weights_only=False) would run the file's pickled code
            raise CheckpointError(f"{p}: holds Python objects beyond tensors, which vpr_ros never unpickles; "
                                  "save its state_dict (or convert it to .safetensors) where it was made, or use "
                                  "vpr_ros_convert_weights") from None
        raise CheckpointError(f"{p}: cannot read weights ({type(exc).__name__}: {first})") from None
    for _ in range(2):
        if isinstance(obj, dict):
            inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
            if inner is not None:
                obj = inner
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{p}: does not contain a state dict of tensors")
    state = {str(k): v for k, v in obj.items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_strict(module: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Load ``state`` into ``module``; any missing, unexpected or mis-shaped key is an error.

    The CheckpointError names the offending keys (both shapes for mismatches), the first
    few of each kind with the counts.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                        for k in set(own) & set(state) if own[k].shape != state[k].shape)
    # a float parameter from an integer or bool tensor (or the reverse) is another file, not a cast
    wrong_type = sorted(f"{k}: file {str(state[k].dtype).replace('torch.', '')} vs model "
                        f"{str(own[k].dtype).replace('torch.', '')}" for k in set(own) & set(state)
                        if state[k].is_floating_point() != own[k].is_floating_point() or state[k].is_complex())
    nonfinite = sorted(k for k in set(own) & set(state) if state[k].is_floating_point()
                       and not bool(torch.isfinite(state[k]).all()))
    if missing or unexpected or mismatched or wrong_type or nonfinite:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_listed(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_listed(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {_listed(mismatched)}")
        if wrong_type:
            parts.append(f"dtype mismatches ({len(wrong_type)}): {_listed(wrong_type)}")
        if nonfinite:
            parts.append(f"NaN or infinite values in ({len(nonfinite)}): {_listed(nonfinite)}")
        raise CheckpointError(f"{source}: weights do not fit the model: " + " | ".join(parts))
    wide = sorted(k for k in set(own) & set(state) if state[k].is_floating_point() and state[k].dtype != own[k].dtype)
    if wide:
        log.info("%s: %d float tensors stored as %s are converted to %s (e.g. %s)", source, len(wide),
                 str(state[wide[0]].dtype).replace("torch.", ""), str(own[wide[0]].dtype).replace("torch.", ""),
                 wide[0])
    module.load_state_dict(dict(state), strict=True)


def state_sha256(module: nn.Module) -> str:
    """sha256 over names, shapes and bytes of a module's state dict (stable across runs)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


def save_safetensors(module: nn.Module, path: str | Path, metadata: Mapping[str, str] | None = None) -> None:
    """Save a module's state dict as safetensors."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path), metadata=dict(metadata or {}))

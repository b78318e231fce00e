"""Shared fixtures. ROS traffic is isolated: a private domain id per test run, localhost only."""
from __future__ import annotations

import importlib.util
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import pytest

# Must happen before rclpy is imported anywhere in this process or its children. Under
# pytest-xdist every worker gets its own domain (the run's base + the worker's number), so that
# node tests running at the same time in two workers never hear each other.
_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
# xdist workers are children of one controller: its pid seeds the base, so the workers of a run
# agree on it (and so get distinct domains) and share one export cache
_run = os.getppid() if _worker else os.getpid()
os.environ.setdefault("VPR_ROS_TEST_DOMAIN_BASE", str(random.Random(_run).randint(1, 90)))
if _worker.startswith("gw"):
    os.environ["ROS_DOMAIN_ID"] = str(int(os.environ["VPR_ROS_TEST_DOMAIN_BASE"]) + 1 + int(_worker[2:]))
    # the workers share the cores: one compute thread each (and in the processes they start),
    # or PyTorch / OpenMP thread pools of every worker fight over the same cores
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, "1")
else:
    os.environ.setdefault("ROS_DOMAIN_ID", os.environ["VPR_ROS_TEST_DOMAIN_BASE"])
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
# Exported ONNX graphs and engines go to a private cache of this run, not the user's ~/.cache
# (shared by the xdist workers of the run; writes into it are atomic).
# Made only when not given (processes the tests start inherit it: no empty folder per process).
if "VPR_ROS_CACHE" not in os.environ:
    if _worker:
        _cache = Path(tempfile.gettempdir()) / f"vpr_ros_test_cache_{_run}"
        _cache.mkdir(exist_ok=True)
        os.environ["VPR_ROS_CACHE"] = str(_cache)
    else:
        os.environ["VPR_ROS_CACHE"] = tempfile.mkdtemp(prefix="vpr_ros_test_cache_")

REPO = Path(__file__).resolve().parent.parent
CORRIDOR = REPO.parent / "shared" / "data" / "corridor"

#: How long a test waits for something that must happen (a message, a count, a state) before it
#: calls the run hung. Every such wait returns as soon as the condition holds, so a passing run
#: never waits this long; it is generous so that a busy or slow machine does not fail a test.
HANG_GUARD_S = 120.0

#: Tiny random-weight model used wherever the real ViT-S would only cost time.
TINY_MODEL = {"backbone": "vit_test", "input_size": 56, "seed": 3, "random_weights": True}


@pytest.fixture(scope="session")
def tiny_model_cfg():
    from vpr_ros.config import ModelConfig

    return ModelConfig(**TINY_MODEL)


#: whether PyTorch is installed (not on a robot that runs an exported graph: the Python 3.10 run)
HAVE_TORCH = importlib.util.find_spec("torch") is not None


@pytest.fixture(scope="session")
def tiny_backend(tiny_model_cfg):
    """The tiny model on PyTorch, or where there is no torch on ONNX Runtime from its export (made
    by a run that has torch, in the shared ``$VPR_ROS_CACHE``)."""
    if HAVE_TORCH:
        from vpr_ros.runtime.torch_backend import TorchBackend

        with TorchBackend(tiny_model_cfg) as b:
            yield b
        return
    from vpr_ros.runtime.factory import cached_onnx_path
    from vpr_ros.runtime.onnxruntime_backend import OnnxRuntimeBackend

    graph = cached_onnx_path(tiny_model_cfg)
    if not graph.is_file():
        pytest.skip(f"no torch, and no export of the tiny model in $VPR_ROS_CACHE ({graph})")
    with OnnxRuntimeBackend(graph) as b:
        yield b


@pytest.fixture(scope="session")
def traversals():
    from vpr_ros.demo.synthetic import make_traversals

    return make_traversals(n_places=24, seed=11)


@pytest.fixture()
def built_map(tmp_path, tiny_backend, traversals):
    """A saved map of the first synthetic traversal (every frame a keyframe); returns its dir."""
    from vpr_ros.config import KeyframeConfig
    from vpr_ros.mapping.builder import MapBuilder, frames_from_lists

    first = traversals[0]
    b = MapBuilder(tiny_backend, KeyframeConfig(min_distance=0.5), source="test")
    b.add_many(frames_from_lists(first.images, first.stamps, first.poses))
    return b.save(tmp_path / "map")


@pytest.fixture()
def rclpy_context():
    import rclpy

    rclpy.init()
    yield
    rclpy.try_shutdown()


def corridor_subset(root: Path, n: int) -> Path:
    """The corridor's first ``n`` reference and query images with their ground truth, a VPR layout
    (ref/, query/, ground_truth.csv) at ``root``."""
    import csv
    import shutil

    for part in ("ref", "query"):
        (root / part).mkdir(parents=True)
        for p in sorted((CORRIDOR / part).iterdir())[:n]:
            shutil.copy(p, root / part / p.name)
    rows = list(csv.reader((CORRIDOR / "ground_truth.csv").open()))
    with (root / "ground_truth.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(rows[0])
        for q, refs in rows[1:n + 1]:
            w.writerow([q, " ".join(r for r in refs.split() if int(r) < n)])
    return root


def random_image(h: int = 120, w: int = 160, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def pytest_collection_modifyitems(config, items):  # noqa: ANN001 - pytest hook
    """Tests marked ``torch`` run only where PyTorch is installed; tests marked ``gpu`` only where
    it sees a CUDA device."""
    if not HAVE_TORCH:
        no_torch = pytest.mark.skip(reason="needs torch (not installed: a robot running an exported graph)")
        for it in items:
            if it.get_closest_marker("torch"):
                it.add_marker(no_torch)
    gpu_items = [it for it in items if it.get_closest_marker("gpu")]
    if not gpu_items:
        return
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        skip = pytest.mark.skip(reason="needs a CUDA device (none here)")
        for it in gpu_items:
            it.add_marker(skip)

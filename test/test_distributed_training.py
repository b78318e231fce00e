"""Training under torchrun: two CPU processes (gloo) against one process on the same global batch.

Runs the real command line (``python -m torch.distributed.run --nproc_per_node 2 -m
vpr_ros.cli.finetune``) and resumes the two-process run in one process (batches loaded in the
training processes here; loader workers give the same batches: test_training.py). Tolerance: the two-process gradients are summed over ranks by all-reduce
(float32, another summation order), so losses agree to 1e-4 relative, not bit for bit.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="needs torch (a robot running an exported graph has none)")

from test_training import STUDENT, metrics, sets


@pytest.fixture(scope="module")
def gsv_small(tmp_path_factory) -> Path:
    from vpr_ros.demo.synthetic import place_views, write_gsv_cities

    root = tmp_path_factory.mktemp("gsv_dist")
    write_gsv_cities(root, place_views(40, 4, 64, seed=8), "Gamma")
    return root


def finetune(args: list[str], processes: int) -> None:
    """The finetune command: in this process for one process, under torchrun for several."""
    if processes == 1:
        from vpr_ros.cli.finetune import main

        assert main(args) == 0
        return
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*launcher, "-m", "vpr_ros.cli.finetune", *args], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_in_one(gsv_small, tmp_path):
    common = ["--no-progress", *sets(f"data.gsv_root={gsv_small}", "data.cities=[]", *STUDENT,
                                     "data.places_per_batch=8", "data.val_holdout=8", "data.loader_workers=0",
                                     "train.log_every=1", "train.val_every=2", "train.checkpoint_every=2",
                                     "optim.lr=1e-3", "optim.milestones=[]", "train.device=cpu", "train.dropout=0")]
    finetune([*common, "--run-dir", str(tmp_path / "one"), *sets("train.steps=4")], 1)
    # the 2-process run also reads a decoded-image cache (local rank 0 builds it, rank 1 waits)
    dec = tmp_path / "dec"
    finetune([*common, "--run-dir", str(tmp_path / "two"), *sets("train.steps=2", f"data.decoded_cache={dec}")], 2)
    assert len(list(dec.glob("images-*.npy"))) == 1 and not list(dec.glob(".*"))
    two = dict(metrics(tmp_path / "two", "train", "loss"))
    assert sorted(two) == [1, 2]  # rank 0 alone writes the log, once per step
    finetune(["--resume", str(tmp_path / "two"), "--no-progress", *sets("train.steps=4")], 1)
    one = dict(metrics(tmp_path / "one", "train", "loss"))
    resumed = dict(metrics(tmp_path / "two", "train", "loss"))
    assert sorted(one) == sorted(resumed) == [1, 2, 3, 4]
    a = np.array([one[s] for s in range(1, 5)])
    b = np.array([resumed[s] for s in range(1, 5)])
    assert not np.allclose(a[0], a[1:])  # the loss moves: the comparison below is not of constants
    np.testing.assert_allclose(b, a, rtol=1e-4)
    mined_one = dict(metrics(tmp_path / "one", "train", "mined_fraction"))
    mined_two = dict(metrics(tmp_path / "two", "train", "mined_fraction"))
    assert mined_two[1] == pytest.approx(mined_one[1])  # the miner saw the global batch on both ranks
    assert (tmp_path / "two" / "best" / "model.yaml").is_file()
    assert not list(tmp_path.glob("two*/checkpoints/*rank*"))


def _bn_rank(rank: int, world: int, store: str, x: "object", out: str) -> None:
    import torch
    import torch.distributed as dist

    from vpr_ros.training.distributed import CrossRankBatchNorm2d

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.manual_seed(0)
    bn = CrossRankBatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    share = x[rank * 2:(rank + 1) * 2].clone().requires_grad_(True)  # type: ignore[index]
    y = bn(share)
    (y * torch.arange(y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    grads = torch.stack([bn.weight.grad, bn.bias.grad])
    dist.all_reduce(grads)  # what DDP does (then divides by the world size)
    torch.save({"y": y.detach(), "gx": share.grad, "gw": grads / world, "rm": bn.running_mean, "rv": bn.running_var},
               f"{out}-{rank}.pt")
    dist.barrier()  # neither rank tears down while the other is still in a collective
    dist.destroy_process_group()


def test_cross_rank_batchnorm_equals_batchnorm_on_the_whole_batch(tmp_path):
    """Two gloo processes with half a batch each: outputs, input gradients, parameter gradients
    (as DDP averages them) and running statistics of BatchNorm2d on the whole batch."""
    import torch
    import torch.multiprocessing as mp

    torch.manual_seed(1)
    x = torch.randn(4, 3, 5, 5) * 2 + 1
    mp.spawn(_bn_rank, args=(2, str(tmp_path / "store"), x, str(tmp_path / "r")), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"r-{r}.pt", weights_only=True) for r in range(2)]
    torch.manual_seed(0)
    ref = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-0.5, 0.5)
    whole = x.clone().requires_grad_(True)
    y = ref(whole)
    (y * torch.cat([torch.arange(y.numel() // 2, dtype=y.dtype)] * 2).view_as(y)).sum().backward()
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([r["gx"] for r in ranks]), whole.grad, rtol=1e-4, atol=1e-5)
    # DDP averages over ranks; each rank's loss covers its half: the sum of the halves' losses
    torch.testing.assert_close(ranks[0]["gw"] * 2, torch.stack([ref.weight.grad, ref.bias.grad]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ranks[0]["rm"], ref.running_mean)
    torch.testing.assert_close(ranks[0]["rv"], ref.running_var)

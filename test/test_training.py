"""Training module: data readers, sampler, augmentation, and short real runs on CPU that must
show learning (fine-tuning raises validation Recall@1, distillation lowers the teacher error),
exact resume, PCA stored with the model and baked into the export."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
torch = pytest.importorskip("torch", reason="needs torch (a robot running an exported graph has none)")
import yaml

from conftest import TINY_MODEL
from vpr_ros.errors import CheckpointError, ConfigError, DatasetError

# The tiny student (vit_test, 56 px) and a teacher whose descriptor has the same size.
STUDENT = [f"model.{k}={v}" for k, v in TINY_MODEL.items()]
TEACHER = ["teacher.backbone=vit_test_wide", "teacher.input_size=56", "teacher.seed=9"]


def sets(*items: str) -> list[str]:
    out: list[str] = []
    for it in items:
        out += ["--set", it]
    return out


@pytest.fixture(scope="module")
def gsv(tmp_path_factory) -> Path:
    """A GSV-Cities tree of 48 procedural places x 4 views (64 px) in two cities."""
    from vpr_ros.demo.synthetic import place_views, write_gsv_cities

    root = tmp_path_factory.mktemp("gsv")
    views = place_views(48, 4, 64, seed=5)
    write_gsv_cities(root, views[:30], "Alpha")
    write_gsv_cities(root, views[30:], "Beta")
    return root


def run_common(gsv: Path) -> list[str]:
    return ["--no-progress", *sets(f"data.gsv_root={gsv}", "data.cities=[]", *STUDENT, "data.places_per_batch=8",
                                   "data.loader_threads=2", "data.loader_workers=0", "optim.milestones=[]")]


def metrics(run: Path, split: str, name: str) -> list[tuple[int, float]]:
    with open(run / "metrics.csv", newline="") as f:
        return [(int(r["step"]), float(r["value"])) for r in csv.DictReader(f)
                if r["split"] == split and r["metric"] == name]


# --- data ------------------------------------------------------------------------------------
def test_gsv_reader_groups_places_across_cities(gsv):
    from vpr_ros.training.gsv_cities import read_gsv_cities, split_places

    data = read_gsv_cities(gsv)
    assert data.num_places == 48 and len(data.paths) == 192
    assert all(len(m) == 4 for m in data.place_members())
    assert all(p.is_file() for p in data.paths)
    only_beta = read_gsv_cities(gsv, ["Beta"])
    assert only_beta.num_places == 18 and all("Beta" in p.name for p in only_beta.paths)
    train, val = split_places(data, 10, seed=0)
    assert val is not None and len(val.queries) == len(val.database) == 10
    assert train.num_places == 38 and not set(train.paths) & set(val.queries + val.database)


def _copy_city(gsv: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(gsv / "Images" / "Alpha", dst / "Images" / "Alpha")
    (dst / "Dataframes").mkdir()
    shutil.copy(gsv / "Dataframes" / "Alpha.csv", dst / "Dataframes" / "Alpha.csv")
    return dst / "Dataframes" / "Alpha.csv"


def _rewrite(csv_path: Path, fn) -> None:  # type: ignore[no-untyped-def]
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(fn(lines)) + "\n")


def test_malformed_gsv_fails_fast_naming_file_and_row(gsv, tmp_path):
    from vpr_ros.training.gsv_cities import read_gsv_cities

    with pytest.raises(DatasetError, match="no Dataframes"):
        read_gsv_cities(tmp_path)
    with pytest.raises(DatasetError, match=r"Gamma\.csv: city CSV not found"):
        read_gsv_cities(gsv, ["Gamma"])

    bad = _copy_city(gsv, tmp_path / "cols")
    _rewrite(bad, lambda ls: [ls[0].replace("panoid", "pano")] + ls[1:])
    with pytest.raises(DatasetError, match=r"Alpha\.csv: missing column\(s\) panoid"):
        read_gsv_cities(tmp_path / "cols")

    bad = _copy_city(gsv, tmp_path / "value")
    _rewrite(bad, lambda ls: ls[:3] + [ls[3].replace(",2012,", ",twenty,")] + ls[4:])
    with pytest.raises(DatasetError, match=r"Alpha\.csv: row 4: column 'year' is not a number: 'twenty'"):
        read_gsv_cities(tmp_path / "value")

    bad = _copy_city(gsv, tmp_path / "image")
    victim = sorted((tmp_path / "image" / "Images" / "Alpha").iterdir())[5]
    victim.unlink()
    with pytest.raises(DatasetError, match=rf"Alpha\.csv: row \d+: image not found: .*{victim.name}"):
        read_gsv_cities(tmp_path / "image")

    bad = _copy_city(gsv, tmp_path / "few")
    _rewrite(bad, lambda ls: ls[:2] + ls[4:])  # place 0 keeps 2 of its 4 rows
    with pytest.raises(DatasetError, match=r"Alpha\.csv: place 0 has 2 image\(s\) \(row\(s\) 2, 3\), fewer than "
                                           r"images_per_place=4"):
        read_gsv_cities(tmp_path / "few")


def test_malformed_dataset_from_the_command_exits_2(gsv, tmp_path, capsys):
    from vpr_ros.cli.finetune import main

    bad = _copy_city(gsv, tmp_path / "few")
    _rewrite(bad, lambda ls: ls[:2] + ls[4:])
    code = main(["--no-progress", "--run-dir", str(tmp_path / "run"),
                 *sets(f"data.gsv_root={tmp_path / 'few'}", "data.cities=[]", *STUDENT)])
    assert code == 2
    assert "place 0 has 2 image(s)" in capsys.readouterr().err


def test_place_batches_are_balanced_and_depend_only_on_step():
    from vpr_ros.training.sampler import PlaceBatches

    members = [np.arange(i * 5, i * 5 + 5) for i in range(10)]  # 10 places x 5 images
    plan = PlaceBatches(members, places_per_batch=3, images_per_place=4, seed=1)
    seen = []
    for step in range(plan.per_epoch):
        idx, labels = plan.batch(step)
        assert len(idx) == 12 and len(set(idx.tolist())) == 12
        assert all(np.bincount(labels, minlength=10)[np.unique(labels)] == 4)
        assert all(i // 5 == lab for i, lab in zip(idx, labels))
        seen += np.unique(labels).tolist()
    assert len(seen) == len(set(seen)) == 9  # each place at most once per epoch
    again = PlaceBatches(members, 3, 4, seed=1)
    assert np.array_equal(again.batch(4)[0], plan.batch(4)[0])  # a fresh plan (resume) agrees
    assert not np.array_equal(PlaceBatches(members, 3, 4, seed=2).batch(0)[0], plan.batch(0)[0])


def test_augmentation_ops_keep_shape_and_are_reproducible():
    from vpr_ros.training.augment import OPS, rand_augment

    img = np.random.default_rng(0).integers(0, 256, (56, 56, 3), dtype=np.uint8)
    for name, op in OPS.items():
        out = op(img, 0.5, np.random.default_rng(1))
        assert out.shape == img.shape and out.dtype == np.uint8, name
    a = rand_augment(img, np.random.default_rng([3, 4]), 3, 9)
    b = rand_augment(img, np.random.default_rng([3, 4]), 3, 9)
    assert np.array_equal(a, b) and not np.array_equal(a, img)
    assert np.array_equal(OPS["brightness"](img, 0.0, np.random.default_rng(0)), img)  # magnitude 0 = identity


# --- settings -----------------------------------------------------------------------------------
def test_settings_overrides_and_errors(tmp_path):
    from vpr_ros.cli.train_common import default_train_config
    from vpr_ros.training.settings import load_settings

    s = load_settings("finetune", default_train_config("finetune"), ["optim.lr=1e-3", "data.cities=[A, B]"])
    assert s.optim.lr == 1e-3 and s.data.cities == ["A", "B"] and s.optim.warmup_epochs == 3900
    assert s.train.ms_beta == 50.0 and s.train.miner_epsilon == 0.1 and s.optim.weight_decay == 1e-3
    again = tmp_path / "config.yaml"
    again.write_text(s.to_yaml())
    assert load_settings("finetune", again) == s
    assert load_settings("distill", default_train_config("distill")).teacher.arch == "cricavpr"
    joint = load_settings("joint", default_train_config("joint"))
    assert (joint.teacher.arch, joint.model.arch) == ("super_cricavpr", "scicevpr") and joint.train.student_from_teacher
    assert joint.teacher.backbone == joint.model.backbone == "vitb14" and joint.train.epochs == 1
    sup = load_settings("finetune", Path(default_train_config("finetune")).with_name("train_super_cricavpr.yaml"))
    assert (sup.model.arch, sup.train.epochs, sup.optim.optimizer) == ("super_cricavpr", 10, "adam")
    assert sup.data.places_per_batch == 72 and sup.model.backbone == "vitb14"
    bad = {"model.arch=d2vpr": "not 'scicevpr'", "teacher.arch=cricavpr": "not 'super_cricavpr'",
           "model.backbone=vits14": "differs from teacher.backbone", "teacher.input_size=322": "differs from",
           "model.weights=x.pth": "two places"}
    for override, why in bad.items():
        with pytest.raises(ConfigError, match=f"student_from_teacher: .*{why}"):
            load_settings("joint", default_train_config("joint"), [override])
    with pytest.raises(ConfigError, match="student_from_teacher: stage 'finetune' has no teacher"):
        load_settings("finetune", None, ["train.student_from_teacher=true"])
    with pytest.raises(ConfigError, match=r"\[optim\]: unknown key\(s\) lrr"):
        load_settings("finetune", None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_settings("finetune", None, ["lr=1"])
    with pytest.raises(ConfigError, match="written for stage 'finetune', not 'distill'"):
        load_settings("distill", again)
    assert load_settings("finetune", None, ["optim.milestones=[10]"]).optim.lr_factor(10) == pytest.approx(0.1)


def test_shipped_schedules_as_the_official_code_runs_them():
    """Official D2-VPR fine-tuning: warm-up of 3900 epochs x batches per epoch that replaces the
    decay at every step (peak ~6e-6 after 120 epochs); distillation: x0.5 every 3 epochs."""
    from vpr_ros.cli.train_common import default_train_config
    from vpr_ros.training.settings import load_settings

    per_epoch = 67_000 // 128  # GSV-Cities: about 67k places at 128 places per batch
    ft = load_settings("finetune", default_train_config("finetune"))
    last = 120 * per_epoch - 1
    peak = ft.optim.lr * ft.optim.lr_factor(last, per_epoch)
    assert peak == pytest.approx(2e-4 * 120 / 3900, rel=1e-3) and 5e-6 < peak < 7e-6
    assert ft.optim.lr_factor(11 * per_epoch, per_epoch) > ft.optim.lr_factor(9 * per_epoch, per_epoch)  # no decay
    assert ft.data.augment_magnitude == 15 and ft.data.batch_order == "citywise" and ft.train.epochs == 120
    rec = load_settings("finetune", default_train_config("finetune_recommended"))
    assert rec.optim.lr_factor(3899, per_epoch) == pytest.approx(1.0)
    assert rec.optim.lr_factor(10 * per_epoch, per_epoch) == pytest.approx(0.1)
    assert rec.optim.lr_factor(30 * per_epoch, per_epoch) == pytest.approx(1e-3)
    d = load_settings("distill", default_train_config("distill"))
    assert d.train.distill_reduction == "mean" and d.train.epochs == 20
    assert [d.optim.lr_factor(e * 100, 100) for e in (0, 2, 3, 6, 19)] == pytest.approx([1, 1, 0.5, 0.25, 2 ** -6])
    assert load_settings("distill", default_train_config("distill_recommended")).train.distill_reduction == "sum"
    with pytest.raises(ConfigError, match="set one of them"):
        load_settings("finetune", None, ["train.steps=0"])


def test_citywise_batches_stay_within_a_city_and_cover_every_place_once():
    from vpr_ros.training.sampler import PlaceBatches

    city = np.repeat([0, 1, 2], [16, 8, 24])  # 48 places in 3 cities
    members = [np.arange(4 * p, 4 * p + 4) for p in range(48)]
    plan = PlaceBatches(members, 8, 4, seed=1, place_city=city, order="citywise")
    for epoch in (0, 1):
        places = [np.unique(plan.batch(epoch * 6 + i)[1]) for i in range(6)]
        assert sorted(np.concatenate(places).tolist()) == list(range(48))
        assert all(len(set(city[p].tolist())) == 1 for p in places)  # city sizes are multiples of 8
        assert [int(city[p[0]]) for p in places] == [0, 0, 1, 2, 2, 2]  # cities in reading order
    assert not np.array_equal(plan.batch(0)[1], plan.batch(6)[1])  # reshuffled within the city
    shuffled = PlaceBatches(members, 8, 4, seed=1, place_city=city, order="shuffled")
    assert any(len(set(city[np.unique(shuffled.batch(i)[1])].tolist())) > 1 for i in range(6))
    with pytest.raises(DatasetError, match="city of every place"):
        PlaceBatches(members, 8, 4, seed=1, order="citywise")


def test_distillation_reductions():
    from vpr_ros.training.objectives import distillation_mse

    s, t = torch.ones(4, 10), torch.zeros(4, 10)
    assert distillation_mse(s, t, "sum").item() == pytest.approx(10.0)  # SciceVPR: summed / batch
    assert distillation_mse(s, t, "mean").item() == pytest.approx(1.0)  # D2-VPR: F.mse_loss


def test_finetuning_needs_a_validation_split(gsv, tmp_path, capsys):
    from vpr_ros.cli.finetune import main

    code = main([*run_common(gsv), "--run-dir", str(tmp_path / "r"), *sets("data.val_holdout=0")])
    assert code == 2 and "needs validation places" in capsys.readouterr().err


# --- learning -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finetune_run(gsv, tmp_path_factory) -> Path:
    from vpr_ros.cli.finetune import main

    run = tmp_path_factory.mktemp("ft") / "run"
    code = main([*run_common(gsv), "--run-dir", str(run),
                 *sets("data.val_holdout=16", "train.steps=60", "train.val_every=20", "train.checkpoint_every=30",
                       "optim.warmup_steps=5", "optim.lr=1e-3", "train.log_every=5")])
    assert code == 0
    return run


@pytest.mark.slow
def test_finetuning_raises_validation_recall(finetune_run):
    r1 = metrics(finetune_run, "val", "recall@1")
    assert r1[0][0] == 0  # the untrained model is measured first
    best = max(v for _, v in r1)
    assert best >= r1[0][1] + 0.3 and best >= 0.7, r1
    loss = metrics(finetune_run, "train", "loss_ms")
    assert np.mean([v for _, v in loss[-3:]]) < np.mean([v for _, v in loss[:2]]) - 0.1, loss
    assert metrics(finetune_run, "train", "images_per_s")[0][1] > 0
    chosen = json.loads((finetune_run / "best" / "metrics.json").read_text())
    assert chosen["recall@1"] == pytest.approx(best, abs=1e-4)
    assert chosen["step"] == min(s for s, v in r1 if v == pytest.approx(best, abs=1e-9))


def test_run_directory_records_everything(finetune_run):
    from vpr_ros.config import model_config_from
    from vpr_ros.training.settings import load_settings

    settings = load_settings("finetune", finetune_run / "config.yaml")
    assert settings.train.steps == 60 and settings.model.backbone == "vit_test"
    argv = json.loads((finetune_run / "argv.json").read_text())
    assert "train.steps=60" in argv[0]["argv"]
    assert (finetune_run / "git.txt").read_text().strip()
    assert (finetune_run / "metrics.png").stat().st_size > 1000
    assert sorted(p.name for p in (finetune_run / "checkpoints").iterdir()) == ["step-0000030", "step-0000060"]
    cfg = model_config_from(str(finetune_run / "best" / "model.yaml"))
    assert Path(cfg.weights) == finetune_run / "best" / "model.safetensors"
    state = torch.load(finetune_run / "checkpoints" / "step-0000060" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 60 and state["optimizer"]["state"]


def test_finetuning_freezes_early_blocks_and_their_batchnorm(finetune_run):
    """Blocks 1-4 of 6 (3/4) with their adapters - BatchNorm statistics included - are unchanged."""
    from vpr_ros.config import ModelConfig
    from vpr_ros.model.checkpoints import read_state_dict
    from vpr_ros.model.factory import create

    start = create(ModelConfig(**TINY_MODEL)).state_dict()
    end = read_state_dict(finetune_run / "checkpoints" / "step-0000060" / "model.safetensors")
    frozen = [k for k in start if k.startswith(tuple(f"backbone.blocks.{i}." for i in range(4)))]
    assert any("running_mean" in k for k in frozen)
    assert all(torch.equal(start[k], end[k]) for k in frozen)
    trained = [k for k in start if k.startswith("backbone.blocks.5.") and k.endswith("weight")]
    assert any(not torch.equal(start[k], end[k]) for k in trained)
    assert not torch.equal(start["drm.proj.weight"], end["drm.proj.weight"])


def test_resume_continues_exactly(gsv, tmp_path):
    from vpr_ros.cli.finetune import main

    common = [*run_common(gsv), *sets("data.val_holdout=16", "train.val_every=4", "train.checkpoint_every=4",
                                      "optim.warmup_steps=3", "optim.milestones=[5]", "optim.lr=1e-3",
                                      "train.log_every=1")]
    assert main([*common, "--run-dir", str(tmp_path / "straight"), *sets("train.steps=7")]) == 0
    assert main([*common, "--run-dir", str(tmp_path / "split"), *sets("train.steps=4")]) == 0
    assert main(["--resume", str(tmp_path / "split"), "--no-progress", *sets("train.steps=7")]) == 0
    straight = metrics(tmp_path / "straight", "train", "loss")
    split = metrics(tmp_path / "split", "train", "loss")
    assert [s for s, _ in split] == list(range(1, 8))
    assert split == straight  # steps 5..7 after the resume equal the uninterrupted run
    assert len(json.loads((tmp_path / "split" / "argv.json").read_text())) == 2


def test_resume_refuses_a_broken_checkpoint(gsv, tmp_path, capsys):
    from vpr_ros.cli.finetune import main

    run = tmp_path / "r"
    assert main([*run_common(gsv), "--run-dir", str(run),
                 *sets("data.val_holdout=16", "train.steps=2", "train.val_every=2")]) == 0
    state = run / "checkpoints" / "step-0000002" / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    assert main(["--resume", str(run), "--no-progress", *sets("train.steps=4")]) == 2
    assert "trainer_state.pt: cannot read trainer state" in capsys.readouterr().err


@pytest.mark.slow
def test_distillation_lowers_teacher_error_with_a_disk_cache(gsv, tmp_path):
    """Image-folder distillation; the teacher runs once into the cache and is then not used."""
    from vpr_ros.cli.distill import main
    from vpr_ros.training.teacher import CacheKey, TeacherCache

    cache = tmp_path / "teacher_cache"
    args = ["--no-progress", *sets(f"data.image_folders=[{gsv / 'Images'}]", "data.batch_size=16", *STUDENT,
                                   *TEACHER, "data.val_holdout=24", "train.steps=50", "train.val_every=25",
                                   "train.checkpoint_every=50", "optim.lr=1e-3", f"train.teacher_cache={cache}",
                                   "data.loader_threads=2", "data.loader_workers=0")]
    assert main([*args, "--run-dir", str(tmp_path / "d1")]) == 0
    mse = metrics(tmp_path / "d1", "val", "val_distill_mse")
    assert mse[-1][1] < 0.4 * mse[0][1], mse
    cos = metrics(tmp_path / "d1", "val", "val_teacher_cosine")
    assert cos[-1][1] > 0.7 > cos[0][1] + 0.3
    npy = next(cache.glob("teacher-*.npy"))
    arr = np.load(npy, allow_pickle=False)
    assert arr.shape == (192 - 24, 1792) and arr.dtype == np.float16
    stamp = npy.stat().st_mtime_ns
    assert main([*args, "--run-dir", str(tmp_path / "d2"), *sets("train.steps=2", "train.val_every=2")]) == 0
    assert npy.stat().st_mtime_ns == stamp  # reused, not recomputed
    meta = npy.with_suffix(".json")
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "batch": 7}))
    assert main([*args, "--run-dir", str(tmp_path / "d3")]) == 2
    npy.write_bytes(npy.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="teacher cache"):
        TeacherCache(npy, CacheKey("teacher", 56, 32, "images", 168))


def test_distillation_online_teacher_matches_the_loss(gsv, tmp_path):
    """Without a cache the teacher runs on each (augmented) batch; the logged loss is the MSE."""
    from vpr_ros.training.batches import StepBatches, to_model_input
    from vpr_ros.training.objectives import distillation_mse
    from vpr_ros.training.run_dir import RunDir
    from vpr_ros.training.settings import load_settings
    from vpr_ros.training.trainer import Trainer

    s = load_settings("distill", None, [f"data.gsv_root={gsv}", *STUDENT, *TEACHER, "data.val_holdout=8",
                                        "data.places_per_batch=4", "train.steps=1", "data.loader_threads=1",
                                        "data.loader_workers=0"])
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    t = Trainer(s, run, progress=False)
    assert t.teacher is not None and t.cache is None and t.source.augment
    _, images, labels, idx = StepBatches(t.source, t.data.plan, t.share)[0]
    x = to_model_input(images, t.device)
    torch.manual_seed(5)  # the student's dropout draws the same masks in both forward passes
    with torch.no_grad():
        expected = distillation_mse(t.model.train()(x), t.teacher(x)).item()
    torch.manual_seed(5)
    t.train_step(x, labels, idx)
    assert t.flush_window()["loss_distill"] == pytest.approx(expected, rel=1e-5)


def test_joint_objective_combines_both_losses(gsv, tmp_path):
    """SciceVPR student distilled from a CricaVPR teacher (the SciceVPR-style variant, not the
    official start from Super-CricaVPR), under bf16 autocast (the CPU stand-in for CUDA AMP)."""
    from vpr_ros.cli.train_joint import main

    run = tmp_path / "j"
    assert main([*run_common(gsv), "--run-dir", str(run),
                 *sets("model.arch=scicevpr", "teacher.arch=cricavpr", "train.student_from_teacher=false", *TEACHER,
                       "data.val_holdout=12", "train.steps=6", "train.val_every=6",
                       "train.log_every=1", "train.distill_weight=0.5", "train.amp=bf16")]) == 0
    total, ms, dist = (dict(metrics(run, "train", n)) for n in ("loss", "loss_ms", "loss_distill"))
    assert len(total) == 6
    for step in total:
        assert total[step] == pytest.approx(ms[step] + 0.5 * dist[step], rel=1e-4)


def test_joint_as_scicevpr_runs_it_starts_from_the_super_cricavpr_teacher(gsv, tmp_path):
    """SciceVPR's two stages chained: Super-CricaVPR fine-tuned (backbone frozen), then the joint
    stage with train.student_from_teacher: the student's backbone and conv are that teacher's and
    stay frozen; its token mixers and encoder train against MS + distillation from it."""
    from safetensors.torch import load_file

    from vpr_ros.cli.finetune import main as finetune
    from vpr_ros.cli.train_joint import main
    from vpr_ros.config import ModelConfig
    from vpr_ros.model.factory import create

    tiny = dict(backbone="vit_test", input_size=56)
    first = tmp_path / "super"
    assert finetune([*run_common(gsv), "--run-dir", str(first), *sets("model.arch=super_cricavpr", "model.seed=9",
                     "data.val_holdout=12", "train.steps=2", "train.val_every=2", "optim.lr=1e-3")]) == 0
    weights = first / "checkpoints" / "step-0000002" / "model.safetensors"  # the last (best may be step 0)
    want = load_file(str(weights))
    start = create(ModelConfig(arch="super_cricavpr", seed=9, **tiny)).state_dict()
    assert all(torch.equal(want[k], start[k]) for k in want if k.startswith("backbone."))  # frozen
    assert not torch.equal(want["conv.weight"], start["conv.weight"])  # trained
    fresh = create(ModelConfig(arch="scicevpr", seed=3, **tiny)).state_dict()
    run = tmp_path / "j"
    assert main([*run_common(gsv), "--run-dir", str(run),
                 *sets("model.arch=scicevpr", "teacher.arch=super_cricavpr", "teacher.backbone=vit_test",
                       "teacher.input_size=56", f"teacher.weights={weights}", "train.student_from_teacher=true",
                       "data.val_holdout=12", "train.steps=4", "train.val_every=4", "train.log_every=1",
                       "optim.lr=1e-3")]) == 0
    got = load_file(str(run / "checkpoints" / "step-0000004" / "model.safetensors"))
    copied = [k for k in got if k.startswith(("backbone.", "conv."))]
    assert len(copied) > 20 and all(torch.equal(got[k], want[k]) for k in copied)
    assert not torch.equal(fresh["conv.weight"], want["conv.weight"])  # so the copy is visible
    trained = [k for k in got if k.startswith(("tokenmix.", "encoder."))]
    assert sum(not torch.equal(got[k], fresh[k]) for k in trained) >= len(trained) // 2
    assert len(metrics(run, "train", "loss_distill")) == 4 and len(metrics(run, "train", "loss_ms")) == 4


# --- PCA ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_pca_is_fitted_stored_with_the_model_and_exported(gsv, finetune_run, tmp_path):
    import shutil

    import onnxruntime as ort

    from vpr_ros.cli.fit_pca import main
    from vpr_ros.config import model_config_from
    from vpr_ros.export.onnx import export_onnx
    from vpr_ros.pca import Pca
    from vpr_ros.runtime.preprocess import preprocess_batch
    from vpr_ros.runtime.torch_backend import TorchBackend

    model_dir = tmp_path / "best"
    shutil.copytree(finetune_run / "best", model_dir)
    yaml_path = model_dir / "model.yaml"
    assert main(["--model-config", str(yaml_path), "--no-progress",
                 *sets(f"data.gsv_root={gsv}", "pca.dim=32", "pca.max_images=100")]) == 0
    assert yaml.safe_load(yaml_path.read_text())["model"]["pca"] == "pca.npz"
    pca = Pca.load(model_dir / "pca.npz")
    assert pca.out_dim == 32 and pca.mean.shape == (1792,)
    cfg = model_config_from(str(yaml_path))
    info = export_onnx(cfg, tmp_path / "m.onnx")
    imgs = [np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8) for i in range(3)]
    x = preprocess_batch(imgs, 56)
    sess = ort.InferenceSession(str(info.path), providers=["CPUExecutionProvider"])
    onnx_out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert onnx_out.shape == (3, 32)
    assert np.allclose(np.linalg.norm(onnx_out, axis=1), 1.0, atol=1e-5)
    from dataclasses import replace

    with TorchBackend(replace(cfg, pca="")) as raw:
        assert np.abs(onnx_out - pca.apply(raw.infer(x))).max() < 1e-4
    with pytest.raises(SystemExit):
        main(["--bogus"])
    assert main(["--model-config", str(yaml_path), "--no-progress",
                 *sets(f"data.gsv_root={gsv}", "pca.dim=500", "pca.max_images=100")]) == 2


def test_worker_processes_give_the_in_process_batches_and_normalise_like_preprocess(gsv):
    """A batch is a function of (seed, step, slot): one loader worker process and the training
    process give the same uint8 images; normalising them on the device equals ``preprocess``."""
    from vpr_ros.runtime.preprocess import preprocess
    from vpr_ros.training.batches import BatchSource, StepBatches, step_loader, to_model_input
    from vpr_ros.training.gsv_cities import read_gsv_cities
    from vpr_ros.training.sampler import PlaceBatches

    data = read_gsv_cities(gsv)
    plan = PlaceBatches(data.place_members(), 4, 4, seed=2, place_city=data.place_city, order="citywise")
    source = BatchSource(data.paths, 56, seed=2, augment=True)
    share = slice(8, 16)  # the second of two ranks
    here = [StepBatches(source, plan, share)[s] for s in (3, 4)]
    there = list(step_loader(StepBatches(source, plan, share), 3, 5, workers=1, pin_memory=False))
    for (s1, x1, l1, i1), (s2, x2, l2, i2) in zip(here, there):
        assert s1 == s2 and torch.equal(x1, x2) and torch.equal(l1, l2) and np.array_equal(i1, i2)
    whole = StepBatches(source, plan)[3][1]
    assert torch.equal(whole[8:16], here[0][1])  # a rank's share = those slots of the global batch
    img = here[0][1][0].numpy()
    np.testing.assert_allclose(to_model_input(here[0][1][:1], torch.device("cpu"))[0].numpy(),
                               preprocess(img, 56), atol=1e-5)


def test_decoded_cache_gives_the_decoded_batches_and_refuses_a_stale_or_broken_file(gsv, tmp_path, monkeypatch):
    """Images decoded once (built by a worker process) give bit-identical augmented batches, in
    this process and in a worker that maps the file itself; the file is reused, never rebuilt,
    and a truncated file, an edited sidecar or a full disk is a clear error."""
    import shutil

    from vpr_ros.training.batches import BatchSource, StepBatches, step_loader
    from vpr_ros.training.decoded_cache import open_or_build
    from vpr_ros.training.gsv_cities import read_gsv_cities
    from vpr_ros.training.sampler import PlaceBatches

    data = read_gsv_cities(gsv)
    plan = PlaceBatches(data.place_members(), 4, 4, seed=2)
    npy = open_or_build(tmp_path / "dec", data.paths, 56, workers=1, progress=False)
    assert np.load(npy, mmap_mode="r").shape == (len(data.paths), 56, 56, 3)
    decoding = StepBatches(BatchSource(data.paths, 56, seed=2, augment=True), plan)
    mapped = StepBatches(BatchSource(data.paths, 56, seed=2, augment=True, decoded=npy), plan)
    in_worker = list(step_loader(mapped, 0, 3, workers=1, pin_memory=False))
    for step in range(3):
        assert torch.equal(decoding[step][1], mapped[step][1]) and torch.equal(decoding[step][1], in_worker[step][1])
    stamp = npy.stat().st_mtime_ns
    assert open_or_build(tmp_path / "dec", data.paths, 56, progress=False) == npy and npy.stat().st_mtime_ns == stamp
    assert open_or_build(tmp_path / "dec", data.paths, 28, progress=False) != npy  # another size: another file
    meta = npy.with_suffix(".json")
    good = meta.read_text()
    meta.write_text(good.replace('"count"', '"count_"'))
    with pytest.raises(DatasetError, match="decoded-image cache was made from different inputs"):
        open_or_build(tmp_path / "dec", data.paths, 56, progress=False)
    meta.write_text(good)
    npy.write_bytes(npy.read_bytes()[:5000])
    with pytest.raises(DatasetError, match=r"decoded-image cache .*delete it to rebuild"):
        open_or_build(tmp_path / "dec", data.paths, 56, progress=False)
    # a disk too small for the cache cannot be made here: the free-space query is the boundary
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(ConfigError, match=r"need 0\.0018\d GB, .* has 1e-06 GB free"):
        open_or_build(tmp_path / "other", data.paths, 56, progress=False)
    assert not list((tmp_path / "other").iterdir())


def test_training_with_the_decoded_cache_follows_the_same_curve(gsv, tmp_path):
    """data.decoded_cache changes where pixels come from, not what is trained on."""
    from vpr_ros.cli.finetune import main

    args = [*run_common(gsv), *sets("data.val_holdout=8", "train.steps=3", "train.val_every=3", "train.log_every=1")]
    assert main([*args, "--run-dir", str(tmp_path / "a")]) == 0
    assert main([*args, "--run-dir", str(tmp_path / "b"), *sets(f"data.decoded_cache={tmp_path / 'dec'}")]) == 0
    assert list((tmp_path / "dec").glob("images-*.npy"))
    a, b = metrics(tmp_path / "a", "train", "loss"), metrics(tmp_path / "b", "train", "loss")
    assert len(a) == 3 and a == b

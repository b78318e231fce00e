"""Checkpoints in the official layouts load through the documented configs and give the official
outputs; our converters write files the official code loads strictly.

Every file here is generated from the layouts recorded from the official repositories
(``fixtures/official_layouts/*.json``), never from our own inverse converters. The reference
outputs (``fixtures/official_references.json``) were computed by running the official code of
DINOv2, Hugging Face transformers, D2-VPR, CricaVPR and SciceVPR (its student and its
Super-CricaVPR teacher) on exactly these files (see each
entry's ``note``); the position-embedding references come from DINOv2's own resize method.
"""
from __future__ import annotations

import json

import pytest
torch = pytest.importorskip("torch", reason="needs torch (a robot running an exported graph has none)")

from official_checkpoints import (FIXTURES, empty_state, layout, layout_names, probe_images, reference,
                                  shapes, write_file)
from vpr_ros.config import ModelConfig, model_config_from
from vpr_ros.errors import CheckpointError, ConfigError
from vpr_ros.model.backbone import VIT_PRESETS, interpolate_pos_embed
from vpr_ros.model.checkpoints import read_state_dict
from vpr_ros.model.convert import detect_layout
from vpr_ros.model.factory import build_model, create, load_state
from vpr_ros.model.weights_out import official_state, write_weights

MODELS = FIXTURES.parent.parent / "models"


def cfg_of(model_yaml: str, **over) -> ModelConfig:
    """A documented config from models/ with overrides."""
    return model_config_from(str(MODELS / model_yaml), **over)


#: recorded layout -> a config it loads into (documented configs where one exists)
LOADS_INTO = {
    "dinov2_vits14": ModelConfig(arch="scicevpr", backbone="vits14"),
    "dinov2_vitb14": ModelConfig(arch="cricavpr", backbone="vitb14"),
    "dinov2_vits14_reg4": ModelConfig(arch="scicevpr", backbone="vits14_reg4"),
    "dinov2_vitb14_reg4": ModelConfig(arch="scicevpr", backbone="vitb14_reg4"),
    "hf_dinov2_small": ModelConfig(arch="scicevpr", backbone="vits14"),
    "hf_dinov2_with_registers_small": ModelConfig(arch="scicevpr", backbone="vits14_reg4"),
    "d2vpr_no_encoder": "d2vpr_official.yaml",
    "d2vpr_encoder": "d2vpr_official_encoder.yaml",
    "cricavpr": "cricavpr_teacher.yaml",
    "scicevpr": "scicevpr_official.yaml",
    "super_cricavpr": "super_cricavpr_teacher.yaml",
}


def _cfg(target) -> ModelConfig:
    return cfg_of(target) if isinstance(target, str) else target


def test_every_recorded_layout_is_covered():
    assert sorted(LOADS_INTO) == layout_names()
    for name in layout_names():
        lay = layout(name)
        assert lay["layout"] == name and lay["keys"] and lay["source"]


# ------------------------------------------------------------------ key structure, both ways
@pytest.mark.parametrize("name", sorted(LOADS_INTO))
def test_each_layout_loads_strictly_into_its_config(name):
    """Every key of the official layout is used (or reported unused on purpose), none is missing."""
    model = create(_cfg(LOADS_INTO[name]))
    unused = load_state(model, empty_state(name), f"{name}.pth")
    expected_unused = {"dinov2_vits14": [], "hf_dinov2_small": []}.get(name, [])
    assert unused == expected_unused


def test_dinov2_file_into_the_d2vpr_student_reports_the_unused_final_norm():
    model = create(cfg_of("d2vpr_official.yaml"))
    assert load_state(model, empty_state("dinov2_vits14"), "dinov2_vits14_pretrain.pth") == ["norm.weight", "norm.bias"]


def test_d2vpr_encoder_release_into_the_no_encoder_config_reports_the_encoder_unused():
    model = create(cfg_of("d2vpr_official.yaml"))
    unused = load_state(model, empty_state("d2vpr_encoder"), "distillation.pth")
    assert unused and all(k.startswith("encoder.layers.") for k in unused) and len(unused) == 24


#: (config, layout written) -> the recorded official layout the file must match exactly
WRITES = [
    ("d2vpr_official.yaml", "d2vpr", "d2vpr_no_encoder"),
    ("d2vpr_official_encoder.yaml", "d2vpr", "d2vpr_encoder"),
    ("cricavpr_teacher.yaml", "cricavpr", "cricavpr"),
    ("scicevpr_official.yaml", "scicevpr", "scicevpr"),
    ("super_cricavpr_teacher.yaml", "super_cricavpr", "super_cricavpr"),
    (ModelConfig(arch="scicevpr", backbone="vits14"), "dinov2", "dinov2_vits14"),
    (ModelConfig(arch="scicevpr", backbone="vitb14"), "dinov2", "dinov2_vitb14"),
    (ModelConfig(arch="scicevpr", backbone="vits14_reg4"), "dinov2", "dinov2_vits14_reg4"),
    (ModelConfig(arch="scicevpr", backbone="vitb14_reg4"), "dinov2", "dinov2_vitb14_reg4"),
    (ModelConfig(arch="scicevpr", backbone="vits14"), "hf_dinov2", "hf_dinov2_small"),
    (ModelConfig(arch="scicevpr", backbone="vits14_reg4"), "hf_dinov2", "hf_dinov2_with_registers_small"),
]


@pytest.mark.parametrize("target,out_layout,official", WRITES, ids=[w[2] for w in WRITES])
def test_converters_out_match_the_official_layout_exactly(target, out_layout, official):
    """No key missing, none extra, none reshaped, same dtypes: the official load_state_dict
    (strict) accepts the file."""
    state = official_state(create(_cfg(target)), out_layout)
    got = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()}
    want = shapes(official)
    assert sorted(set(want) - set(got)) == [] and sorted(set(got) - set(want)) == []
    assert {k for k in want if want[k] != got[k]} == set()


def test_writing_a_layout_that_cannot_hold_the_model_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no per-image"):
        official_state(create(ModelConfig(backbone="vit_test", input_size=56)), "d2vpr")
    with pytest.raises(CheckpointError, match="no adapters"):
        official_state(create(ModelConfig(arch="cricavpr", backbone="vit_test_wide", input_size=56)), "dinov2")
    with pytest.raises(CheckpointError, match="does not hold a 'scicevpr'"):
        write_weights(create(ModelConfig(arch="scicevpr", backbone="vit_test", input_size=56)), "d2vpr",
                      tmp_path / "x.pth")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ numbers against the official code
def _backbone_patch_tokens(model, x):
    bb = model.backbone
    with torch.no_grad():
        return bb.apply_norm(bb(x)[-1])[:, bb.num_prefix_tokens:]


def _assert_matches(out: torch.Tensor, name: str, atol: float = 2e-5) -> None:
    ref = reference(name)
    assert list(out.shape) == ref["shape"]
    got = out.reshape(-1)[::ref["stride"]]
    want = torch.tensor(ref["values"])
    err = (got - want).abs().max().item()
    assert err <= atol + 1e-4 * want.abs().max().item(), f"{name}: max |diff| {err:.2e} against the official code"
    assert abs(out.abs().sum().item() - ref["l1"]) <= 1e-4 * ref["l1"]


@pytest.mark.parametrize("name", ["dinov2_vits14", "dinov2_vits14_reg4"])
def test_official_dinov2_files_give_the_official_patch_tokens(tmp_path, name):
    path = write_file(name, tmp_path / f"{name}_pretrain.pth")
    model, _ = build_model(ModelConfig(**{**LOADS_INTO[name].__dict__, "weights": str(path)}))
    _assert_matches(_backbone_patch_tokens(model, probe_images(2, 224)), name)


@pytest.mark.parametrize("name", ["hf_dinov2_small", "hf_dinov2_with_registers_small"])
def test_hugging_face_files_give_the_transformers_patch_tokens(tmp_path, name):
    """At 518 px (the position embedding's own grid) DINOv2 and transformers compute the same
    function, so this pins the key conversion (q/k/v order, layer scales, registers)."""
    path = write_file(name, tmp_path / name / "model.safetensors")
    cfg = ModelConfig(**{**LOADS_INTO[name].__dict__, "weights": str(path), "input_size": 518})
    model, _ = build_model(cfg)
    _assert_matches(_backbone_patch_tokens(model, probe_images(1, 518)), name)


@pytest.mark.parametrize("envelope", ["model_state_dict", "training", "training_numpy1"])
def test_released_d2vpr_gives_the_official_descriptor(tmp_path, envelope):
    """The released file ({'model_state_dict'}), distillation.py's output (DataParallel module.
    prefix, optimizer state, numpy recalls) and the same written under numpy 1.x."""
    path = write_file("d2vpr_no_encoder", tmp_path / "d2vpr.pth", envelope)
    model, info = build_model(cfg_of("d2vpr_official.yaml", weights=str(path)))
    with torch.no_grad():
        _assert_matches(model(probe_images(2, 224)), "d2vpr_no_encoder")
    assert info.unused_keys == ()


def test_d2vpr_release_with_cross_image_encoder(tmp_path):
    """distillation.pth / finetune.pth: with its encoder (batch of 2, as evaluated officially) it
    gives the official descriptor; with encoder none it gives the no-encoder model's."""
    path = write_file("d2vpr_encoder", tmp_path / "distillation.pth")
    x = probe_images(2, 224)
    with_encoder, _ = build_model(cfg_of("d2vpr_official_encoder.yaml", weights=str(path)))
    without, info = build_model(cfg_of("d2vpr_official.yaml", weights=str(path)))
    with torch.no_grad():
        _assert_matches(with_encoder(x), "d2vpr_encoder")
        _assert_matches(without(x), "d2vpr_no_encoder")
    assert len(info.unused_keys) == 24


@pytest.mark.slow
def test_cricavpr_training_output_gives_the_official_descriptor(tmp_path):
    path = write_file("cricavpr", tmp_path / "CricaVPR.pth", "training")
    model, _ = build_model(cfg_of("cricavpr_teacher.yaml", weights=str(path)))
    with torch.no_grad():
        _assert_matches(model(probe_images(2, 224)), "cricavpr")


@pytest.mark.slow
def test_scicevpr_training_output_gives_the_official_descriptor(tmp_path):
    path = write_file("scicevpr", tmp_path / "best_model.pth", "training_numpy1")
    model, _ = build_model(cfg_of("scicevpr_official.yaml", weights=str(path)))
    with torch.no_grad():
        _assert_matches(model(probe_images(2, 224)), "scicevpr")


@pytest.mark.slow
def test_super_cricavpr_training_output_gives_the_official_descriptors_of_each_batch(tmp_path):
    """SciceVPR's teacher: the official outputs for a batch of 2 and of 3 (its encoder attends
    across the batch, so the first two images get other descriptors in the batch of 3)."""
    path = write_file("super_cricavpr", tmp_path / "last_model.pth", "training_numpy1")
    model, info = build_model(cfg_of("super_cricavpr_teacher.yaml", weights=str(path)))
    assert info.unused_keys == ()
    with torch.no_grad():
        two, three = model(probe_images(2, 224)), model(probe_images(3, 224))
    _assert_matches(two, "super_cricavpr")
    _assert_matches(three, "super_cricavpr_batch3")
    assert (two - three[:2]).abs().max() > 1e-3


def test_written_official_file_reads_back_identically(tmp_path):
    """Out and back in: the d2vpr file our writer makes is a {'model_state_dict'} file whose
    tensors are the model's (the layout itself is pinned by the exact-layout test above)."""
    src = write_file("d2vpr_no_encoder", tmp_path / "release.pth")
    model, info = build_model(cfg_of("d2vpr_official.yaml", weights=str(src)))
    out = write_weights(model, "d2vpr", tmp_path / "out.pth")
    raw = torch.load(out, weights_only=True)
    assert set(raw) == {"model_state_dict"} and set(raw["model_state_dict"]) == set(shapes("d2vpr_no_encoder"))
    again, info2 = build_model(cfg_of("d2vpr_official.yaml", weights=str(out)))
    assert info2.weights_sha256 == info.weights_sha256


def test_position_embedding_resize_follows_the_official_rule_per_family():
    ref = json.loads((FIXTURES / "posembed_reference.json").read_text())
    m, c = 37, 2
    i = torch.arange(m, dtype=torch.float64).view(m, 1, 1)
    j = torch.arange(m, dtype=torch.float64).view(1, m, 1)
    ch = torch.arange(c, dtype=torch.float64).view(1, 1, c)
    patch = torch.sin(0.31 * i * (ch + 1)) * torch.cos(0.17 * j) + 0.05 * j * (ch - 0.5)
    pos = torch.cat([torch.full((1, c), 0.25, dtype=torch.float64), patch.reshape(m * m, c)]).unsqueeze(0).float()
    family = {"plain": VIT_PRESETS["vits14"], "registers": VIT_PRESETS["vits14_reg4"]}
    for case in ref["cases"]:
        spec = family[case["rule"]]
        assert (spec.interp_antialias, spec.interp_offset) == (case["antialias"], case["offset"])
        out = interpolate_pos_embed(pos, case["grid"], spec.interp_antialias, spec.interp_offset)
        want = torch.tensor(case["values"]).reshape(out.shape)
        assert (out - want).abs().max() < 1e-6, case["rule"]
    # the two rules really differ (so the register test above can fail)
    plain = interpolate_pos_embed(pos, 16, False, 0.1)
    assert (plain - interpolate_pos_embed(pos, 16, True, 0.0)).abs().max() > 1e-2


# ------------------------------------------------------------------ recognising files; bad files
def test_layouts_are_recognised():
    expect = {"dinov2": "dinov2", "hf_dinov2": "hf_dinov2", "d2vpr_": "d2vpr", "cricavpr": "cricavpr",
              "scicevpr": "scicevpr", "super_cricavpr": "super_cricavpr"}
    for name in layout_names():
        kind = next(v for k, v in expect.items() if name.startswith(k))
        assert detect_layout(empty_state(name)) == kind, name


def test_unknown_layout_names_the_closest_and_the_first_differing_keys():
    state = {k.replace("backbone.lin.", "backbone.linear.").replace("offset_generator.", "offsets."): v
             for k, v in empty_state("d2vpr_no_encoder").items()}
    model = create(cfg_of("d2vpr_official.yaml"))
    with pytest.raises(CheckpointError) as e:
        load_state(model, state, "mystery.pth")
    msg = str(e.value)
    assert "mystery.pth" in msg and "d2vpr" in msg
    assert "backbone.lin.bias" in msg and "backbone.linear.bias" in msg and len(msg) < 1500
    # nothing D2-VPR-specific left: not recognised at all, and the closest layout is named
    bare = {k: v for k, v in state.items() if not k.startswith(("backbone.up_norm", "pos_encoder"))}
    with pytest.raises(CheckpointError, match=r"not a known weights layout.*Closest known layout .*'d2vpr'"):
        load_state(model, bare, "mystery.pth")
    timm_like = {"vit." + k: v for k, v in empty_state("dinov2_vits14").items()}
    with pytest.raises(CheckpointError, match=r"Closest known layout .*'dinov2'.*vit\.blocks"):
        load_state(create(ModelConfig(arch="scicevpr")), timm_like, "timm.pth")


@pytest.mark.slow
def test_file_of_another_architecture_points_to_its_config():
    with pytest.raises(CheckpointError, match="d2vpr_official.yaml"):
        load_state(create(ModelConfig(arch="scicevpr")), empty_state("d2vpr_no_encoder"), "release.pth")
    with pytest.raises(CheckpointError, match="no per-image"):
        load_state(create(ModelConfig()), empty_state("d2vpr_no_encoder"), "release.pth")
    with pytest.raises(CheckpointError, match="no cross-image encoder"):
        load_state(create(cfg_of("d2vpr_official_encoder.yaml")), empty_state("d2vpr_no_encoder"), "release.pth")
    # SciceVPR's student and teacher differ by one encoder layer: each file names the other's config
    with pytest.raises(CheckpointError, match=r"Super-CricaVPR.*super_cricavpr_teacher.yaml.*student_from_teacher"):
        load_state(create(cfg_of("scicevpr_official.yaml")), empty_state("super_cricavpr"), "best_model.pth")
    with pytest.raises(CheckpointError, match="scicevpr_official.yaml"):
        load_state(create(cfg_of("super_cricavpr_teacher.yaml")), empty_state("scicevpr"), "best_model.pth")


def test_shape_mismatch_message_is_short_and_names_keys():
    model = create(ModelConfig(arch="scicevpr", backbone="vits14"))
    with pytest.raises(CheckpointError) as e:
        load_state(model, empty_state("dinov2_vitb14"), "vitb.pth")
    msg = str(e.value)
    assert "shape mismatches (175)" in msg and "and 167 more" in msg and len(msg) < 2000


def test_vpr_ros_files_saved_before_the_norm_fix_still_load(tmp_path):
    """D2-VPR students saved by vpr_ros <= 0.2 carry backbone.norm.*: reported unused."""
    from safetensors.torch import save_file

    cfg = ModelConfig(backbone="vit_test", input_size=56)
    state = {k: v.clone() for k, v in create(cfg).state_dict().items()}
    state |= {"backbone.norm.weight": torch.ones(64), "backbone.norm.bias": torch.zeros(64)}
    save_file(state, str(tmp_path / "old.safetensors"))
    _, info = build_model(ModelConfig(**{**cfg.__dict__, "weights": str(tmp_path / "old.safetensors")}))
    assert sorted(info.unused_keys) == ["backbone.norm.bias", "backbone.norm.weight"]


def test_training_envelopes_read_without_pickle(tmp_path):
    """numpy arrays/scalars beside the weights are read as data; code objects are still refused."""
    for env in ("training", "training_numpy1"):
        p = write_file("dinov2_vits14", tmp_path / f"{env}.pth", env)
        assert set(read_state_dict(p)) == set(shapes("dinov2_vits14"))
    evil = tmp_path / "evil.pth"
    torch.save({"model_state_dict": {"a": torch.zeros(1)}, "hook": ConfigError}, evil)
    with pytest.raises(CheckpointError, match="never unpickles"):
        read_state_dict(evil)


def test_batch_dependent_models_are_for_evaluation_only():
    from vpr_ros.runtime.factory import open_backend

    cfg = ModelConfig(backbone="vit_test", input_size=56, encoder="cross_image", compat=True, random_weights=True)
    for backend in ("auto", "torch", "onnxruntime"):
        with pytest.raises(ConfigError, match="batch-dependent"):
            open_backend(backend, cfg)
    with open_backend("auto", cfg, batch_dependent_ok=True) as b:
        assert b.name == "torch" and not b.batch_independent
    with pytest.raises(ConfigError, match="torch"):
        open_backend("onnxruntime", cfg, batch_dependent_ok=True)
    with pytest.raises(ConfigError, match="cross_image.*super_cricavpr"):
        ModelConfig(arch="scicevpr", encoder="cross_image")
    teacher = ModelConfig(arch="super_cricavpr", backbone="vit_test", input_size=56, random_weights=True)
    with pytest.raises(ConfigError, match="Super-CricaVPR teacher of SciceVPR.*batch-dependent"):
        open_backend("auto", teacher)
    with open_backend("auto", teacher, batch_dependent_ok=True) as b:
        assert b.name == "torch" and not b.batch_independent


def test_files_of_data_parallel_codebases_carry_the_module_prefix_their_strict_readers_expect(tmp_path):
    """CricaVPR's hubconf.py and SciceVPR's train_scicevpr.py (--crica_path) wrap the network in
    torch.nn.DataParallel before load_state_dict(strict=True): every key starts with 'module.'.
    The same file still reads back here (and in their eval.py, which strips the prefix)."""
    cfg = ModelConfig(arch="cricavpr", backbone="vit_test_wide", input_size=56)
    model = create(cfg)
    out = write_weights(model, "super_cricavpr" if model.arch == "super_cricavpr" else model.arch, tmp_path / "c.pth")
    raw = torch.load(out, weights_only=True)["model_state_dict"]
    assert raw and all(k.startswith("module.") for k in raw)
    assert {k[len("module."):] for k in raw} == set(official_state(model, model.arch))
    with pytest.raises(CheckpointError, match=r"can be written as: native, cricavpr$"):  # no DINOv2 file: adapters
        official_state(model, "d2vpr")

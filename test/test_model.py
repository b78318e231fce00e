"""DINOv2 backbone, checkpoint reading and model ids, with random weights."""
from __future__ import annotations

import math

import numpy as np
import pytest
torch = pytest.importorskip("torch", reason="needs torch (a robot running an exported graph has none)")
import torch.nn.functional as F

from vpr_ros.config import ModelConfig
from vpr_ros.errors import CheckpointError
from vpr_ros.model.backbone import DinoV2, VIT_PRESETS, build_backbone
from vpr_ros.model.checkpoints import load_strict, read_state_dict
from vpr_ros.model.factory import build_model


def official_keys(depth: int, registers: bool) -> set[str]:
    """Key names of the official dinov2_vit*14[_reg4]_pretrain.pth files."""
    keys = {"cls_token", "pos_embed", "mask_token", "patch_embed.proj.weight", "patch_embed.proj.bias",
            "norm.weight", "norm.bias"}
    if registers:
        keys.add("register_tokens")
    for i in range(depth):
        for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"blocks.{i}.{part}.weight", f"blocks.{i}.{part}.bias"}
        keys |= {f"blocks.{i}.ls1.gamma", f"blocks.{i}.ls2.gamma"}
    return keys


@pytest.mark.parametrize("name", ["vits14", "vitb14", "vits14_reg4", "vitb14_reg4"])
def test_presets_have_the_official_layout(name):
    m = build_backbone(name, 224)
    spec = VIT_PRESETS[name]
    sd = m.state_dict()
    assert set(sd) == official_keys(12, spec.num_registers > 0)
    assert sd["pos_embed"].shape == (1, 1370, spec.embed_dim)
    assert sd["blocks.0.attn.qkv.weight"].shape == (3 * spec.embed_dim, spec.embed_dim)
    assert sd["blocks.0.mlp.fc1.weight"].shape == (4 * spec.embed_dim, spec.embed_dim)
    n_params = sum(p.numel() for p in m.parameters())
    expected = {"vits14": 22.06e6, "vitb14": 86.58e6}[name.split("_")[0]]  # DINOv2 model card sizes
    assert abs(n_params - expected) / expected < 0.01


def test_pos_embed_is_interpolated_like_the_official_code_and_can_be_fixed():
    m = DinoV2(VIT_PRESETS["vits14"], 224).eval()
    pe = m.interpolated_pos_embed()
    assert pe.shape == (1, 257, 384) and pe.requires_grad  # training path: differentiable
    patch = m.pos_embed[:, 1:].reshape(1, 37, 37, 384).permute(0, 3, 1, 2)
    ref = F.interpolate(patch, scale_factor=((16 + 0.1) / 37, (16 + 0.1) / 37), mode="bicubic",
                        align_corners=False, antialias=False)
    assert torch.equal(pe[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 256, 384))
    m.fix_pos_embed()
    fixed = m.interpolated_pos_embed()
    assert torch.equal(fixed, pe.detach()) and "fixed_pos_embed" not in m.state_dict()
    with torch.no_grad():
        m.pos_embed.add_(1.0)
    assert torch.equal(m.interpolated_pos_embed(), fixed)  # a constant until fixed again
    m.fix_pos_embed()
    assert not torch.equal(m.interpolated_pos_embed(), fixed)
    m.half()
    assert m.interpolated_pos_embed().dtype == torch.float16  # follows the module's dtype


def test_registers_sit_between_cls_and_patches():
    m = build_backbone("vits14_reg4", 56).eval()
    with torch.no_grad():
        m.register_tokens.fill_(7.0)
        t = m.tokens(torch.zeros(2, 3, 56, 56))
    assert t.shape == (2, 1 + 4 + 16, 384)
    assert torch.all(t[:, 1:5] == 7.0)


def test_official_checkpoint_loads_strictly_and_errors_name_keys(tmp_path):
    src = build_backbone("vit_test", 56)
    path = tmp_path / "dinov2_test_pretrain.pth"
    torch.save(src.state_dict(), path)
    dst = build_backbone("vit_test", 56)
    load_strict(dst, read_state_dict(path), str(path))
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))

    bad = dict(src.state_dict())
    bad.pop("blocks.1.ls1.gamma")
    bad["blocks.0.extra"] = torch.zeros(1)
    bad["norm.weight"] = torch.zeros(7)
    with pytest.raises(CheckpointError) as e:
        load_strict(dst, bad, "bad.pth")
    msg = str(e.value)
    assert "blocks.1.ls1.gamma" in msg and "blocks.0.extra" in msg and "norm.weight: file (7,)" in msg


def test_wrapped_and_prefixed_checkpoints_unwrap(tmp_path):
    sd = build_backbone("vit_test", 56).state_dict()
    p = tmp_path / "wrapped.pth"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, p)
    assert set(read_state_dict(p)) == set(sd)


def test_pickled_objects_and_corrupt_files_are_refused(tmp_path):
    p = tmp_path / "evil.pth"
    torch.save({"state": build_backbone("vit_test", 56).state_dict(), "obj": ModelConfig()}, p)
    with pytest.raises(CheckpointError, match="never unpickles"):
        read_state_dict(p)  # weights_only=True refuses arbitrary classes
    q = tmp_path / "corrupt.safetensors"
    q.write_bytes(b"\x10\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt.safetensors"):
        read_state_dict(q)
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "missing.pth")


def test_model_output_unit_norm_batch_independent_deterministic():
    model, info = build_model(ModelConfig(backbone="vit_test", input_size=56))
    x = torch.randn(9, 3, 56, 56)
    with torch.no_grad():
        batch = model(x)
        alone = model(x[:1])
        again = model(x)
    assert batch.shape == (9, info.descriptor_dim)
    assert torch.allclose(batch.norm(dim=1), torch.ones(9), atol=1e-5)
    assert torch.isfinite(batch).all()
    assert torch.allclose(alone[0], batch[0], atol=1e-5)
    assert torch.equal(batch, again)


def test_model_id_depends_on_weights_and_backbone_weights_load(tmp_path):
    a = build_model(ModelConfig(backbone="vit_test", input_size=56, seed=1))[1]
    b = build_model(ModelConfig(backbone="vit_test", input_size=56, seed=2))[1]
    assert a.model_id != b.model_id and a.weights_sha256 != b.weights_sha256
    bb = build_backbone("vit_test", 56)
    path = tmp_path / "backbone.pth"
    torch.save(bb.state_dict(), path)
    model, info = build_model(ModelConfig(backbone="vit_test", input_size=56, weights=str(path)))
    assert torch.equal(model.backbone.cls_token, bb.cls_token) and info.weights_source == str(path)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        build_model(ModelConfig(backbone="vits14", input_size=56, weights=str(path)))

"""The networks with random weights on tiny inputs: D2-VPR student (clean and compat),
SciceVPR student, CricaVPR teacher; converters; freezing; export."""
from __future__ import annotations

import io

import numpy as np
import pytest
torch = pytest.importorskip("torch", reason="needs torch (a robot running an exported graph has none)")
from torch import nn

from vpr_ros.config import ModelConfig
from vpr_ros.errors import CheckpointError
from vpr_ros.model.aggregator import FusedDeformableAggregator
from vpr_ros.model.encoder import CrossImageEncoder, SelfEnhancedEncoder
from vpr_ros.model.factory import build_model, create
from vpr_ros.model.student import region_slices

TINY = dict(backbone="vit_test", input_size=56, random_weights=True)
VARIANTS = {
    "d2vpr": ModelConfig(**TINY),
    "d2vpr_compat": ModelConfig(**TINY, compat=True, encoder="none"),
    "scicevpr": ModelConfig(**TINY, arch="scicevpr"),
    "cricavpr": ModelConfig(**TINY, arch="cricavpr"),
}
STUDENTS = ["d2vpr", "d2vpr_compat", "scicevpr"]


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter and BN statistic non-trivial values (zero-initialised adapters
    and layer scales would otherwise hide half of the network)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gem.p"):
                continue
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() > 1 else 0.1) / max(1, p.shape[-1]) ** 0.5
                    + (1.0 if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", ".bn.weight")) else 0.0))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def tiny(name: str, seed: int = 0):
    model = randomize(create(VARIANTS[name]), seed).eval()
    return model


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_shapes_unit_norm_no_nan_and_determinism(name):
    m = tiny(name)
    x = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        a, b = m(x), m(x)
    assert a.shape == (3, m.descriptor_dim) and m.descriptor_dim % 14 == 0
    assert torch.isfinite(a).all() and torch.allclose(a.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", STUDENTS)
def test_students_are_batch_independent(name):
    m = tiny(name)
    x = torch.randn(9, 3, 56, 56)
    with torch.no_grad():
        alone, batch = m(x[:1]), m(x)
    assert (alone[0] - batch[0]).abs().max() < 1e-5


def test_teacher_is_batch_dependent():
    m = tiny("cricavpr")
    x = torch.randn(9, 3, 56, 56)
    with torch.no_grad():
        alone, batch = m(x[:1]), m(x)
    assert (alone[0] - batch[0]).abs().max() > 1e-3


@pytest.mark.parametrize("compat", [False, True])
def test_fused_aggregator_equals_per_region_reference(compat):
    agg = randomize(FusedDeformableAggregator(96, compat=compat), 3).eval()
    f, c = torch.randn(4, 96, 16, 16), torch.randn(4, 96)
    with torch.no_grad():
        assert (agg(f, c) - agg.forward_per_region(f, c)).abs().max() < 1e-5


def test_aggregator_geometry_13_rois_512_points():
    agg = FusedDeformableAggregator(96)
    assert agg.base.shape == (512, 2) and agg.mask.shape == (13, 512)
    assert agg.mask[:4].sum(1).tolist() == [64] * 4
    assert agg.mask[4:].sum(1).tolist() == [25, 30, 25, 30, 36, 30, 25, 30, 25]
    x2 = agg.base[agg.mask[5]][:, 0]  # the second small cell spans x in [5/16, 11/16] with 6 columns
    assert x2.min() == pytest.approx(5 / 16) and x2.max() == pytest.approx(11 / 16) and len(set(x2.tolist())) == 6


def test_compat_reproduces_the_official_quirks():
    """Generator sampled with [0,1] coordinates, offsets scaled by the full ROI size, and
    un-enhanced medium tokens in the output."""
    d = 96
    gen = torch.zeros(1, 4, 16, 16)
    xs = torch.linspace(-1, 1, 16)
    gen[0, 0] = 0.1 * xs[None, :]  # dx = 0.1 * (normalised x where it is sampled); dy = 0; scale raw 0
    base = torch.tensor([[0.25, 0.25]])
    box = torch.tensor([[0.25, 0.25, 0.5, 0.5]])  # first medium ROI: centre 0.25, width 0.5
    clean = FusedDeformableAggregator(d, compat=False)._deform(gen, base, box)
    compat = FusedDeformableAggregator(d, compat=True)._deform(gen, base, box)
    # clean: sampled at 2*0.25-1 = -0.5 -> dx = -0.05, reach = w/2 = 0.25
    assert clean[0, 0, 0].item() == pytest.approx(0.25 - 0.05 * 0.25, abs=1e-6)
    # compat: sampled at 0.25 (in [-1,1] terms) -> dx = 0.025, reach = w = 0.5
    assert compat[0, 0, 0].item() == pytest.approx(0.25 + 0.025 * 0.5, abs=1e-6)

    f, c = torch.randn(2, d, 16, 16), torch.randn(2, d)
    for is_compat in (False, True):
        agg = randomize(FusedDeformableAggregator(d, compat=is_compat), 1).eval()
        with torch.no_grad():
            before = agg(f, c)
            agg.fusion.small_to_medium[4].bias.add_(1.0)
            after = agg(f, c)
        assert not torch.allclose(before[:, 0], after[:, 0])  # the global token is enhanced either way
        assert torch.allclose(before[:, 1:5], after[:, 1:5]) == is_compat


def test_region_slices_match_cricavpr():
    s = region_slices(16)
    assert [(r.start, r.stop, c.start, c.stop) for r, c in s[:4]] == [(0, 8, 0, 8), (0, 8, 8, 16), (8, 16, 0, 8),
                                                                      (8, 16, 8, 16)]
    assert sorted({(r.start, r.stop) for r, _ in s[4:]}) == [(0, 5), (5, 11), (11, 16)]


def test_encoders_equal_pytorch_transformer_layers():
    d, heads, ffn = 64, 16, 96
    ref_layer = nn.TransformerEncoderLayer(d, heads, ffn, dropout=0.1, activation="gelu", batch_first=False)
    ref = nn.TransformerEncoder(ref_layer, num_layers=2, enable_nested_tensor=False).eval()
    cross = CrossImageEncoder(d, layers=2, heads=heads, ffn=ffn).eval()
    cross.load_state_dict(ref.state_dict())
    x = torch.randn(5, 14, d)
    with torch.no_grad():
        assert (cross(x) - ref(x)).abs().max() < 1e-5  # attention across the 5 images
        single = SelfEnhancedEncoder(d, layers=1, heads=heads, ffn=ffn).eval()
        ref1 = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, heads, ffn, activation="gelu"), 1,
                                     enable_nested_tensor=False).eval()
        single.load_state_dict(ref1.state_dict())
        # SciceVPR: [B, 14, D] viewed as one sequence position with B*14 batch entries
        want = ref1(x.reshape(1, 5 * 14, d)).reshape(5, 14, d)
        assert (single(x) - want).abs().max() < 1e-5


def test_native_safetensors_round_trip(tmp_path):
    from vpr_ros.model.checkpoints import save_safetensors

    src = tiny("scicevpr", seed=7)
    path = tmp_path / "student.safetensors"
    save_safetensors(src, path)
    model, info = build_model(ModelConfig(**{**VARIANTS["scicevpr"].__dict__, "weights": str(path)}))
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))
    assert info.weights_source == str(path)


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_freezing_per_stage_d2vpr():
    m = create(VARIANTS["d2vpr"])
    depth = len(m.backbone.blocks)
    m.freeze_for("distill")
    assert trainable(m) == {n for n, _ in m.named_parameters()} - {"backbone.mask_token"}
    m.freeze_for("finetune")
    t = trainable(m)
    cut = 3 * depth // 4
    for n, _ in m.named_parameters():
        frozen_part = n.startswith(("backbone.patch_embed", "backbone.cls_token", "backbone.pos_embed",
                                    "backbone.mask_token")) or any(
            n.startswith(f"backbone.blocks.{i}.") for i in range(cut))
        assert (n in t) != frozen_part, n
    assert any(n.startswith(f"backbone.blocks.{cut}.adapter") for n in t)
    m.train()
    frozen_bn = m.backbone.blocks[0].adapter.branch1.bn
    live_bn = m.backbone.blocks[depth - 1].adapter.branch1.bn
    assert not frozen_bn.training and live_bn.training
    m.freeze_for("inference")
    assert not trainable(m)


def test_freezing_scicevpr_and_teacher():
    s = create(VARIANTS["scicevpr"])
    s.freeze_for("finetune")
    assert trainable(s) and not any(n.startswith("backbone.") for n in trainable(s))
    t = create(VARIANTS["cricavpr"])
    t.freeze_for("distill")
    assert not trainable(t)


def test_batchnorm_folding_keeps_outputs():
    m = tiny("d2vpr", seed=8)
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        before = m(x)
        m.fold_batchnorm()
        after = m(x)
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in m.modules())
    assert (before - after).abs().max() < 1e-5


@pytest.mark.parametrize("name", STUDENTS)
def test_every_student_exports_to_onnx(name):
    import onnx
    import onnxruntime as ort

    m = tiny(name, seed=9)
    m.fold_batchnorm()
    buf = io.BytesIO()
    torch.onnx.export(m, (torch.randn(2, 3, 56, 56),), buf, input_names=["images"], output_names=["descriptors"],
                      dynamic_axes={"images": {0: "batch"}, "descriptors": {0: "batch"}}, opset_version=17,
                      dynamo=False)
    onnx.checker.check_model(onnx.load_from_string(buf.getvalue()))
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, 56, 56)
    with torch.no_grad():
        ref = m(x).numpy()
    assert np.abs(sess.run(None, {"images": x.numpy()})[0] - ref).max() <= 1e-4


def test_localization_refuses_the_teacher():
    from vpr_ros.errors import ConfigError
    from vpr_ros.runtime.torch_backend import TorchBackend

    with pytest.raises(ConfigError, match="batch-dependent"):
        TorchBackend(VARIANTS["cricavpr"])


def test_gem_pooling_has_finite_gradients_in_float16():
    """Regression (seen on the GPU run): in float16, eps^p underflows and 0^(1/p) has an infinite
    gradient, and the deformable sampling grid's gradient overflows; mixed-precision training
    then skipped every step."""
    from vpr_ros.model.pooling import GeM

    x = (torch.rand(2, 8, 4, 4) - 0.7).half().requires_grad_()
    y = GeM()(x)
    assert y.dtype == torch.float16
    y.float().sum().backward()
    assert torch.isfinite(x.grad).all()
    m = create(VARIANTS["d2vpr"])
    m.freeze_for("finetune")
    m.train()
    with torch.autocast("cpu", dtype=torch.float16):  # what AMP does on a GPU
        emb = m(torch.randn(8, 3, 56, 56))
    (emb.float() @ emb.float().T).sum().mul(65536.0).backward()  # GradScaler's initial scale
    bad = [n for n, p in m.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, bad

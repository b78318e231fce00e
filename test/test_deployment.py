"""Export and runtime backends: ONNX parity for every student variant, backend selection,
input validation, clear errors for corrupt or foreign files, TensorRT type-checking.

TensorRT and CUDA cannot exist on the CI machine: the TensorRT modules are type-checked with
mypy against tensorrt-stubs, and their absence must give BackendUnavailable (tested here)."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import onnx
import pytest

from vpr_ros.config import ModelConfig
from vpr_ros.errors import BackendUnavailable, ConfigError, EngineBuildError, ImageError
from vpr_ros.export.engine_cache import EngineSpec
from vpr_ros.mapping.map_store import ModelIdentity
from vpr_ros.pca import Pca
from vpr_ros.runtime.factory import open_backend
from vpr_ros.runtime.onnxruntime_backend import OnnxRuntimeBackend

from conftest import REPO

TINY = dict(backbone="vit_test", input_size=56, seed=5, random_weights=True)
VARIANTS = {
    "d2vpr": ModelConfig(**TINY),
    "d2vpr_compat": ModelConfig(**TINY, compat=True, encoder="none"),
    "d2vpr_no_encoder": ModelConfig(**TINY, encoder="none"),
    "scicevpr": ModelConfig(**TINY, arch="scicevpr"),
}


def nontrivial_weights(cfg: ModelConfig, tmp_path: Path) -> ModelConfig:
    """Save random non-zero weights (adapters, BN statistics included) and point cfg at them."""
    from test_network import randomize  # same helper as the network tests

    from vpr_ros.model.checkpoints import save_safetensors
    from vpr_ros.model.factory import create

    model = randomize(create(cfg), seed=11)
    path = tmp_path / f"{cfg.arch}-{cfg.compat}.safetensors"
    save_safetensors(model, path)
    return ModelConfig(**{**cfg.__dict__, "weights": str(path)})


@pytest.mark.torch
@pytest.mark.slow
#: d2vpr_no_encoder is left out: its two differences from d2vpr (no encoder; clean aggregator) are each
#: exported here already, by d2vpr_compat (no encoder) and d2vpr (clean aggregator); 10 s saved
@pytest.mark.parametrize("name", sorted(set(VARIANTS) - {"d2vpr_no_encoder"}))
def test_onnx_export_parity_metadata_and_folding(name, tmp_path):
    from vpr_ros.export.onnx import export_onnx
    from vpr_ros.runtime.torch_backend import TorchBackend

    cfg = nontrivial_weights(VARIANTS[name], tmp_path)
    info = export_onnx(cfg, tmp_path / "m.onnx")
    assert info.max_abs_diff <= 1e-4
    proto = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(proto)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["vpr_ros.model_id"].startswith(cfg.arch) and meta["vpr_ros.input_size"] == "56"
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["descriptors", "local_features"]  # one pass, both outputs
    assert meta["vpr_ros.local_output"] == "local_features" and meta["vpr_ros.local_dim"] == "128"
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    # the same descriptors and dense local features through both backends, for several batch sizes
    with TorchBackend(cfg) as tb, OnnxRuntimeBackend(tmp_path / "m.onnx") as ob:
        assert ModelIdentity.of_backend(tb) == ModelIdentity.of_backend(ob)  # maps are interchangeable
        assert tb.has_local and ob.has_local
        for n in (1, 3):
            x = np.random.default_rng(n).normal(size=(n, 3, 56, 56)).astype(np.float32)
            assert np.abs(tb.infer(x) - ob.infer(x)).max() <= 1e-4
            (dt, lt), (do, lo) = tb.infer_local(x), ob.infer_local(x)
            assert lt.shape == (n, 16, 128) and np.abs(lt - lo).max() <= 1e-4 and np.abs(dt - do).max() <= 1e-4
            assert np.allclose(np.linalg.norm(lo, axis=2), 1.0, atol=1e-4)


@pytest.mark.torch
@pytest.mark.slow
def test_pca_is_baked_into_the_graph(tmp_path):
    from vpr_ros.export.onnx import export_onnx
    from vpr_ros.runtime.torch_backend import TorchBackend

    cfg = VARIANTS["d2vpr"]
    with TorchBackend(cfg) as tb:
        x = np.random.default_rng(0).normal(size=(40, 3, 56, 56)).astype(np.float32)
        Pca.fit(tb.infer(x), 16).save(tmp_path / "pca.npz")
    with_pca = ModelConfig(**{**cfg.__dict__, "pca": str(tmp_path / "pca.npz")})
    info = export_onnx(with_pca, tmp_path / "p.onnx")
    assert info.max_abs_diff <= 1e-4 and info.metadata["vpr_ros.descriptor_dim"] == "16"
    with TorchBackend(with_pca) as tb, OnnxRuntimeBackend(tmp_path / "p.onnx") as ob:
        assert ob.descriptor_dim == 16 and ob.pca_id.startswith("pca16-") and tb.pca_id == ob.pca_id
        y = ob.infer(x[:4])
        assert np.allclose(np.linalg.norm(y, axis=1), 1, atol=1e-5) and np.abs(y - tb.infer(x[:4])).max() <= 1e-4


def test_auto_picks_onnxruntime_on_cpu_and_logs_it(caplog):
    """The tiny student of the node tests, in the run's shared cache: exported at most once."""
    from conftest import TINY_MODEL
    from vpr_ros.runtime.factory import onnx_for

    cfg = ModelConfig(**TINY_MODEL)
    with caplog.at_level(logging.INFO, logger="vpr_ros.runtime.factory"):
        with open_backend("auto", cfg, "cpu") as b:
            assert b.name == "onnxruntime" and b.selection == "auto: onnxruntime on cpu (the first choice)"
    assert "backend 'auto' chose onnxruntime on cpu" in caplog.text
    graph = onnx_for(cfg)
    assert graph.is_file() and graph.parent.name == "onnx"  # exported into the cache
    stamp = graph.stat().st_mtime_ns
    with open_backend("onnxruntime", cfg, "cpu"):
        pass
    assert graph.stat().st_mtime_ns == stamp and len(list(graph.parent.glob(f"*{graph.stem[-20:]}*.onnx"))) == 1


@pytest.mark.torch  # without torch, CUDA graphs are refused before the precision is looked at
def test_auto_on_cuda_with_int8_passes_over_cuda_graphs_with_the_reason():
    """precision int8 is TensorRT's: CUDA graphs cannot run it, so 'auto' goes on to the next backend
    (here, as on any machine without a CUDA build of torch or ONNX Runtime, ONNX Runtime on the CPU)
    instead of failing on a configuration error."""
    from vpr_ros.config import GpuOptions

    try:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA device is here: some backend opens")
    except ImportError:
        pass
    from conftest import TINY_MODEL

    # the run's shared export of the tiny model (made once for every test that needs it)
    with open_backend("auto", ModelConfig(**TINY_MODEL), "cuda", gpu=GpuOptions(precision="int8")) as b:
        assert b.name == "onnxruntime" and "auto: onnxruntime on cpu" in b.selection
        assert "torch_cudagraph on cuda: precision" in b.selection and "onnxruntime on cuda:" in b.selection


def test_unavailable_backends_say_what_is_missing(tmp_path):
    with pytest.raises(BackendUnavailable, match="TensorRT 10"):
        open_backend("tensorrt", VARIANTS["d2vpr"], "cuda", cache_dir=tmp_path)
    with pytest.raises(BackendUnavailable, match="CUDA provider|CUDA is not available"):
        open_backend("onnxruntime", VARIANTS["d2vpr"], "cuda", cache_dir=tmp_path)
    try:
        import torch  # noqa: F401
    except ImportError:  # no torch to export the graph (Python 3.10 run): every reason is listed
        with pytest.raises(BackendUnavailable) as e:
            open_backend("auto", VARIANTS["d2vpr"], "cuda", cache_dir=tmp_path)
        assert "tensorrt on cuda:" in str(e.value) and "onnxruntime on cpu: no ONNX file" in str(e.value)
    else:
        from conftest import TINY_MODEL

        with open_backend("auto", ModelConfig(**TINY_MODEL), "cuda") as b:  # always starts (the run's shared export)
            assert b.name == "onnxruntime" and "tensorrt on cuda: " in b.selection and "torch on cuda: " in b.selection
    with pytest.raises(ConfigError, match="backend"):
        open_backend("tflite", VARIANTS["d2vpr"])


def test_input_validation_and_corrupt_files(tmp_path):
    import shutil

    from conftest import TINY_MODEL
    from vpr_ros.runtime.factory import onnx_for

    shutil.copy(onnx_for(ModelConfig(**TINY_MODEL)), tmp_path / "m.onnx")  # the run's shared export
    with OnnxRuntimeBackend(tmp_path / "m.onnx") as b:
        with pytest.raises(ImageError, match=r"shape \[N>=1, 3, 56, 56\]"):
            b.infer(np.zeros((1, 3, 64, 64), np.float32))
        with pytest.raises(ImageError, match="float32"):
            b.infer(np.zeros((1, 3, 56, 56), np.float64))
        with pytest.raises(ImageError, match="NaN"):
            b.infer(np.full((1, 3, 56, 56), np.nan, np.float32))
        strided = np.zeros((2, 3, 56, 112), np.float32)[:, :, :, ::2]  # non-contiguous is copied, not refused
        assert b.infer(strided).shape == (2, b.descriptor_dim)
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes((tmp_path / "m.onnx").read_bytes()[:5000])
    with pytest.raises(EngineBuildError, match="corrupt.onnx"):
        OnnxRuntimeBackend(bad)
    foreign = tmp_path / "foreign.onnx"
    proto = onnx.load(str(tmp_path / "m.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, str(foreign))
    with pytest.raises(EngineBuildError, match="not a vpr_ros export.*vpr_ros_export"):
        OnnxRuntimeBackend(foreign)
    with pytest.raises(EngineBuildError, match="not found"):
        OnnxRuntimeBackend(tmp_path / "missing.onnx")


def test_engine_cache_key_changes_with_every_dependency(tmp_path):
    base = EngineSpec("a" * 64, "10.13.0", "NVIDIA H100", "fp16", 224, 8)
    variants = [EngineSpec("b" * 64, "10.13.0", "NVIDIA H100", "fp16", 224, 8),
                EngineSpec("a" * 64, "10.14.1", "NVIDIA H100", "fp16", 224, 8),
                EngineSpec("a" * 64, "10.13.0", "Orin", "fp16", 224, 8),
                EngineSpec("a" * 64, "10.13.0", "NVIDIA H100", "int8", 224, 8),
                EngineSpec("a" * 64, "10.13.0", "NVIDIA H100", "fp16", 224, 16),
                EngineSpec("a" * 64, "10.13.0", "NVIDIA H100", "fp16", 224, 8, "sm_90"),
                EngineSpec("a" * 64, "10.13.0", "NVIDIA H100", "fp16", 224, 8, "", "workspace=1024MiB")]
    assert len({base.key(), *(v.key() for v in variants)}) == 8
    engine, sidecar = base.paths(tmp_path)
    assert engine.parent == sidecar.parent == tmp_path / "engines" and engine.suffix == ".engine"
    assert '"precision": "fp16"' in base.sidecar(build_seconds=1.0)


def sanitized_tensorrt_stubs(dest: Path) -> Path:
    """A copy of tensorrt-stubs that mypy can parse: the published stubs name parameters 'in'
    (a keyword), put a required parameter after defaulted ones, and import an absent module."""
    site = Path(sysconfig.get_paths()["purelib"])
    for pkg in ("tensorrt", "tensorrt_bindings"):
        if not (site / pkg).is_dir():
            pytest.fail(f"tensorrt-stubs is not installed ({site / pkg} missing): run scripts/setup.sh")
        shutil.copytree(site / pkg, dest / pkg)
    binding = dest / "tensorrt_bindings" / "tensorrt.pyi"
    text = binding.read_text()
    for sep in ("(", ", "):
        text = text.replace(f"{sep}in: ", f"{sep}in_: ")
    text = text.replace("power: Weights = None, channel_axis: int)", "power: Weights = None, channel_axis: int = ...)")
    binding.write_text(text)
    init = dest / "tensorrt" / "__init__.pyi"
    init.write_text(init.read_text().replace("import tensorrt_libs as tensorrt_libs\n", ""))
    return dest


@pytest.mark.slow
def test_tensorrt_modules_type_check_against_tensorrt_stubs(tmp_path):
    stubs = sanitized_tensorrt_stubs(tmp_path / "stubs")
    files = ["vpr_ros/export/tensorrt.py", "vpr_ros/runtime/tensorrt_backend.py", "vpr_ros/export/engine_cache.py",
             "vpr_ros/export/quantize.py", "vpr_ros/export/accuracy_gate.py", "vpr_ros/export/fp16_graph.py",
             "vpr_ros/runtime/cuda_memory.py", "vpr_ros/runtime/engine_swap.py", "vpr_ros/export/tensorrt_rules.py",
             "vpr_ros/export/fold.py", "vpr_ros/cli/check_graph.py", "vpr_ros/runtime/factory.py"]
    # the project's mypy settings, with the big libraries these modules only reach through other modules
    # (torch, matplotlib, onnx, scipy) not analysed: the check is about the calls into TensorRT (14 s -> 4 s)
    config = tmp_path / "mypy.cfg"
    config.write_text((REPO / "setup.cfg").read_text() + "\n[mypy-torch.*,matplotlib.*,onnx.*,scipy.*]\n"
                      "follow_imports = skip\nignore_missing_imports = True\n")
    r = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(config), "--follow-imports=silent",
                        "--cache-dir", str(tmp_path / "mypy_cache"), *files], cwd=REPO, capture_output=True,
                       text=True, env={**os.environ, "MYPYPATH": str(stubs)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Success" in r.stdout


@pytest.mark.torch
def test_processes_started_together_export_a_model_once(tmp_path):
    """A process that needs the ONNX graph another process is exporting (nodes launched together)
    waits for that export and uses its file instead of exporting the model a second time."""
    import subprocess
    import sys

    from conftest import TINY_MODEL
    from vpr_ros.runtime.factory import cached_onnx_path, exclusive

    cfg = ModelConfig(**TINY_MODEL)
    path = cached_onnx_path(cfg, tmp_path)
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
            "from vpr_ros.config import ModelConfig\nfrom vpr_ros.runtime.factory import onnx_for\n"
            f"print(onnx_for(ModelConfig(**{TINY_MODEL!r}), {str(tmp_path)!r}))")
    with exclusive(path.with_name(path.name + ".lock"), "test holds the lock"):  # "the other exporter"
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen = []
        for line in p.stderr:  # until the second process reports that it waits for the lock
            seen.append(line)
            if "another process is exporting" in line:
                break
        assert seen and "another process is exporting" in seen[-1], "".join(seen)
        path.write_bytes(b"the graph the first process exported")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert out.strip() == str(path) and "exporting" not in err  # it did not export again

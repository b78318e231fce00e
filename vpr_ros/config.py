"""Configuration dataclasses: the one place where every default lives.

Each field carries a ``help`` text in its metadata; the ROS layer declares one
parameter per field with that text as its description, and the YAML files in
``config/`` are validated against the same fields. Bad values raise
:class:`~vpr_ros.errors.ConfigError` naming the key.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from vpr_ros.errors import ConfigError

T = TypeVar("T")

#: ImageNet normalisation used by DINOv2 and every VPR model here (RGB order).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

BACKBONES = ("vits14", "vitb14", "vits14_reg4", "vitb14_reg4", "vit_test", "vit_test_wide")
ARCHITECTURES = ("d2vpr", "scicevpr", "cricavpr", "super_cricavpr", "vlad")
#: architectures with no network and no weights (vpr_ros.vocabulary: VLAD over RootSIFT)
WEIGHT_FREE = ("vlad",)
ENCODERS = ("self_enhanced", "none", "cross_image")
BACKENDS = ("auto", "tensorrt", "torch_cudagraph", "onnxruntime", "torch")
#: GPU precision of the TensorRT and CUDA-graph backends (int8: TensorRT, from a Q/DQ graph of
#: vpr_ros_quantize; bf16: CUDA graphs only).
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
INDEX_TYPES = ("auto", "flat", "hnsw", "ivf", "ivfpq", "compact")
TRANSPORTS = ("raw", "compressed")
QOS_NAMES = ("sensor_data", "reliable")


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a description (used for ROS parameter descriptors).

    Extra metadata: ``live=True`` (the node applies a new value at run time; every other
    parameter is read-only), ``lo``/``hi`` (the range advertised in the parameter descriptor).
    """
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def describe(cls: type) -> dict[str, str]:
    """Field name -> description for a config dataclass."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def live_fields(cls: type) -> set[str]:
    """Names of the fields a running node may change (``ros2 param set``)."""
    return {f.name for f in dataclasses.fields(cls) if f.metadata.get("live")}


@dataclass(frozen=True)
class ModelConfig:
    """Which network turns an image into a global descriptor."""

    arch: str = _f("d2vpr", "Network: 'd2vpr' (D2-VPR student), 'scicevpr' (SciceVPR student), "
                   "'cricavpr' (the CricaVPR teacher), 'super_cricavpr' (SciceVPR's teacher; the "
                   "teachers are batch-dependent: training and evaluation only) or 'vlad' (weight-free: VLAD "
                   "over RootSIFT with model.vocabulary; no network, runs on OpenCV on the CPU).")
    backbone: str = _f("vits14", "DINOv2 backbone preset: " + ", ".join(BACKBONES) + ".")
    encoder: str = _f("self_enhanced", "Encoder of the D2-VPR student: 'self_enhanced' (SciceVPR's "
                      "per-image encoder), 'none' (the released no-encoder D2-VPR model) or 'cross_image' "
                      "(the paper's encoder across the images of a batch: evaluation only, refused by the nodes).")
    compat: bool = _f(False, "Reproduce the official D2-VPR code's aggregator quirks exactly (needed "
                      "for the released D2-VPR weights); the clean version is the default.")
    input_size: int = _f(224, "Square network input size in pixels (multiple of 14).")
    weights: str = _f("", "Path to a weights file (.pth or .safetensors; vpr_ros_weights gets the released "
                      "ones). Empty: the node or command refuses to start unless model.random_weights is true.")
    random_weights: bool = _f(False, "Run a randomly initialised network when model.weights is empty (tests and "
                              "demos: its descriptors mean nothing). Never the default.")
    vocabulary: str = _f("", "arch 'vlad': the vocabulary file (.npz made by vpr_ros_fit_vocabulary).")
    seed: int = _f(0, "Seed of the random initialisation when no weights are given.")
    gem_p: float = _f(3.0, "Initial exponent p of generalised-mean pooling.")
    pca: str = _f("", "PCA file (.npz, fitted on training images) applied to descriptors; empty = none.")
    onnx: str = _f("", "Exported ONNX file to run with the onnxruntime/tensorrt backends (no torch "
                   "needed); empty = export the model above into the engine cache on first use.")

    def __post_init__(self) -> None:
        _choice("arch", self.arch, ARCHITECTURES)
        _choice("encoder", self.encoder, ENCODERS)
        _choice("backbone", self.backbone, BACKBONES)
        if self.input_size < 14 or self.input_size % 14:
            raise ConfigError(f"input_size: must be a positive multiple of 14, got {self.input_size}")
        if not (1.0 <= self.gem_p <= 10.0):
            raise ConfigError(f"gem_p: must be within [1, 10], got {self.gem_p}")
        if self.arch in WEIGHT_FREE:
            for key in ("weights", "onnx"):
                if getattr(self, key):
                    raise ConfigError(f"{key}: arch '{self.arch}' is weight-free (no network); its descriptor is "
                                      "defined by model.vocabulary")
            if self.pca:
                raise ConfigError(f"pca: not supported with arch '{self.arch}' (vpr_ros_fit_pca fits networks); for "
                                  "a shorter descriptor fit the vocabulary with fewer words (--clusters)")
        elif self.vocabulary:
            raise ConfigError(f"vocabulary: only arch 'vlad' uses one (arch is '{self.arch}')")
        if self.encoder == "cross_image" and self.arch != "d2vpr":
            raise ConfigError(f"encoder: 'cross_image' is an option of arch 'd2vpr', not '{self.arch}' (SciceVPR's "
                              "network with a cross-image encoder is arch 'super_cricavpr')")

    @property
    def batch_dependent(self) -> bool:
        """True when a descriptor depends on the other images of its batch (cross-image encoder:
        the CricaVPR teacher, or the D2-VPR student with encoder 'cross_image')."""
        return self.arch in ("cricavpr", "super_cricavpr") or (self.arch == "d2vpr" and self.encoder == "cross_image")


def weights_refusal(cfg: ModelConfig) -> str:
    """Why ``cfg`` may not describe images ('' when it may): a network without model.weights runs
    only when model.random_weights asks for it; arch 'vlad' needs its vocabulary."""
    if cfg.arch in WEIGHT_FREE:
        return "" if cfg.vocabulary else ("model.vocabulary: arch 'vlad' needs a vocabulary file (make one with "
                                          "vpr_ros_fit_vocabulary IMAGE_FOLDER or --map MAP_DIR)")
    if cfg.weights or cfg.random_weights:
        return ""
    return ("model.weights is empty: no trained network to run. Get the released weights "
            "(vpr_ros_weights list; vpr_ros_weights get d2vpr) and set model.weights, or use the weight-free "
            "descriptor (model.arch: vlad with a vocabulary from vpr_ros_fit_vocabulary), or set "
            "model.random_weights: true (--random-weights) to run an untrained network on purpose (tests, demos)")


def batch_dependent_refusal(cfg: ModelConfig) -> str:
    """Why a batch-dependent model cannot describe images for a map or a robot."""
    what = {"cricavpr": "the CricaVPR teacher", "super_cricavpr": "the Super-CricaVPR teacher of SciceVPR"}.get(
        cfg.arch, "the D2-VPR student with encoder 'cross_image'")
    return (f"model {cfg.arch} ({what}) is batch-dependent (cross-image encoder): a descriptor would "
            "depend on the other images of its batch, so it cannot build or query maps. Use 'd2vpr' with "
            "encoder 'self_enhanced' or 'none', or 'scicevpr'; vpr_ros_eval can evaluate it as the "
            "official code does (--backend torch).")


@dataclass(frozen=True)
class IndexConfig:
    """How map descriptors are searched, and how much memory the map may take."""

    index_type: str = _f("auto", "faiss index: 'flat' (exact inner product), 'hnsw', 'ivf', 'ivfpq', 'compact' "
                         "(IVF-PQ codes in memory, the shortlist re-ranked with the stored float16 vectors), or "
                         "'auto' (exact below auto_threshold keyframes, HNSW above, compact where those do not "
                         "fit memory_budget_mb).")
    auto_threshold: int = _f(50000, "Keyframes from which 'auto' switches from exact search to HNSW (for "
                             "descriptors of up to 512 values; scaled by 512/D for longer ones: 2380 at 10752).")
    memory_budget_mb: int = _f(1024, "Memory (MiB) the map may take in a node (index and keyframe table; the "
                               "network and ROS come on top): 'auto' picks the first of flat / HNSW / compact "
                               "whose estimate fits. The default leaves an 8 GB Jetson Orin room for the network "
                               "and a SLAM stack.")
    hnsw_m: int = _f(32, "HNSW: neighbours per node.")
    hnsw_ef_construction: int = _f(80, "HNSW: candidate list size while building.")
    hnsw_ef_search: int = _f(64, "HNSW: candidate list size while searching (recall vs speed).")
    ivf_nlist: int = _f(0, "IVF: number of cells (0 = 4 sqrt(N); compact: sqrt(N), 64 to 1024).")
    ivf_nprobe: int = _f(16, "IVF: cells visited per search (recall vs speed).")
    pq_m: int = _f(32, "IVF-PQ: sub-quantizers (must divide the descriptor dimension).")
    compact_bytes: int = _f(128, "compact: bytes of code per keyframe (sub-quantizers of 8 bits; the largest "
                            "divisor of the descriptor dimension not above it is used).")
    rerank_k: int = _f(32, "compact: candidates re-ranked with their exact (stored float16) vectors per query "
                           "(each one a random read of the store: 32 keep a search at 1M x 10752 under 10 ms).")

    def __post_init__(self) -> None:
        _choice("index_type", self.index_type, INDEX_TYPES)
        for key in ("auto_threshold", "hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "ivf_nprobe", "pq_m",
                    "compact_bytes", "rerank_k"):
            _positive(key, getattr(self, key))
        _range("ivf_nlist", self.ivf_nlist, 0, 10**7)
        _range("memory_budget_mb", self.memory_budget_mb, 16, 10**7)
        _range("rerank_k", self.rerank_k, 1, 4096)


#: when backend 'auto' builds a missing TensorRT engine: 'background' (start on the next backend,
#: swap the engine in once built and gated), 'startup' (build before starting), 'never' (use a
#: cached engine only, e.g. one made by vpr_ros_build_engine; else the next backend)
ENGINE_BUILDS = ("background", "startup", "never")


@dataclass(frozen=True)
class GpuOptions:
    """How the GPU backends are built: precision, largest batch, TensorRT workspace (MiB)."""

    precision: str = "fp16"
    max_batch: int = 8
    workspace_mib: int = 2048
    #: backend 'auto' on CUDA without a cached engine: see ENGINE_BUILDS ('startup' for commands,
    #: whose numbers must come from one backend; the nodes default to 'background')
    engine_build: str = "startup"


@dataclass(frozen=True)
class CameraNodeConfig:
    """What the localizer and the map builder share: model runtime, cameras, QoS, diagnostics."""

    backend: str = _f("auto", "Inference backend: " + ", ".join(BACKENDS) + ".")
    device: str = _f("cpu", "Device: 'cpu', 'cuda' or 'cuda:N'.")
    precision: str = _f("fp16", "GPU precision of the 'tensorrt' and 'torch_cudagraph' backends: fp32, fp16, "
                        "bf16 (CUDA graphs) or int8 (TensorRT; needs model.onnx made by vpr_ros_quantize).")
    max_batch: int = _f(8, "Largest batch the GPU backends are built for (bigger batches are split).", lo=1, hi=256)
    workspace_mib: int = _f(2048, "TensorRT builder workspace in MiB.", lo=64, hi=1 << 20)
    engine_build: str = _f("background", "backend 'auto' on CUDA when no TensorRT engine is cached yet: "
                           "'background' (start on the next backend; the engine is swapped in once built "
                           "and gated), 'startup' (build before the node starts), 'never' (cached engines "
                           "only, e.g. from vpr_ros_build_engine).")
    engine_cache_dir: str = _f("", "Where exported ONNX graphs and engines are cached (empty = "
                               "$VPR_ROS_CACHE or ~/.cache/vpr_ros).")
    camera_topics: list = _f(["image"], "Image topics (relative names); each is subscribed with "
                             "one transport (see 'transport').")
    transport: str = _f("raw", "Image transport of every camera: 'raw' (sensor_msgs/Image on <topic>) or "
                        "'compressed' (sensor_msgs/CompressedImage on <topic>/compressed).")
    camera_info_topics: list = _f([""], "sensor_msgs/CameraInfo topic of each camera (same order as "
                                  "camera_topics); '' = the image topic's sibling 'camera_info'.")
    qos: str = _f("sensor_data", "QoS of image subscriptions: 'sensor_data' or 'reliable'.")
    diagnostics_topic: str = _f("/diagnostics", "Topic of diagnostic_msgs/DiagnosticArray (absolute by "
                                "default, where diagnostic aggregators listen).")

    @property
    def gpu(self) -> GpuOptions:
        return GpuOptions(self.precision, self.max_batch, self.workspace_mib, self.engine_build)

    def _check_common(self) -> None:
        _choice("backend", self.backend, BACKENDS)
        _choice("precision", self.precision, PRECISIONS)
        _range("max_batch", self.max_batch, 1, 256)
        _range("workspace_mib", self.workspace_mib, 64, 1 << 20)
        _choice("engine_build", self.engine_build, ENGINE_BUILDS)
        _choice("qos", self.qos, ("sensor_data", "reliable"))
        _choice("transport", self.transport, TRANSPORTS)
        _camera_topics(self.camera_topics)
        if not self.diagnostics_topic:
            raise ConfigError("diagnostics_topic: must not be empty")


#: The optical frame (x right, y down, z forward) of a camera at the robot's origin looking along
#: base_link's x axis (x forward, y left, z up): its pose in base_link.
OPTICAL_IN_BASE = [0.0, 0.0, 0.0, -0.5, 0.5, -0.5, 0.5]


TEMPORAL_FILTERS = ("consistency", "sequence")
TEMPORAL_FILTER_HELP = ("How consecutive matches must agree before a loop closure: 'consistency' (temporal_consistency "
                        "matches within consistency_window ids) or 'sequence' (sequence matching, SeqSLAM: the cosines "
                        "of the last sequence_length queries with the keyframes along the match's diagonal, summed and "
                        "divided by sequence_length, must meet score_threshold). Compared by vpr_ros_eval_loops "
                        "(docs/evaluation.md).")


@dataclass(frozen=True)
class LocalizerConfig(CameraNodeConfig):
    """Behaviour of the localizer (core and node)."""

    map_dir: str = _f("", "Directory of the map to localize against; setting it at run time loads that "
                      "map (the previous one stays in use if it cannot be loaded).", live=True)
    memory_budget_mb: int = _f(1024, "Memory (MiB) the loaded map may take (index and keyframe table; the network "
                               "comes on top): a map whose index would take more is searched through a compact "
                               "index (codes in memory, exact re-ranking from the store) built at load.",
                               lo=16, hi=10**7)
    top_k: int = _f(5, "Number of map matches reported per query.", live=True, lo=1, hi=1000)
    score_threshold: float = _f(0.5, "Minimum cosine similarity for a match to be accepted.", live=True,
                                lo=-1.0, hi=1.0)
    temporal_consistency: int = _f(3, "Consecutive accepted queries that must agree before a "
                                   "loop closure is published.", live=True, lo=1, hi=1000)
    consistency_window: int = _f(3, "Two consecutive matches agree when their map ids differ "
                                 "by at most this many keyframes.", live=True, lo=0, hi=1_000_000)
    min_time_separation: float = _f(30.0, "Minimum |t_query - t_match| in seconds for a loop closure.",
                                    live=True, lo=0.0, hi=1e9)
    exclude_recent: float = _f(0.0, "Ignore map keyframes taken less than this many seconds before/after "
                               "the query (for a robot querying its own growing map; 0 = off).",
                               live=True, lo=0.0, hi=1e9)
    max_loop_closure_rate: float = _f(1.0, "Maximum loop closures per second (query time).", live=True,
                                      lo=1e-6, hi=1000.0)
    temporal_filter: str = _f("consistency", TEMPORAL_FILTER_HELP, live=True)
    sequence_length: int = _f(5, "Queries along the diagonal scored by temporal_filter 'sequence'.", live=True,
                              lo=2, hi=100)
    map_frame: str = _f("", "Frame of /vpr/pose, /initialpose and the markers: '' (default) = the loaded map's "
                        "own frame (the frame its keyframe poses were recorded in: 'odom' for a map built "
                        "from /odom). A name is a check: a map in another frame is refused at load, since "
                        "its poses stamped with this frame would put the robot in the wrong place.")
    min_position_sigma: float = _f(0.05, "Floor (m) of the position standard deviation of every published "
                                   "covariance (a query identical to a keyframe would otherwise claim ~1e-9 m).",
                                   live=True, lo=0.0, hi=1e6)
    min_orientation_sigma: float = _f(0.02, "Floor (rad) of the orientation standard deviation of every "
                                      "published covariance.", live=True, lo=0.0, hi=10.0)
    base_frame: str = _f("base_link", "Robot body frame.")
    odom_frame: str = _f("odom", "Odometry frame.")
    position_sigma: float = _f(2.0, "Position standard deviation (m) of /vpr/pose at score 1; "
                               "it grows as the score falls.", live=True, lo=1e-6, hi=1e6)
    diagnostics_period: float = _f(1.0, "Seconds between diagnostics messages.", lo=0.01, hi=3600.0)
    camera_pose_in_base: list = _f(OPTICAL_IN_BASE, "Pose of the camera's optical "
                                   "frame in base_frame (x y z qx qy qz qw): turns a verified camera-to-camera "
                                   "relative pose into the robot's. Default: at the origin, looking along x.")

    def __post_init__(self) -> None:
        self._check_common()
        _pose7("camera_pose_in_base", self.camera_pose_in_base)
        _positive("top_k", self.top_k)
        _positive("temporal_consistency", self.temporal_consistency)
        _range("score_threshold", self.score_threshold, -1.0, 1.0)
        _range("consistency_window", self.consistency_window, 0, 10**9)
        _range("min_time_separation", self.min_time_separation, 0.0, math.inf)
        _range("exclude_recent", self.exclude_recent, 0.0, math.inf)
        _positive("max_loop_closure_rate", self.max_loop_closure_rate)
        _positive("position_sigma", self.position_sigma)
        _positive("diagnostics_period", self.diagnostics_period)
        _choice("temporal_filter", self.temporal_filter, TEMPORAL_FILTERS)
        _range("sequence_length", self.sequence_length, 2, 100)


VERIFICATION_FEATURES = ("sift", "orb", "dense", "none")
RERANK_MODES = ("auto", "classical", "dense", "none")
LOOP_VERIFICATION = ("geometric", "none")


@dataclass(frozen=True)
class VerificationConfig:
    """Local features, re-ranking and geometric verification (``verification.*`` parameters)."""

    features: str = _f("sift", "Local features stored with every map keyframe and extracted from queries: "
                       "'sift' (more inliers and better re-ranking in our measurements), 'orb' (faster, "
                       "smaller), 'dense' (the network's own patch tokens from the same forward pass, "
                       "SelaVPR-style; coarse keypoints at patch centres) or 'none' (no re-ranking, no "
                       "geometric verification).")
    max_features: int = _f(500, "Most local features per image (SIFT: 136 bytes each stored).", lo=50, hi=20000)
    max_side: int = _f(1600, "SIFT/ORB features are detected on the image shrunk to this long side (px; keypoints "
                       "stay in the camera's pixels): bounds the time and memory of one frame whatever its size.",
                       lo=64, hi=16384)
    rerank: str = _f("auto", "Re-rank the global top rerank_top_k by local matching: 'classical' (inliers of "
                     "a robust fundamental matrix between stored and query SIFT/ORB features), 'dense' (mutual "
                     "nearest neighbours of dense features; needs features 'dense'), 'auto' (the one that goes "
                     "with features) or 'none'.", live=True)
    rerank_top_k: int = _f(20, "Global candidates re-ranked per query.", live=True, lo=1, hi=500)
    ratio: float = _f(0.8, "Lowe's ratio test for matching local features.", live=True, lo=0.1, hi=1.0)
    min_inliers: int = _f(30, "Geometric inliers needed to verify a match.", live=True, lo=6, hi=100000)
    min_inlier_ratio: float = _f(0.3, "Inliers / matches needed to verify a match.", live=True, lo=0.0, hi=1.0)
    ransac_px: float = _f(2.0, "Epipolar threshold (px) of the robust two-view models.", live=True, lo=0.1, hi=50.0)
    pnp_px: float = _f(3.0, "Reprojection threshold (px) of PnP with keyframe depth.", live=True, lo=0.1, hi=50.0)
    loop_closures: str = _f("geometric", "'geometric': a loop closure is published only when its geometry is "
                            "verified (needs camera intrinsics; with keyframe depth the relative pose is metric); "
                            "'none': the temporal-consistency rules alone.", live=True)
    without_camera_model: str = _f("fundamental", "When the query or the keyframe has no camera model (no "
                                   "CameraInfo, an image folder without a camera_info YAML): 'fundamental' "
                                   "verifies with a robust fundamental matrix (or a homography where the views have "
                                   "no parallax) on the pixel matches, inlier count and ratio as for the others, "
                                   "and publishes the closure without a relative pose (method 1 / 4); 'refuse' "
                                   "refuses it.", live=True)

    def __post_init__(self) -> None:
        _choice("features", self.features, VERIFICATION_FEATURES)
        _choice("without_camera_model", self.without_camera_model, ("fundamental", "refuse"))
        _choice("rerank", self.rerank, RERANK_MODES)
        _choice("loop_closures", self.loop_closures, LOOP_VERIFICATION)
        if self.rerank == "dense" and self.features not in ("dense", "none"):
            raise ConfigError(f"rerank: 'dense' needs features 'dense' (features is '{self.features}')")
        if self.rerank == "classical" and self.features == "dense":
            raise ConfigError("rerank: 'classical' needs features 'sift' or 'orb' (features is 'dense': use rerank 'dense')")
        _positive("max_features", self.max_features)
        _range("max_side", self.max_side, 64, 16384)
        _positive("rerank_top_k", self.rerank_top_k)
        _range("ratio", self.ratio, 0.1, 1.0)
        _range("min_inliers", self.min_inliers, 6, 10**6)
        _range("min_inlier_ratio", self.min_inlier_ratio, 0.0, 1.0)
        _positive("ransac_px", self.ransac_px)
        _positive("pnp_px", self.pnp_px)


@dataclass(frozen=True)
class KeyframeConfig:
    """When a new image becomes a map keyframe."""

    min_distance: float = _f(1.0, "Travelled distance (m) since the last keyframe that triggers a new one.",
                             live=True, lo=0.0, hi=1e6)
    min_rotation_deg: float = _f(15.0, "Heading change (deg) since the last keyframe that triggers a new one.",
                                 live=True, lo=0.0, hi=360.0)
    max_interval: float = _f(0.0, "Seconds after which a keyframe is taken anyway (0 = never).", live=True,
                             lo=0.0, hi=1e6)
    novelty_threshold: float = _f(0.0, "Appearance novelty: a frame whose cosine similarity to the last "
                                  "keyframe is below this becomes a keyframe even without motion "
                                  "(0 = off; costs one inference per frame).", live=True, lo=0.0, hi=1.0)

    def __post_init__(self) -> None:
        _range("novelty_threshold", self.novelty_threshold, 0.0, 1.0)
        _range("min_distance", self.min_distance, 0.0, math.inf)
        _range("min_rotation_deg", self.min_rotation_deg, 0.0, 360.0)
        _range("max_interval", self.max_interval, 0.0, math.inf)


@dataclass(frozen=True)
class MapBuilderConfig(CameraNodeConfig):
    """Behaviour of the map builder (core and node)."""

    map_dir: str = _f("", "Directory the map is written to.")
    depth_topics: list = _f([""], "Depth image aligned to each camera (16UC1 mm or 32FC1 m; same order as "
                            "camera_topics); '' = none. With depth, keyframes store 3-D points and verified "
                            "loop closures get a metric relative pose.")
    max_depth_age: float = _f(0.05, "Largest |t_image - t_depth| (s) to pair a keyframe with a depth image.",
                              lo=0.0, hi=10.0)
    pose_source: str = _f("odometry", "Where image poses come from: 'odometry' (nav_msgs/Odometry on "
                          "pose_topic), 'navsatfix' (sensor_msgs/NavSatFix on pose_topic; positions east/north "
                          "of the first fix) or 'tf' (map_frame -> base_frame at the image stamp; needs tf2_ros).")
    pose_topic: str = _f("odom", "Topic of the pose source.")
    pose_qos: str = _f("sensor_data", "QoS of the pose subscription: 'sensor_data' (best effort: connects to "
                       "reliable and best-effort publishers) or 'reliable'.")
    max_pose_age: float = _f(0.5, "Maximum |t_image - t_pose| in seconds to use the nearest pose when an "
                             "image cannot be interpolated between two.", live=True, lo=1e-6, hi=3600.0)
    max_interpolation_gap: float = _f(2.0, "Largest gap (s) between two poses that an image stamp may be "
                                      "interpolated across.", live=True, lo=0.0, hi=3600.0)
    max_pose_wait: float = _f(1.0, "Seconds (wall clock) an image waits for the pose after its stamp "
                              "before it is paired with what is there or skipped.", live=True, lo=0.0, hi=60.0)
    autosave_period: float = _f(60.0, "Seconds between automatic saves (0 = only on request and shutdown).")
    map_frame: str = _f("map", "Frame of the keyframe poses for pose sources without one (navsatfix, tf "
                        "target); odometry poses keep their message's header.frame_id.")
    base_frame: str = _f("base_link", "Robot frame looked up in TF (pose_source 'tf').")
    optimized_path_topic: str = _f("", "nav_msgs/Path of the SLAM back end's optimised keyframe trajectory "
                                   "(e.g. LIO-SAM's lio_sam/mapping/path): every map keyframe's pose follows it "
                                   "(matched by stamp, interpolated); '' = off.")
    max_path_gap: float = _f(1.0, "Largest gap (s) between two path poses a keyframe stamp is interpolated "
                             "across, and largest |t_keyframe - t_pose| for the nearest one otherwise.", live=True,
                             lo=0.0, hi=3600.0)

    def __post_init__(self) -> None:
        self._check_common()
        _range("max_path_gap", self.max_path_gap, 0.0, math.inf)
        _choice("pose_source", self.pose_source, ("odometry", "navsatfix", "tf"))
        _choice("pose_qos", self.pose_qos, QOS_NAMES)
        _positive("max_pose_age", self.max_pose_age)
        _range("max_interpolation_gap", self.max_interpolation_gap, 0.0, math.inf)
        _range("max_pose_wait", self.max_pose_wait, 0.0, 60.0)
        _range("autosave_period", self.autosave_period, 0.0, math.inf)


def _pose7(key: str, p: Any) -> None:
    if not (isinstance(p, (list, tuple)) and len(p) == 7 and all(isinstance(v, (int, float)) and math.isfinite(v)
                                                                for v in p)):
        raise ConfigError(f"{key}: must be 7 finite numbers (x y z qx qy qz qw), got {p!r}")
    n = math.sqrt(sum(float(v) ** 2 for v in p[3:]))
    if abs(n - 1.0) > 1e-3:
        raise ConfigError(f"{key}: the quaternion {list(p[3:])} is not unit length ({n:.4f})")


def _camera_topics(topics: Any) -> None:
    if not topics or not all(isinstance(t, str) and t for t in topics):
        raise ConfigError("camera_topics: must be a non-empty list of topic names")
    for t in topics:
        if t.startswith("/"):
            raise ConfigError(f"camera_topics: '{t}' is absolute; use relative names and remap")
    if len(set(topics)) != len(topics):
        raise ConfigError(f"camera_topics: {topics} lists a topic twice")


def _choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: '{value}' is not one of {', '.join(map(str, allowed))}")


def _positive(key: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
        raise ConfigError(f"{key}: must be a positive number, got {value!r}")


def _range(key: str, value: float, lo: float, hi: float) -> None:
    if not (isinstance(value, (int, float)) and not math.isnan(value) and lo <= value <= hi):
        raise ConfigError(f"{key}: must be within [{lo}, {hi}], got {value!r}")


def from_dict(cls: type[T], values: Mapping[str, Any], source: str = "config") -> T:
    """Build config dataclass ``cls`` from a mapping, checking names and types.

    Unknown keys and values of the wrong type raise ConfigError naming the key and ``source``.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)} for {cls.__name__}; "
                          f"known: {', '.join(fields)}")
    clean: dict[str, Any] = {}
    defaults = cls()  # type: ignore[call-arg]
    for key, value in values.items():
        expected = type(getattr(defaults, key))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if expected is list and isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            raise ConfigError(f"{source}: key '{key}' must be {expected.__name__}, "
                              f"got {type(value).__name__} {value!r}")
        clean[key] = value
    try:
        return cls(**clean)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict of a config dataclass (lists copied)."""
    return dataclasses.asdict(cfg)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; raise ConfigError naming the file on any problem."""
    from vpr_ros.files import read_text

    p = Path(path)
    try:
        data = yaml.safe_load(read_text(p, "YAML file", ConfigError))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _declared(key: str, sections: Mapping[str, type]) -> bool:
    prefix, _, name = key.rpartition(".")
    cls = sections.get(prefix)
    return cls is not None and name in {f.name for f in dataclasses.fields(cls)}


def ros_parameters(data: Mapping[str, Any], node_name: str, source: str) -> dict[str, Any]:
    """Extract the ``ros__parameters`` of ``node_name`` (or ``/**``) from a ROS params YAML.

    Returns a flat mapping; nested groups are joined with '.', as ROS does.
    """
    merged: dict[str, Any] = {}
    for key in ("/**", node_name, "/" + node_name):
        section = data.get(key)
        if section is None:
            continue
        if not isinstance(section, dict) or "ros__parameters" not in section:
            raise ConfigError(f"{source}: section '{key}' has no 'ros__parameters'")
        merged.update(_flatten(section["ros__parameters"] or {}))
    return merged


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def split_sections(flat: Mapping[str, Any], sections: Mapping[str, type]) -> dict[str, Any]:
    """Split 'model.x' / 'keyframes.y' style keys into per-section config objects.

    ``sections`` maps a prefix ('' for top-level) to its dataclass; every key must
    belong to exactly one section, otherwise ConfigError names it.
    """
    buckets: dict[str, dict[str, Any]] = {p: {} for p in sections}
    for key, value in flat.items():
        prefix, _, name = key.rpartition(".")
        if prefix not in buckets:
            raise ConfigError(f"unknown parameter group '{prefix}' in key '{key}'")
        buckets[prefix][name] = value
    return {p: from_dict(cls, buckets[p], source=p or "parameters") for p, cls in sections.items()}


def load_node_config(path: str | Path | None, node_name: str, sections: Mapping[str, type]) -> dict[str, Any]:
    """Load a ROS-style params file for ``node_name`` into validated config objects. Keys of the
    shared ``/**`` section that belong to the package's other node (one file often serves the
    localizer and the map builder) are ignored, as that node's ROS parameters are; a key no
    vpr_ros node has is refused (a typo)."""
    flat: dict[str, Any] = {}
    if path:
        data = read_yaml(path)
        shared = ros_parameters({"/**": data["/**"]} if "/**" in data else {}, node_name, str(path))
        siblings = [s for s in (LOCALIZER_SECTIONS, MAP_BUILDER_SECTIONS) if s is not sections]
        flat = {k: v for k, v in shared.items()
                if _declared(k, sections) or not any(_declared(k, other) for other in siblings)}
        flat.update(ros_parameters({k: v for k, v in data.items() if k != "/**"}, node_name, str(path)))
    try:
        return split_sections(flat, sections)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


MODEL_PATH_KEYS = ("weights", "pca", "onnx")


def resolve_model_paths(section: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """Relative ``weights``/``pca``/``onnx`` paths of a model YAML are relative to the YAML's
    folder when the file exists there (so a checkpoint folder can be moved as a whole)."""
    out = dict(section)
    for key in MODEL_PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute() and (base / value).exists():
            out[key] = str(base / value)
    return out


def read_model_section(path: str | Path) -> dict[str, Any]:
    """The ``model:`` section of a models/*.yaml file, its relative paths resolved (unvalidated)."""
    section = read_yaml(path).get("model")
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: no 'model:' section")
    return resolve_model_paths(section, Path(path).parent)


def model_config_from(model_config: str = "", params_file: str = "", **overrides: Any) -> ModelConfig:
    """ModelConfig from a ``models/*.yaml`` file (its ``model:`` section) and/or the ``model.*``
    parameters of a params file, then non-empty ``overrides``."""
    model: dict[str, Any] = read_model_section(model_config) if model_config else {}
    if params_file:
        flat = ros_parameters(read_yaml(params_file), "localizer", params_file)
        model.update({k.split(".", 1)[1]: v for k, v in flat.items() if k.startswith("model.")})
    model.update({k: v for k, v in overrides.items() if v not in ("", None, False)})
    return from_dict(ModelConfig, model, source="model settings")


@dataclass(frozen=True)
class LiveLoopConfig:
    """Loop closure by the map builder against its own growing map (for a SLAM back end)."""

    enabled: bool = _f(False, "Close loops while mapping: each new keyframe (its one forward pass) is matched "
                       "against the keyframes older than exclude_recent, re-ranked and verified as the localizer "
                       "does, and verified closures go to vpr/loop_closures ([t_cur, t_pre], LIO-SAM) and "
                       "vpr/loop_closure_table before the keyframe is added. Works from an empty map; the "
                       "keyframes of a map given at start are searched too (marked 'prior', never sent as pairs).")
    exclude_recent: float = _f(30.0, "Keyframes of this session taken less than this many seconds before the "
                               "new one are not searched; also the minimum |t_cur - t_pre| (LIO-SAM ignores "
                               "pairs closer than its historyKeyframeSearchTimeDiff, 30 s).", live=True,
                               lo=0.0, hi=1e9)
    score_threshold: float = _f(0.5, "Minimum cosine similarity of the global descriptors.", live=True,
                                lo=-1.0, hi=1.0)
    temporal_consistency: int = _f(1, "Consecutive keyframes whose matches must agree (map ids within "
                                   "consistency_window) before a closure is published.", live=True, lo=1, hi=1000)
    consistency_window: int = _f(3, "Map ids of consecutive matches that agree differ by at most this.",
                                 live=True, lo=0, hi=1_000_000)
    max_loop_closure_rate: float = _f(1.0, "Maximum loop closures per second (keyframe time).", live=True,
                                      lo=1e-6, hi=1000.0)
    temporal_filter: str = _f("consistency", TEMPORAL_FILTER_HELP, live=True)
    sequence_length: int = _f(5, "Keyframes along the diagonal scored by temporal_filter 'sequence'.", live=True,
                              lo=2, hi=100)
    top_k: int = _f(5, "Matches kept per keyframe (re-ranking looks at verification.rerank_top_k).", live=True,
                    lo=1, hi=1000)
    position_sigma: float = _f(2.0, "Position standard deviation (m) of vpr/pose at score 1 (unverified).",
                               live=True, lo=1e-6, hi=1e6)
    camera_pose_in_base: list = _f(OPTICAL_IN_BASE, "Pose of the camera's optical frame in the robot frame "
                                   "(x y z qx qy qz qw): turns a verified camera-to-camera pose into the robot's.")

    def __post_init__(self) -> None:
        _pose7("camera_pose_in_base", self.camera_pose_in_base)
        _range("exclude_recent", self.exclude_recent, 0.0, math.inf)
        _range("score_threshold", self.score_threshold, -1.0, 1.0)
        _positive("temporal_consistency", self.temporal_consistency)
        _range("consistency_window", self.consistency_window, 0, 10**9)
        _positive("max_loop_closure_rate", self.max_loop_closure_rate)
        _positive("top_k", self.top_k)
        _positive("position_sigma", self.position_sigma)
        _choice("temporal_filter", self.temporal_filter, TEMPORAL_FILTERS)
        _range("sequence_length", self.sequence_length, 2, 100)

    def localizer(self) -> "LocalizerConfig":
        """The localizer's rules with these values (what the live closer runs)."""
        return LocalizerConfig(top_k=self.top_k, score_threshold=self.score_threshold,
                               temporal_consistency=self.temporal_consistency,
                               consistency_window=self.consistency_window, min_time_separation=self.exclude_recent,
                               max_loop_closure_rate=self.max_loop_closure_rate, position_sigma=self.position_sigma,
                               temporal_filter=self.temporal_filter, sequence_length=self.sequence_length,
                               camera_pose_in_base=list(self.camera_pose_in_base))


@dataclass(frozen=True)
class InitialPoseConfig:
    """Relocalisation for Nav2 (``initial_pose.*``): the localizer publishes a verified metric pose
    as AMCL's initial pose (a kidnapped or freshly booted robot)."""

    enabled: bool = _f(False, "Publish geometry/PoseWithCovarianceStamped on initial_pose.topic from a match verified "
                       "with a metric relative pose (PnP on keyframe depth) whose position sigma is within "
                       "max_position_sigma. Opt-in.", live=True)
    topic: str = _f("initialpose", "Topic of the initial pose: relative, so a localizer in namespace "
                    "'robot1' publishes on /robot1/initialpose where that robot's AMCL listens ('/initialpose' "
                    "without a namespace).")
    mode: str = _f("once", "'once': the first qualifying pose after start, then again after each vpr/relocalize "
                   "call; 'always': every qualifying pose, at most one per min_interval s.", live=True)
    max_position_sigma: float = _f(0.5, "Largest position standard deviation (m, from the covariance) a published "
                                   "pose may have.", live=True, lo=0.0, hi=1e6)
    min_interval: float = _f(5.0, "Seconds (frame stamps) between two published poses in mode 'always'.", live=True,
                             lo=0.0, hi=1e9)

    def __post_init__(self) -> None:
        _choice("mode", self.mode, ("once", "always"))
        _range("max_position_sigma", self.max_position_sigma, 0.0, 1e6)
        _range("min_interval", self.min_interval, 0.0, 1e9)
        if not self.topic:
            raise ConfigError("topic: must not be empty")


@dataclass(frozen=True)
class FleetConfig:
    """Fleet mode (``ros2 run vpr_ros fleet`` beside a robot's map builder): the robot shares compact codes of
    its keyframes and closes loops with the other robots' (docs/fleet.md)."""

    robot_id: int = _f(0, "This robot's id in the fleet (0..65535, unique: a multi-robot back end keys its "
                       "poses by it).", lo=0, hi=65535)
    robot_name: str = _f("", "This robot's name in the fleet's messages and logs ('' = the node's namespace).")
    map_dir: str = _f("", "The map this robot's map builder writes (followed as a reader).")
    bandwidth_bytes_per_s: float = _f(4000.0, "Bytes per second this robot may send to the fleet on average "
                                      "(descriptors, feature requests and replies together; never exceeded).",
                                      lo=100.0, hi=1e9)
    burst_bytes: int = _f(65536, "Largest burst (bytes) above the average; at least the largest message (a "
                          "features reply: reply_features x 148 bytes for SIFT with 3-D points).", lo=2048, hi=10**9)
    per_packet: int = _f(10, "Keyframes per descriptor message (993 bytes each with 10).", lo=1, hi=64)
    reply_features: int = _f(200, "Most local features sent for one requested keyframe (those with 3-D points "
                             "first; SIFT with 3-D points: 148 bytes each).", lo=10, hi=20000)
    threshold: float = _f(0.4, "Least cosine of two fleet codes for a candidate whose features are requested "
                          "(model dependent: weight-free VLAD on the rendered corridor gives 0.28-0.65 for the same "
                          "place, at most 0.30 for another; geometric verification decides).", lo=-1.0, hi=1.0)
    top_k: int = _f(2, "Candidates per keyframe at most (each costs a features reply: about 30 KB).", lo=1, hi=64)
    poll_period: float = _f(1.0, "Seconds between two looks at the map for new keyframes.", lo=0.01, hi=3600.0)
    features_timeout: float = _f(30.0, "Seconds after which an unanswered feature request is asked again (a "
                                 "lost message costs a retry, never a closure).", lo=0.1, hi=1e6)
    camera_pose_in_base: list = _f(OPTICAL_IN_BASE, "Pose of this robot's camera optical frame in its base frame "
                                   "(x y z qx qy qz qw), sent with its features: closures relate the robots' base "
                                   "frames. Default: at the origin, looking along x.")

    def __post_init__(self) -> None:
        _range("robot_id", self.robot_id, 0, 65535)
        _range("bandwidth_bytes_per_s", self.bandwidth_bytes_per_s, 100.0, 1e9)
        _range("burst_bytes", self.burst_bytes, 2048, 10**9)
        _range("per_packet", self.per_packet, 1, 64)
        _range("reply_features", self.reply_features, 10, 20000)
        _range("threshold", self.threshold, -1.0, 1.0)
        _range("top_k", self.top_k, 1, 64)
        _range("poll_period", self.poll_period, 0.01, 3600.0)
        _range("features_timeout", self.features_timeout, 0.1, 1e6)
        _pose7("camera_pose_in_base", self.camera_pose_in_base)


LOCALIZER_SECTIONS: dict[str, type] = {"": LocalizerConfig, "model": ModelConfig,
                                       "verification": VerificationConfig, "initial_pose": InitialPoseConfig}
FLEET_SECTIONS: dict[str, type] = {"": FleetConfig, "verification": VerificationConfig}
MAP_BUILDER_SECTIONS: dict[str, type] = {"": MapBuilderConfig, "model": ModelConfig,
                                         "verification": VerificationConfig,
                                         "keyframes": KeyframeConfig, "index": IndexConfig,
                                         "loop_closure": LiveLoopConfig}

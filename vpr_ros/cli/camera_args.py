"""The camera model of an offline command's source: ``--camera-info-topic`` (a bag's CameraInfo)
or ``--camera-info`` (a ROS camera_info YAML, for folders and bags without CameraInfo)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from vpr_ros.errors import DatasetError

if TYPE_CHECKING:
    from vpr_ros.verification.features import CameraIntrinsics


def add_camera_args(ap: argparse.ArgumentParser, topic_help: str = "the camera's sensor_msgs/CameraInfo "
                    "(geometric verification)") -> None:
    """--camera-info-topic (a bag's CameraInfo) and --camera-info (a camera_info YAML)."""
    ap.add_argument("--camera-info-topic", default="", help=f"bag: {topic_help}")
    ap.add_argument("--camera-info", default="", metavar="YAML",
                    help="the camera model as a ROS camera_info YAML (what camera_calibration writes), for image "
                         "folders and bags without CameraInfo; without one, verification uses the fundamental matrix")


def camera_model_of(a: argparse.Namespace, is_bag: bool, source: Path, prog: str) -> "CameraIntrinsics | None":
    """The intrinsics the arguments name (None: no camera model; verification then uses the
    fundamental matrix); notes (uncorrected distortion) go to stderr."""
    if a.camera_info_topic and a.camera_info:
        raise DatasetError("give --camera-info-topic or --camera-info, not both")
    if a.camera_info_topic:
        if not is_bag:
            raise DatasetError("--camera-info-topic applies to bags (use --camera-info YAML for a folder)")
        from vpr_ros.mapping.bag_source import bag_camera_info

        return bag_camera_info(source, a.camera_info_topic)
    if a.camera_info:
        from vpr_ros.verification.camera_model import read_camera_info

        intrinsics, notes = read_camera_info(a.camera_info)
        for note in notes:
            print(f"{prog}: NOTE: {note}", file=sys.stderr)
        return intrinsics
    return None

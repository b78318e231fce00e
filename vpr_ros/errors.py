"""Domain errors of vpr_ros, all in one place.

Every error names the thing that is wrong (file, key, shape, encoding) so that the
message alone tells a user what to fix. Library code raises these; only CLI entry
points turn them into exit codes.
"""
from __future__ import annotations


class VprError(Exception):
    """Base class of every error raised on purpose by vpr_ros."""


class ConfigError(VprError):
    """A configuration value is missing, unknown or out of range (names the key)."""


class CheckpointError(VprError):
    """A weights file cannot be read or does not fit the model (names file and keys)."""


class MapError(VprError):
    """A map directory is missing, corrupt, or was built by another model."""


class DamagedPending(MapError):
    """A stored pending keyframe (accepted, not yet encoded) fails its checksum or cannot be parsed;
    the good ones are still encoded, this one stays until it is dropped explicitly."""


class ImageError(VprError):
    """An input image cannot be used (empty, unsupported encoding, undecodable, NaN)."""


class BackendUnavailable(VprError):
    """A requested inference backend cannot run here (missing package or device)."""


class EngineBuildError(VprError):
    """An inference engine could not be built or loaded."""


class DatasetError(VprError):
    """A dataset folder or ground-truth table is malformed (names file and row)."""


class AccuracyGateError(EngineBuildError):
    """A built engine or quantized graph disagrees with the FP32 reference beyond tolerance."""


class FleetError(VprError):
    """A fleet message cannot be used: malformed, damaged, or from a robot running another model
    (names the robot and the reason)."""


class ForeignModel(FleetError):
    """A fleet packet from a robot whose model computes other descriptors (``robot`` names it)."""

    def __init__(self, robot: object, message: str) -> None:
        super().__init__(message)
        self.robot = robot

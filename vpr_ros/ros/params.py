"""ROS parameters from the config dataclasses: one declared parameter per field (description,
range, read-only unless the field is ``live``), and live updates validated by the same
dataclasses (``ros2 param set`` gets the reason when a value is refused)."""
from __future__ import annotations

import array
import dataclasses
from typing import Any, Callable, Mapping

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType,
                                SetParametersResult)
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node
from rclpy.parameter import Parameter

from vpr_ros.config import from_dict
from vpr_ros.errors import ConfigError, VprError

#: parameters rclpy declares on every node and handles itself (use_sim_time: the clock source)
ROS_OWNED = frozenset({"use_sim_time", "start_type_description_service"})

#: apply(new configs by section, changed parameter names) -> None, or raise VprError to refuse
Apply = Callable[[dict[str, Any], set[str]], None]


def _descriptor(f: dataclasses.Field, default: Any) -> ParameterDescriptor:
    md = f.metadata
    desc = ParameterDescriptor(description=md.get("help", ""), read_only=not md.get("live", False))
    if isinstance(default, list):
        floats = bool(default) and all(isinstance(v, float) for v in default)
        desc.type = ParameterType.PARAMETER_DOUBLE_ARRAY if floats else ParameterType.PARAMETER_STRING_ARRAY
    lo, hi = md.get("lo"), md.get("hi")
    if lo is not None and hi is not None:
        if isinstance(default, bool):
            pass
        elif isinstance(default, int):
            desc.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
        elif isinstance(default, float):
            desc.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    return desc


def _plain(value: Any) -> Any:
    """Parameter value -> plain Python (arrays, including array.array of doubles, -> list)."""
    if isinstance(value, (list, tuple, array.array)):
        return [float(v) if isinstance(v, float) else v for v in value]
    return value


def _name(prefix: str, field: str) -> str:
    return f"{prefix}.{field}" if prefix else field


def declare_config(node: Node, sections: Mapping[str, type]) -> dict[str, Any]:
    """Declare every field of every section ('' = top level, else '<prefix>.<field>') with its
    default, description, range and read-only flag, then build validated config objects from
    the values the node actually got (params file, command line)."""
    out: dict[str, Any] = {}
    for prefix, cls in sections.items():
        defaults = cls()
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = _name(prefix, f.name)
            default = getattr(defaults, f.name)
            try:
                node.declare_parameter(name, default, _descriptor(f, default))
            except InvalidParameterTypeException as exc:
                kind = type(default).__name__
                raise ConfigError(f"parameter '{name}' must be {kind}{' (write 1.0, not 1)' if kind == 'float' else ''}"
                                  f": {exc}") from None
            except InvalidParameterValueException as exc:
                raise ConfigError(f"parameter '{name}': {exc}") from None
            values[f.name] = _plain(node.get_parameter(name).value)
        out[prefix] = from_dict(cls, values, source=f"parameters of {node.get_name()}" +
                                (f" ({prefix}.*)" if prefix else ""))
    return out


class LiveParameters:
    """Validates ``ros2 param set`` requests against the config dataclasses and hands accepted
    ones to ``apply``; refusals carry the reason (shown by ``ros2 param set``)."""

    def __init__(self, node: Node, sections: Mapping[str, type], current: dict[str, Any], apply: Apply) -> None:
        self.sections = dict(sections)
        self.current = current
        self.apply = apply
        self._fields = {_name(p, f.name): (p, f) for p, cls in sections.items() for f in dataclasses.fields(cls)}
        node.add_on_set_parameters_callback(self._on_set)

    def _on_set(self, params: list[Parameter]) -> SetParametersResult:
        changes: dict[str, dict[str, Any]] = {}
        for p in params:
            if p.name in ROS_OWNED:
                continue  # rclpy's own (use_sim_time switches the clock itself)
            if p.name not in self._fields:
                return SetParametersResult(successful=False, reason=f"unknown parameter '{p.name}'")
            prefix, f = self._fields[p.name]
            if not f.metadata.get("live"):
                return SetParametersResult(successful=False, reason=f"'{p.name}' is read-only (set it at start-up)")
            changes.setdefault(prefix, {})[f.name] = _plain(p.value)
        if not changes:
            return SetParametersResult(successful=True)
        params = [p for p in params if p.name not in ROS_OWNED]
        try:
            new = dict(self.current)
            for prefix, fields in changes.items():
                base = dataclasses.asdict(self.current[prefix])
                new[prefix] = from_dict(self.sections[prefix], {**base, **fields}, source="parameter")
            self.apply(new, {p.name for p in params})
        except VprError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.current.update(new)
        return SetParametersResult(successful=True)

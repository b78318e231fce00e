"""Declare one ROS parameter per config field (with its description) and read them back."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node

from vpr_ros.config import from_dict


def declare_config(node: Node, sections: Mapping[str, type]) -> dict[str, Any]:
    """Declare every field of every section ('' = top level, else '<prefix>.<field>')
    with its default and description, then build validated config objects from the
    values the node actually got (params file, command line)."""
    out: dict[str, Any] = {}
    for prefix, cls in sections.items():
        defaults = cls()
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f"{prefix}.{f.name}" if prefix else f.name
            default = getattr(defaults, f.name)
            desc = ParameterDescriptor(description=f.metadata.get("help", ""))
            if isinstance(default, list):
                from rcl_interfaces.msg import ParameterType

                desc.type = ParameterType.PARAMETER_STRING_ARRAY
            node.declare_parameter(name, default, desc)
            value = node.get_parameter(name).value
            values[f.name] = list(value) if isinstance(value, (list, tuple)) else value
        out[prefix] = from_dict(cls, values, source=f"parameters of {node.get_name()}" +
                                (f" ({prefix}.*)" if prefix else ""))
    return out

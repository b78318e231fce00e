"""Inference backends behind one interface (see :mod:`vpr_ros.runtime.base`)."""

"""vpr_ros: visual place recognition for ROS 2.

The core (everything outside ``vpr_ros.ros``) is importable without ROS; see README.md.
"""
import logging as _logging

__version__ = "0.4.0"

# faiss says at INFO which CPU build it loaded ("Could not load library with AVX2 support" is its
# normal fallback on CPUs with AVX-512): nothing a user can act on
_logging.getLogger("faiss.loader").setLevel(_logging.WARNING)

"""vpr_ros: visual place recognition for ROS 2.

The core (everything outside ``vpr_ros.ros``) is importable without ROS; see README.md.
"""
__version__ = "0.4.0"

"""Fleet mode (issue 35): robots share compact descriptors of their keyframes and close loops
between each other. Pure Python; the ROS 2 layer lives in :mod:`vpr_ros.ros`."""

"""Maps: storage, keyframe selection and builders (ROS-free)."""

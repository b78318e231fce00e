"""Re-ranking and geometric verification: local features, matching, two-view geometry, relative
pose and covariance (ROS-free, between runtime and localization)."""

"""Build a map from live camera images and odometry.

    ros2 launch vpr_ros build_map.launch.py map_dir:=/path/to/new_map camera_topic:=/camera/image_raw

With a SLAM back end (LIO-SAM): ... loop_closure:=true optimized_path_topic:=/lio_sam/mapping/path
In a fleet: ... namespace:=robot_a fleet:=true robot_id:=1
Index snapshot at any time: ros2 service call /vpr/save_map std_srvs/srv/Trigger (keyframes are on
disk as they are accepted)
Without ros2 launch, the same graph: vpr_ros_launch build_map --map-dir ... --camera-topic ...
"""
from vpr_ros.launch_graph import build_map_graph
from vpr_ros.ros.launch_support import generate

ARGUMENTS = [
    ("map_dir", "", "Directory the map is written to (empty: keep map_dir from params_file)."),
    ("params_file", None, "ROS parameters YAML of the map builder (default: config/map_builder.yaml)."),
    ("backend", "", "Inference backend: auto, tensorrt, torch_cudagraph, onnxruntime or torch (empty: keep the params_file value)."),
    ("transport", "", "Image transport: raw (sensor_msgs/Image) or compressed ('<camera_topic>/compressed'); empty: keep the params_file value."),
    ("weights", "", "Model weights file (model.weights; empty: keep the params_file value; a network without weights is refused unless model.random_weights)."),
    ("rviz", "false", "Also start RViz 2 with the package's rviz/vpr_ros.rviz (map keyframes, matches, pose, debug image)."),
    ("camera_topic", "image", "Camera image topic; '<camera_topic>/compressed' with transport:=compressed in the params."),
    ("odom_topic", "odom", "nav_msgs/Odometry topic giving the pose of each image."),
    ("namespace", "", "Namespace of the map_builder node and its topics."),
    ("use_sim_time", "false", "Use /clock (simulation or bag playback with --clock) as the node's time."),
    ("log_level", "info", "Log level of the node: debug, info, warn, error or fatal."),
    ("lifecycle", "false", "Start the managed (lifecycle) variant of the node instead."),
    ("autostart", "true", "With lifecycle:=true, configure and activate it right away (false: leave it "
                          "to your lifecycle manager or 'ros2 lifecycle set')."),
    ("loop_closure", "false", "Close loops while mapping: verified [t_cur, t_pre] pairs of this session on "
                              "vpr/loop_closures for a SLAM back end (LIO-SAM's lio_loop/loop_closure_detection)."),
    ("optimized_path_topic", "", "nav_msgs/Path of the SLAM back end's optimised keyframes (e.g. "
                                 "lio_sam/mapping/path): keyframe poses follow it (empty: keep the params_file value)."),
    ("fleet", "false", "Also start the fleet node in the same namespace: it shares this map's places with the other "
                       "robots and closes loops between them (docs/fleet.md)."),
    ("robot_id", "0", "With fleet:=true, this robot's id in the fleet (0..65535, unique)."),
]


def generate_launch_description():
    return generate(build_map_graph, ARGUMENTS, "map_builder.yaml")

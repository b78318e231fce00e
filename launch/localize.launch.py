"""Localize against a map.

    ros2 launch vpr_ros localize.launch.py map_dir:=/path/to/map camera_topic:=/camera/image_raw

Without ros2 launch, the same graph: vpr_ros_launch localize --map-dir ... --camera-topic ...
"""
from vpr_ros.launch_graph import localize_graph
from vpr_ros.ros.launch_support import generate

ARGUMENTS = [
    ("map_dir", "", "Map directory to localize against (empty: keep map_dir from params_file)."),
    ("params_file", None, "ROS parameters YAML of the localizer (default: config/localizer.yaml)."),
    ("backend", "", "Inference backend: auto, tensorrt, torch_cudagraph, onnxruntime or torch (empty: keep the params_file value)."),
    ("transport", "", "Image transport: raw (sensor_msgs/Image) or compressed ('<camera_topic>/compressed'); empty: keep the params_file value."),
    ("weights", "", "Model weights file (model.weights; empty: keep the params_file value; a network without weights is refused unless model.random_weights)."),
    ("rviz", "false", "Also start RViz 2 with the package's rviz/vpr_ros.rviz (map keyframes, matches, pose, debug image)."),
    ("camera_topic", "image", "Camera image topic; '<camera_topic>/compressed' with transport:=compressed in the params."),
    ("namespace", "", "Namespace of the localizer node and its topics."),
    ("use_sim_time", "false", "Use /clock (simulation or bag playback with --clock) as the node's time."),
    ("log_level", "info", "Log level of the node: debug, info, warn, error or fatal."),
    ("lifecycle", "false", "Start the managed (lifecycle) variant of the node instead."),
    ("autostart", "true", "With lifecycle:=true, configure and activate it right away (false: leave it "
                          "to your lifecycle manager or 'ros2 lifecycle set')."),
]


def generate_launch_description():
    return generate(localize_graph, ARGUMENTS, "localizer.yaml")

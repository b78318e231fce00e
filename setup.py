"""ament_python package definition of vpr_ros (also pip-installable)."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "vpr_ros"

setup(
    name=PACKAGE,
    version="0.4.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", sorted(glob("launch/*.launch.py"))),
        (f"share/{PACKAGE}/config", sorted(glob("config/*.yaml"))),
        (f"share/{PACKAGE}/rviz", sorted(glob("rviz/*.rviz"))),
        (f"share/{PACKAGE}/models", sorted(glob("models/*.yaml")) + ["models/README.md"]),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="vpr_ros maintainers",
    maintainer_email="maintainers@vpr-ros.dev",
    description="Visual place recognition for ROS 2 (DINOv2 student, faiss maps, loop closures).",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            # nodes (ros2 run vpr_ros <name>)
            "localizer = vpr_ros.ros.localizer_node:main",
            "map_builder = vpr_ros.ros.map_builder_node:main",
            "localizer_lifecycle = vpr_ros.ros.localizer_node:main_lifecycle",
            "map_builder_lifecycle = vpr_ros.ros.map_builder_node:main_lifecycle",
            "fleet = vpr_ros.ros.fleet_node:main",
            # commands
            "vpr_ros_demo = vpr_ros.cli.demo:main",
            "vpr_ros_launch = vpr_ros.cli.launch:main",
            "vpr_ros_build_map = vpr_ros.cli.build_map:main",
            "vpr_ros_model_report = vpr_ros.cli.model_report:main",
            "vpr_ros_eval = vpr_ros.cli.eval:main",
            "vpr_ros_eval_loops = vpr_ros.cli.eval_loops:main",
            "vpr_ros_weights = vpr_ros.cli.weights:main",
            "vpr_ros_export = vpr_ros.cli.export:main",
            "vpr_ros_convert_weights = vpr_ros.cli.convert_weights:main",
            "vpr_ros_build_engine = vpr_ros.cli.build_engine:main",
            "vpr_ros_check_graph = vpr_ros.cli.check_graph:main",
            "vpr_ros_quantize = vpr_ros.cli.quantize:main",
            "vpr_ros_map_info = vpr_ros.cli.map_info:main",
            "vpr_ros_merge_maps = vpr_ros.cli.merge_maps:main",
            "vpr_ros_localize = vpr_ros.cli.localize:main",
            "vpr_ros_distill = vpr_ros.cli.distill:main",
            "vpr_ros_finetune = vpr_ros.cli.finetune:main",
            "vpr_ros_train_joint = vpr_ros.cli.train_joint:main",
            "vpr_ros_fit_pca = vpr_ros.cli.fit_pca:main",
            "vpr_ros_fit_vocabulary = vpr_ros.cli.fit_vocabulary:main",
        ],
    },
)

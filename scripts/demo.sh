#!/usr/bin/env bash
# Set everything up (idempotent) and run the demo: build a map, localize through the real
# ROS 2 nodes, print Recall@1 / loop closures / latency, write demo_output/demo.png.
# Extra arguments go to vpr_ros_demo (e.g. --dataset ../shared/data/corridor).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/vpr_ros_demo "$@"

"""``vpr_ros_distill``: stage 1 - the student regresses the teacher's descriptors (MSE).

Every student parameter trains (official recipe: Adam 2.5e-5); the teacher (CricaVPR, from
``teacher.weights``) runs frozen on each batch, or once over the images into a disk cache
(``train.teacher_cache``). Data: GSV-Cities (``data.gsv_root``) or plain image folders
(``data.image_folders``).
"""
from __future__ import annotations

from vpr_ros.cli.train_common import train_command


def main(argv: list[str] | None = None) -> int:
    return train_command("distill", "vpr_ros_distill", __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    raise SystemExit(main())

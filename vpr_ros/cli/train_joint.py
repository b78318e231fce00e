"""``vpr_ros_train_joint``: the SciceVPR objective - multi-similarity + distillation MSE.

Same data, freezing and optimizer as fine-tuning, plus ``train.distill_weight`` x the squared
error to the teacher's descriptors (teacher on each batch, or cached with ``train.teacher_cache``).
``config/train_joint.yaml`` is SciceVPR's stage as its code runs it: the student starts from the
Super-CricaVPR teacher's backbone and conv (``train.student_from_teacher``).
"""
from __future__ import annotations

from vpr_ros.cli.train_common import train_command


def main(argv: list[str] | None = None) -> int:
    return train_command("joint", "vpr_ros_train_joint", __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""``vpr_ros_finetune``: stage 2 - metric learning on places (multi-similarity loss + miner).

Blocks 1-8 of the backbone and their adapters are frozen (their BatchNorm in eval mode); the
rest trains with AdamW 2e-4, weight decay 1e-3, linear warm-up. Data: GSV-Cities
(``data.gsv_root``), P places x K images per batch; validation on ``data.val_dataset`` or
held-out places.
"""
from __future__ import annotations

from vpr_ros.cli.train_common import train_command


def main(argv: list[str] | None = None) -> int:
    return train_command("finetune", "vpr_ros_finetune", __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""What the three training commands share: arguments, run folder, logging, exit codes."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from typing import TYPE_CHECKING

from vpr_ros.cli import EXPECTED_ERRORS, HelpWithDefaults, report_error

if TYPE_CHECKING:
    from vpr_ros.training.distributed import DistInfo
    from vpr_ros.training.run_dir import RunDir

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def default_train_config(stage: str) -> str:
    """``config/train_<stage>.yaml`` from the installed share directory or the source tree."""
    from vpr_ros.launch_graph import default_params_file

    return default_params_file(f"train_{stage}.yaml")


def train_command(stage: str, prog: str, description: str, argv: list[str] | None) -> int:
    """Parse arguments, create or reopen the run folder, train; returns the exit code."""
    ap = argparse.ArgumentParser(formatter_class=HelpWithDefaults, prog=prog, description=description,
                                 epilog="Example: %(prog)s --set data.gsv_root=/data/gsv-cities "
                                        "--set train.steps=20000 --set model.weights=student.safetensors")
    ap.add_argument("--config", default=None,
                    help=f"training YAML (default: the package's config/train_{stage}.yaml)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override one setting (YAML value), e.g. --set optim.lr=1e-4; repeatable")
    ap.add_argument("--run-dir", default="", help="run folder to create (default: <train.output_root>/"
                    f"{stage}-<date>-<time>)")
    ap.add_argument("--resume", default="", metavar="RUN_DIR",
                    help="continue a run from its newest checkpoint (its config.yaml + any --set)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    ap.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="[%(levelname)s] [%(name)s] %(message)s")
    from vpr_ros.training import distributed
    from vpr_ros.training.run_dir import RunDir
    from vpr_ros.training.settings import load_settings
    from vpr_ros.training.trainer import Trainer, resolve_device

    args = list(sys.argv[1:] if argv is None else argv)
    dist = distributed.DistInfo()
    created: Path | None = None  # the run folder this call made
    try:
        dist = distributed.from_environment()
        if not dist.main:
            logging.getLogger().setLevel(logging.WARNING)  # rank 0 reports
        if a.resume:
            run = RunDir.reopen(a.resume)
            settings = load_settings(stage, run.path / "config.yaml", a.overrides)
            checkpoint = run.latest_checkpoint()
        else:
            settings = load_settings(stage, a.config or default_train_config(stage), a.overrides)
            distributed.start(dist, resolve_device(settings.train.device, dist))
            run = _new_run_dir(a.run_dir, settings.train.output_root, stage, dist)
            created = run.path
            checkpoint = None
        trainer = Trainer(settings, run, checkpoint, progress=not a.no_progress, dist=dist)
        if dist.main:
            run.record_start(settings.to_yaml(), args)
            print(f"[{prog}] run folder {run.path}; {len(trainer.data.paths)} training images; best chosen on "
                  f"validation {trainer.metric}; device {trainer.device}"
                  f"{'' if trainer.amp is None else f' AMP {trainer.amp}'}"
                  f"{f'; {dist.world} processes' if dist.active else ''}", flush=True)
        best = trainer.run()
    except KeyboardInterrupt:
        print(f"[{prog}] interrupted; continue with: {prog} --resume <run folder>", file=sys.stderr)
        return EXIT_INTERRUPTED
    except FileExistsError as exc:
        print(f"[{prog}] error: run folder already exists: {exc.filename}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except EXPECTED_ERRORS as exc:
        return report_error(prog, exc)
    except FloatingPointError as exc:
        print(f"[{prog}] training diverged: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if "run" in locals() and dist.main:
            run.close()
            if created is not None and created.is_dir() and not any(created.iterdir()):
                created.rmdir()  # a refused start leaves nothing that would block the retry
        distributed.stop(dist)
    if not dist.main:
        return EXIT_OK
    print(f"[{prog}] done: best {best['metric']} {best['value']:.4f} at step {best['step']} -> "
          f"{run.path / 'best' / 'model.yaml'}; curves in {run.path / 'metrics.png'}")
    return EXIT_OK


def _new_run_dir(requested: str, root: str, stage: str, dist: "DistInfo") -> "RunDir":
    """Rank 0 creates the run folder (``requested`` or a dated one under ``root``); under torchrun
    the other ranks receive its path."""
    from vpr_ros.training import distributed
    from vpr_ros.training.run_dir import RunDir

    path = ""
    if dist.main:
        if requested:
            Path(requested).mkdir(parents=True, exist_ok=False)
            path = requested
        else:
            path = str(RunDir.create(root, stage).path)
    return RunDir(Path(distributed.broadcast_text(path, dist)))

"""``vpr_ros_weights``: list the released weight files, or fetch one by name into the cache.

    vpr_ros_weights list
    vpr_ros_weights get d2vpr            # then: model.weights / --weights and --model-config as printed

Files are checked before use: against the publisher's sha256 where one is published (Hugging
Face), otherwise against the hash recorded at the first download. Downloads resume. Never run by
the nodes: fetch once, then copy the file to the robot.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from vpr_ros.cli import EXPECTED_ERRORS, HelpWithDefaults, report_error


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(formatter_class=HelpWithDefaults, prog="vpr_ros_weights",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=("list", "get"), help="list the releases, or get one")
    ap.add_argument("name", nargs="?", default="", help="get: the release's name (see list)")
    ap.add_argument("--cache-dir", default="", help="where files go (default: $VPR_ROS_CACHE/weights or "
                    "~/.cache/vpr_ros/weights)")
    ap.add_argument("--url", default="", help="get: a mirror of the file in place of the publisher's address")
    ap.add_argument("--pointer-url", default="", help="get: a mirror of the Hugging Face LFS pointer (its sha256)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in logs)")
    a = ap.parse_args(argv)
    from vpr_ros.runtime.factory import default_cache_dir
    from vpr_ros.weights_download import RELEASES, fetch

    if a.action == "list":
        for r in RELEASES.values():
            print(f"{r.name:32s} {r.about}" + (f"; {r.model_config}" if r.model_config else ""))
        return 0
    try:
        if a.name not in RELEASES:
            from vpr_ros.errors import ConfigError

            raise ConfigError(f"no release named {a.name!r}; vpr_ros_weights list shows {', '.join(RELEASES)}")
        release = RELEASES[a.name]
        cache = Path(a.cache_dir) if a.cache_dir else default_cache_dir() / "weights"
        bar = None

        def progress(done: int, total: int) -> None:
            nonlocal bar
            if a.no_progress:
                return
            if bar is None:
                from tqdm import tqdm

                bar = tqdm(total=total or None, unit="B", unit_scale=True, desc=release.filename, initial=0)
            bar.update(done - bar.n)
        try:
            got = fetch(release, cache, a.url, a.pointer_url, progress)
        finally:
            if bar is not None:
                bar.close()
    except EXPECTED_ERRORS as exc:
        return report_error("vpr_ros_weights", exc)
    print(f"vpr_ros_weights: {got.path} (sha256 {got.sha256[:16]}...): {got.check}")
    line = f"model.weights: {got.path}"
    if release.model_config:
        line += f"   (with --model-config {release.model_config}, or its model: section in your params file)"
    print(f"vpr_ros_weights: set {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

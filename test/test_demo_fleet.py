"""``vpr_ros_demo --fleet`` (issue 35), run as a user runs it (its own process, built-in defaults)."""
from __future__ import annotations

import pytest

from test_demo import run_demo

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def test_demo_fleet_merges_three_robots(tmp_path):
    """``--fleet``: three robots in their own drifting odometry frames; every closure has the true
    relative pose, both other robots are aligned to robot_a, the plot is written."""
    r, out = run_demo(tmp_path, "--fleet", tiny=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    text = r.stdout
    assert "weight-free VLAD" in text  # no weights: the untrained network's descriptors are not used
    line = next(x for x in text.splitlines() if "verified inter-robot closures" in x)
    assert "precision 1.00" in line and int(line.split("fleet: ")[1].split()[0]) >= 10, line
    assert "robot_b: aligned through 1 -> 2" in text and "robot_c: aligned through 1 -> 3" in text
    line = next(x for x in text.splitlines() if "where robots met" in x)
    # with drifting odometry, where robots met (the bound; measured 0.43 cm, 0.045 deg)
    assert float(line.split("within ")[1].split()[0]) <= 5.0 and float(line.split(" and ")[1].split()[0]) <= 1.0, line
    line = next(x for x in text.splitlines() if "a newcomer localized" in x)
    assert int(line.split("metric pose for ")[1].split()[0]) >= 3, line  # the merged map serves a localizer
    assert (out / "fleet.png").stat().st_size > 10_000 and (out / "fleet" / "merged" / "manifest.yaml").is_file()

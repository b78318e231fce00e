"""A stand-in for a SLAM back end that consumes vpr_ros loop closures by LIO-SAM's rules
(``mapOptmization.cpp``: ``loopInfoHandler`` / ``detectLoopClosureExternal``), on a GTSAM ISAM2
pose graph: used by the SLAM demo and by the test that proves the live loop closure against those
rules. Needs ``gtsam`` (pinned in requirements.txt)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from vpr_ros.geometry import quat_to_matrix

#: LIO-SAM's historyKeyframeSearchTimeDiff (params.yaml): pairs closer in time are ignored
HISTORY_TIME_DIFF = 30.0


def pose3(p: Sequence[float]) -> Any:
    import gtsam

    return gtsam.Pose3(gtsam.Rot3(quat_to_matrix(tuple(p[3:]))), gtsam.Point3(*p[:3]))


class LioSamStyleBackEnd:
    """The part of LIO-SAM's mapOptimization that consumes external loop closures: its own
    keyframes (stamp -> key), odometry factors, and for each ``[t_cur, t_pre]``: loopKeyCur = the
    earliest keyframe with time >= t_cur found scanning back from the newest (default: the newest),
    loopKeyPre = the last keyframe with time <= t_pre scanning from the first (default: the first);
    pairs closer than 30 s or mapping to one keyframe are ignored. Where LIO-SAM runs ICP between the
    two keyframes' scans for the relative pose, this stand-in uses the relative pose and covariance
    that vpr_ros verified (the table row of the same pair)."""

    def __init__(self, first_pose: Sequence[float]) -> None:
        import gtsam

        self.isam = gtsam.ISAM2()
        self.times: list[float] = []
        self.loops: list[tuple[int, int]] = []
        self.estimate: Any = None
        self._first = first_pose

    def add_keyframe(self, t: float, increment: Sequence[float] | None = None) -> None:
        import gtsam

        graph, values = gtsam.NonlinearFactorGraph(), gtsam.Values()
        k = len(self.times)
        if k == 0:
            graph.add(gtsam.PriorFactorPose3(0, pose3(self._first), gtsam.noiseModel.Isotropic.Sigma(6, 1e-4)))
            values.insert(0, pose3(self._first))
        else:
            noise = gtsam.noiseModel.Diagonal.Sigmas(np.full(6, 0.02))
            assert increment is not None
            graph.add(gtsam.BetweenFactorPose3(k - 1, k, pose3(increment), noise))
            values.insert(k, self.estimate.atPose3(k - 1).compose(pose3(increment)))
        self.times.append(t)
        self.isam.update(graph, values)
        self.estimate = self.isam.calculateEstimate()

    def keys_of(self, t_cur: float, t_pre: float) -> tuple[int, int] | None:
        if abs(t_cur - t_pre) < HISTORY_TIME_DIFF or len(self.times) < 2:
            return None
        cur = len(self.times) - 1
        for i in range(len(self.times) - 1, -1, -1):
            if self.times[i] >= t_cur:
                cur = i
            else:
                break
        pre = 0
        for i in range(len(self.times)):
            if self.times[i] <= t_pre:
                pre = i
            else:
                break
        return None if cur == pre else (cur, pre)

    def add_loop(self, t_cur: float, t_pre: float, row: dict) -> tuple[int, int] | None:
        """Use one published pair (and its loop_closure_table row); returns the keys it joined."""
        import gtsam

        keys = self.keys_of(t_cur, t_pre)
        if keys is None or keys[0] in {c for c, _ in self.loops}:
            return None
        cur, pre = keys
        rel = (row["rel_x"], row["rel_y"], row["rel_z"], row["rel_qx"], row["rel_qy"], row["rel_qz"], row["rel_qw"])
        var = [row["cov_roll"], row["cov_pitch"], row["cov_yaw"], row["cov_x"], row["cov_y"], row["cov_z"]]
        noise = gtsam.noiseModel.Diagonal.Variances(np.maximum(var, 1e-6))
        graph = gtsam.NonlinearFactorGraph()
        graph.add(gtsam.BetweenFactorPose3(pre, cur, pose3(rel), noise))
        self.isam.update(graph, gtsam.Values())
        self.isam.update()
        self.estimate = self.isam.calculateEstimate()
        self.loops.append(keys)
        return keys

    def positions(self) -> np.ndarray:
        """Estimated positions [K, 3] of the keyframes."""
        return np.array([self.estimate.atPose3(k).translation() for k in range(len(self.times))])

"""What both nodes publish about a loop-closure decision: ``vpr/loop_closure_table`` (every
decision, with the verified relative pose and its covariance) and ``vpr/loop_closures`` (exactly
``[t_query, t_match]`` for each closure a SLAM back end should use: the LIO-SAM format)."""
from __future__ import annotations

from typing import Any

from std_msgs.msg import Float64MultiArray

from vpr_ros.localization import LocalizationResult
from vpr_ros.loop_closure import STATUS_CODES
from vpr_ros.ros.conversions import table

# Relative pose: the query robot's pose in the matched keyframe's robot frame, from geometric
# verification (metric with keyframe depth: method 3 'pnp'; rotation + unit direction from the
# essential matrix: method 2, translation variance 1e4); verified without a camera model (fundamental
# matrix: method 1, homography: method 4) and unverified (method 0): identity.
# Covariance diagonal over (x, y, z, roll, pitch, yaw) from the inliers, or the score-based one.
# 'prior' is 1 when the matched keyframe belongs to an earlier session (a prior map): such a
# closure is never sent as a [t_query, t_match] pair (its stamps mean nothing to the running SLAM).
LOOP_COLUMNS = ("t_query", "t_match", "match_id", "status", "score", "streak",
                "rel_x", "rel_y", "rel_z", "rel_qx", "rel_qy", "rel_qz", "rel_qw",
                "cov_x", "cov_y", "cov_z", "cov_roll", "cov_pitch", "cov_yaw", "inliers", "method", "prior")
METHOD_CODES = {"": 0.0, "fundamental": 1.0, "essential": 2.0, "pnp": 3.0, "homography": 4.0}


def loop_row(r: LocalizationResult, prior: bool = False) -> tuple[float, ...]:
    """The loop_closure_table row of a result that holds a loop decision."""
    lp = r.loop
    assert lp is not None
    v = lp.verification
    rel = r.relative if lp.publish and r.relative is not None else (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    if lp.publish and r.relative_covariance is not None:
        diag = [float(r.relative_covariance[i, i]) for i in range(6)]
    else:
        diag = [r.covariance[i * 7] for i in range(6)]
    inliers = float(v.inliers) if v is not None else 0.0
    method = METHOD_CODES.get(v.method, 0.0) if v is not None and lp.publish else 0.0
    return (lp.t_query, lp.t_match, lp.db_id, STATUS_CODES[lp.status], lp.score, lp.streak,
            *rel, *diag, inliers, method, float(prior))


def publish_loop(node: Any, pub_table: Any, pub_pairs: Any, r: LocalizationResult, prior: bool = False) -> bool:
    """Publish the table row of ``r``'s decision, and the pair when it is a closure to use (verified
    and not with a prior map); returns whether the pair was sent."""
    node.safe_publish(pub_table, table(LOOP_COLUMNS, [loop_row(r, prior)]))
    if r.loop is None or not r.loop.publish or prior:
        return False
    node.safe_publish(pub_pairs, Float64MultiArray(data=[r.loop.t_query, r.loop.t_match]))
    return True


def describe_closure(r: LocalizationResult) -> str:
    """One log line's worth about a published closure."""
    lp = r.loop
    assert lp is not None
    v = lp.verification
    how = ((f", {v.method} {v.inliers} inliers" + (", metric" if v.metric else "") +
            ("" if v.pose is not None else ", no relative pose")) if v is not None else
           ", accepted on the temporal rules alone: not verified")
    return f"t_query={lp.t_query:.3f} t_match={lp.t_match:.3f} (keyframe {lp.db_id}, score {lp.score:.3f}{how})"

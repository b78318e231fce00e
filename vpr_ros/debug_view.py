"""The debug view: query and top-1 keyframe side by side with the score (ROS-free)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

PANEL_HEIGHT = 240


def _fit(img: np.ndarray, height: int) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    return cv2.resize(img, (max(1, round(w * height / h)), height), interpolation=cv2.INTER_AREA)


def keyframe_image(image_ref: str) -> np.ndarray | None:
    """The keyframe's stored image if ``image_ref`` is a readable image file, else None."""
    import cv2

    if not image_ref or not Path(image_ref).is_file():
        return None
    img = cv2.imread(image_ref, cv2.IMREAD_COLOR)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def side_by_side(query: np.ndarray, keyframe: np.ndarray | None, db_id: int, score: float,
                 accepted: bool) -> np.ndarray:
    """RGB uint8 [240, W, 3]: query | keyframe (or a placeholder), with id and score written on."""
    import cv2

    left = _fit(query, PANEL_HEIGHT)
    if keyframe is None:
        right = np.full((PANEL_HEIGHT, left.shape[1], 3), 40, np.uint8)
        cv2.putText(right, "no image stored", (10, PANEL_HEIGHT // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                    (200, 200, 200), 1, cv2.LINE_AA)
    else:
        right = _fit(keyframe, PANEL_HEIGHT)
    out = np.concatenate([left, np.full((PANEL_HEIGHT, 4, 3), 255, np.uint8), right], axis=1)
    colour = (40, 200, 40) if accepted else (220, 60, 60)
    cv2.putText(out, "query", (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 0), 2, cv2.LINE_AA)
    cv2.putText(out, f"keyframe {db_id}  score {score:.3f}", (left.shape[1] + 12, 22),
                cv2.FONT_HERSHEY_SIMPLEX, 0.6, colour, 2, cv2.LINE_AA)
    return np.ascontiguousarray(out)

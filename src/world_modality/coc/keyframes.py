"""Keyframe selection: which frames of an episode a labeller (a VLM, or a person) looks at.

The rule, for K keyframes of an episode of N frames:
1. the first and the last frame, always;
2. the gripper events: frames where the gripper command switches between open and closed (the sign
   of the action's last value, the gripper effort: positive closes, in MetaWorld and LIBERO alike);
   if there are more than K - 2, an evenly spaced subset of them;
3. the remaining slots, one at a time, at the middle of the longest gap between frames chosen so far,
   which spaces them evenly where nothing happens.
The result is sorted and has min(K, N) distinct frames.
"""

from __future__ import annotations

import numpy as np

from lerobot_policy_world_modality.errors import InputError


def gripper_events(gripper_effort: np.ndarray) -> list[int]:
    """Frames where the gripper command switches between open (effort <= 0) and closed (> 0)."""
    closed = np.asarray(gripper_effort) > 0
    return (np.flatnonzero(closed[1:] != closed[:-1]) + 1).tolist()


def select_keyframes(num_frames: int, k: int, events: list[int]) -> list[int]:
    """K keyframes by the module's rule: first and last frame, gripper ``events``, then gap filling."""
    if num_frames < 1:
        raise InputError("an episode needs at least one frame")
    if k < 2:
        raise InputError(f"--keyframes must be at least 2 (the first and the last frame), got {k}")
    k = min(k, num_frames)
    chosen = {0, num_frames - 1}
    inner = sorted({e for e in events if 0 < e < num_frames - 1})
    if len(inner) > k - len(chosen):
        inner = [inner[i] for i in np.linspace(0, len(inner) - 1, k - len(chosen)).round().astype(int)]
    chosen.update(inner)
    while len(chosen) < k:
        frames = sorted(chosen)
        gaps = np.diff(frames)
        widest = int(np.argmax(gaps))  # the first of equally wide gaps: deterministic
        chosen.add(frames[widest] + int(gaps[widest]) // 2)
    return sorted(chosen)

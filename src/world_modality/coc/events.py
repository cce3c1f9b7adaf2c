"""The `events` backend: CoC labels from the recorded privileged state and actions of MetaWorld
episodes (offline, no model).

It reads ``observation.environment_state`` (MetaWorld's 39-dim observation: hand xyz [0:3], gripper
opening [3], object position [4:7] and orientation, a second object, the previous step's 18 values,
goal xyz [36:39]) and the action's gripper effort (its last value; > 0 closes). Events:
- close / open: the gripper command switches;
- contact: the object moves (over 1 mm per step) while the hand is near it (within 6 cm of the hand's
  closest approach to the object in the episode): objects also move on their own after a reset as
  they settle (up to 3.5 cm, doors and windows more), while the hand is still far;
- grasp: the fingers stop closing on something (their opening settles above the value they settle at
  when closed on nothing) while the object is within 10 cm of the hand;
- lift: while held, the object rises 2 cm above where it was grasped;
- release: the gripper is opened after a grasp and stays open to the end;
- goal: the object (or the hand, when the object never moved) ends at less than half its starting
  distance to the goal;
- success: what the dataset records (`wm data metaworld` keeps only successful expert episodes).
The thresholds were measured on the scripted experts of all 50 MetaWorld v3 tasks: fingers closed on
nothing settle at an opening of 0.295-0.297, on an object at 0.32 or more. The events are told in
time order as one sentence of causally linked steps, then the outcome after a colon.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from lerobot.utils.constants import OBS_ENV_STATE

from lerobot_policy_world_modality.errors import InputError
from world_modality.coc.backend import CocBackend
from world_modality.coc.episodes import Episode, EpisodeSource
from world_modality.coc.keyframes import gripper_events, select_keyframes
from world_modality.coc.labels import CocLabel
from world_modality.sim.metaworld.env import ENV_STATE_DIM

HAND, OPENING, OBJECT, GOAL = slice(0, 3), 3, slice(4, 7), slice(36, 39)
EMPTY_CLOSED_OPENING = 0.31  # above: something is between the fingers
SETTLED = 0.003  # change of the opening per step below which the fingers have stopped
SETTLE_STEPS = 3  # steps after the close command before stopped fingers can mean a grasp (not "not started")
MOVING = 0.001  # m per step
CONTACT_MARGIN = 0.06  # m beyond the hand's closest approach to the object
GRASP_REACH = 0.10  # m, hand to object
LIFTED = 0.02  # m
GOAL_FRACTION = 0.5
MENTIONED_MOTION = 0.02  # m: a smaller displacement of a held object is not told

# The manipulated object as LeRobot's MetaWorld instructions name it, most specific first
# ("Pick up a nut and place it onto a peg": the nut; "Lock the door by rotating the lock": the lock).
OBJECT_WORDS = (
    ("nut", "nut"),
    ("puck", "puck"),
    ("basketball", "basketball"),
    ("soccer", "ball"),
    ("cover", "box cover"),
    ("stick", "stick"),
    ("button", "button"),
    ("mug", "mug"),
    ("dial", "dial"),
    ("lock", "lock"),
    ("drawer", "drawer"),
    ("faucet", "faucet"),
    ("hammer", "hammer"),
    ("handle", "handle"),
    ("lever", "lever"),
    ("peg", "peg"),
    ("plate", "plate"),
    ("window", "window"),
    ("door", "door"),
)


def object_noun(instruction: str) -> str:
    words = set(re.findall(r"[a-z]+", instruction.lower()))
    return next((noun for word, noun in OBJECT_WORDS if word in words), "object")


def direction(delta: np.ndarray) -> str:
    """Words for a displacement in MetaWorld's frame (the robot faces +y, z is up): its main axis, and
    a second one when it is at least half as large."""
    names = {(1, 1): "forward", (1, -1): "back toward the robot", (2, 1): "up", (2, -1): "down"}
    order = np.argsort(-np.abs(delta))
    words = []
    for axis in order[:2]:
        if words and abs(delta[axis]) < 0.5 * abs(delta[order[0]]):
            break
        word = names.get((int(axis), int(np.sign(delta[axis]))), "sideways")
        if word not in words:
            words.append(word)
    return " and ".join(words)


def _first(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if len(hits) else None


@dataclass
class EpisodeEvents:
    num_frames: int
    closes: list[int]  # frames where the close command starts (0 when closed from the start)
    opens: list[int]
    contact: int | None
    grasp: int | None
    lift: int | None
    release: int | None
    object_motion: np.ndarray  # xyz displacement of the object from contact (or grasp) to the end
    hand_motion: np.ndarray  # xyz displacement of the hand over the episode
    object_to_goal: bool
    hand_to_goal: bool

    def told_frames(self) -> list[int]:
        """First and last frame and the frames of the told events."""
        told = [0, self.num_frames - 1, self.contact, self.grasp, self.lift, self.release]
        if self.closes:
            told.append(self.grasp_close if self.grasp is not None else self.closes[0])
        return sorted({f for f in told if f is not None})

    @property
    def grasp_close(self) -> int | None:
        """Onset of the close command that made the grasp."""
        if self.grasp is None:
            return None
        return max(c for c in self.closes if c <= self.grasp)


def detect_events(env_state: np.ndarray, action: np.ndarray) -> EpisodeEvents:
    """Events of one episode from its [T, 39] environment states and [T, A] actions."""
    hand, opening, obj, goal = env_state[:, HAND], env_state[:, OPENING], env_state[:, OBJECT], env_state[:, GOAL]
    effort = action[:, -1]
    closed = effort > 0
    switches = gripper_events(effort)
    closes = ([0] if closed[0] else []) + [t for t in switches if closed[t]]
    opens = [t for t in switches if not closed[t]]

    speed = np.r_[np.linalg.norm(np.diff(obj, axis=0), axis=1), 0.0]
    hand_to_object = np.linalg.norm(hand - obj, axis=1)
    contact = _first((speed > MOVING) & (hand_to_object < hand_to_object.min() + CONTACT_MARGIN))
    steps_closed = np.zeros(len(closed), dtype=int)
    for t in range(len(closed)):
        steps_closed[t] = (steps_closed[t - 1] + 1 if t else 1) if closed[t] else 0
    stopped = np.abs(np.diff(opening, prepend=opening[0])) < SETTLED
    near = hand_to_object < GRASP_REACH
    grasp = _first((steps_closed > SETTLE_STEPS) & stopped & (opening > EMPTY_CLOSED_OPENING) & near)

    lift = release = None
    if grasp is not None:
        later_opens = [t for t in opens if t > grasp]
        if later_opens and not closed[-1]:
            release = later_opens[-1]
        held = slice(grasp, release if release is not None else len(obj))
        rise = obj[held, 2] - obj[grasp, 2]
        lift = None if (hit := _first(rise > LIFTED)) is None else grasp + hit
    start = grasp if grasp is not None else contact if contact is not None else 0

    def approached(x: np.ndarray, since: int) -> bool:
        return bool(np.linalg.norm(x[-1] - goal[-1]) < GOAL_FRACTION * np.linalg.norm(x[since] - goal[since]))

    return EpisodeEvents(
        num_frames=len(env_state),
        closes=closes,
        opens=opens,
        contact=contact,
        grasp=grasp,
        lift=lift,
        release=release,
        object_motion=obj[-1] - obj[start],
        hand_motion=hand[-1] - hand[0],
        object_to_goal=contact is not None and approached(obj, contact),
        hand_to_goal=approached(hand, 0),
    )


def describe(events: EpisodeEvents, noun: str, success: bool | None) -> str:
    """One sentence of causally linked steps, then the outcome after a colon."""
    steps: list[str] = []

    def gripper() -> str:  # "the gripper" the first time, then "it"
        return "it" if steps else "the gripper"

    if events.grasp is not None:
        steps.append(f"moves {gripper()} to the {noun}")
        steps.append(f"closes it to grasp the {noun}" if events.grasp_close > 0 else f"grasps the {noun}")
        carry = "carries" if events.lift is not None else "slides"
        lift = "lifts it and " if events.lift is not None else ""
        if events.object_to_goal:
            steps.append(f"{lift}{carry} it to the goal")
        elif np.linalg.norm(events.object_motion) > MENTIONED_MOTION:
            steps.append(f"{lift}{carry} it {direction(events.object_motion)}")
        elif lift:
            steps.append("lifts it")
        if events.release is not None:
            steps.append("opens the gripper to release it")
    else:
        first_close = events.closes[0] if events.closes else None
        if first_close is not None and (events.contact is None or first_close <= events.contact):
            steps.append("closes the gripper")
        if events.contact is not None:
            steps.append(f"moves {gripper()} to the {noun}")
            way = direction(events.object_motion)
            verb = "presses" if way.startswith("down") else "pushes"
            steps.append(f"{verb} the {noun} {way}" + (" to its goal position" if events.object_to_goal else ""))
        elif events.hand_to_goal:
            steps.append(f"moves {gripper()} to the goal")
        else:
            steps.append(f"moves {gripper()} {direction(events.hand_motion)}")

    if events.contact is None:
        outcome = "the gripper is at the goal" if events.hand_to_goal else f"the {noun} has not moved"
    elif events.object_to_goal:
        outcome = f"the {noun} is at its goal position"
    else:
        distance = np.linalg.norm(events.object_motion) * 100
        outcome = f"the {noun} has moved {distance:.{0 if distance >= 2 else 1}f} cm {direction(events.object_motion)}"
    if success is not None:
        outcome += ", so the task succeeds" if success else ", and the task fails"
    return ", ".join(steps) + ": " + outcome


class EventsBackend(CocBackend):
    """CoC text from MetaWorld's privileged state (see the module docstring). Keyframes: every told
    event's frame, completed to ``keyframes`` frames by the rule of `world_modality.coc.keyframes`."""

    name = "events"
    state_key = OBS_ENV_STATE

    def __init__(self, keyframes: int = 6) -> None:
        self.keyframes = keyframes

    def check(self, source: EpisodeSource) -> None:
        feature = source.features.get(OBS_ENV_STATE)
        if feature is None or tuple(feature["shape"]) != (ENV_STATE_DIM,):
            found = "missing" if feature is None else f"of shape {tuple(feature['shape'])}"
            raise InputError(
                f"the events backend reads MetaWorld's {ENV_STATE_DIM}-dim {OBS_ENV_STATE!r} (as `wm data metaworld` "
                f"writes it); in {source.root} it is {found}. Use --backend vlm for other datasets."
            )

    def label(self, source: EpisodeSource, episodes: list[Episode]) -> list[CocLabel]:
        labels = []
        for episode in episodes:
            events = detect_events(episode.state, episode.action)
            text = describe(events, object_noun(episode.instruction), episode.success)
            told = events.told_frames()
            frames = select_keyframes(len(episode), max(self.keyframes, len(told)), told)
            labels.append(CocLabel(episode.index, text, self.name, tuple(frames)))
        return labels

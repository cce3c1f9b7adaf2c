"""Chain-of-causality labels: label files, keyframes, the events and vlm backends, `wm coc generate/show`."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from world_modality.cli import main
from world_modality.coc.events import (
    EventsBackend,
    describe,
    detect_events,
    object_noun,
)
from world_modality.coc.generate import generate_coc_labels
from world_modality.coc.keyframes import gripper_events, select_keyframes
from world_modality.coc.labels import (
    CocLabelError,
    coc_texts_for,
    load_coc_labels,
    read_coc_labels,
)


def _line(episode: int, text: str = "moves the gripper to the goal", backend: str = "events", keyframes=(0, 5)) -> str:
    return (
        json.dumps({"episode_index": episode, "coc_text": text, "backend": backend, "keyframes": list(keyframes)})
        + "\n"
    )


def _dataset_episodes(dataset) -> dict[int, dict]:
    sidecar = json.loads((dataset / "meta" / "world_modality.json").read_text())
    return {e["episode_index"]: e for e in sidecar["episodes"]}


# ---------------------------------------------------------------- label files


def test_label_file_loads_and_ignores_an_unfinished_last_line(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text(_line(0, "a") + _line(3, "b") + _line(1, "c")[:25])  # a killed append leaves no newline
    assert load_coc_labels(path) == {0: "a", 3: "b"}
    assert read_coc_labels(path)[3].keyframes == (0, 5)


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"episode_index": 2, "coc_text": "x", "backend": "events"}\n', "missing field"),
        (_line(2, text=""), "coc_text"),
        (_line(-1), "episode_index"),
        ('{"episode_index": "2", "coc_text": "x", "backend": "events", "keyframes": []}\n', "episode_index"),
        (_line(2, keyframes=("a",)), "keyframes"),
        ("not json\n", "not valid JSON"),
        (_line(0), "labelled again (first on line 1)"),
    ],
)
def test_label_file_errors_name_the_line(tmp_path, bad_line, message):
    path = tmp_path / "labels.jsonl"
    path.write_text(_line(0) + bad_line + _line(1))
    with pytest.raises(CocLabelError, match=rf"labels\.jsonl:2: .*{re.escape(message)}"):
        load_coc_labels(path)


def test_coc_texts_for_gives_none_or_raises_naming_the_unlabelled_episodes():
    labels = {0: "a", 2: "c"}
    assert coc_texts_for(labels, [2, 0, 1, 2], require=False) == ["c", "a", None, "c"]
    assert coc_texts_for(labels, iter([0, 2]), require=True) == ["a", "c"]
    with pytest.raises(ValueError, match=r"episode\(s\) 1, 5 have none"):
        coc_texts_for(labels, [0, 5, 1, 2, 1], require=True)


# ---------------------------------------------------------------- keyframes


def test_gripper_events_are_the_command_switches():
    assert gripper_events(np.array([0.0, 0.0, 1.0, 1.0, -1.0, -1.0, 1.0])) == [2, 4, 6]
    assert gripper_events(np.ones(5)) == []


def test_select_keyframes_keeps_ends_and_events_then_fills_the_widest_gaps():
    assert select_keyframes(100, 6, [30, 31, 70]) == [0, 30, 31, 50, 70, 99]
    assert select_keyframes(100, 4, []) == [0, 49, 74, 99]
    # more events than slots: an evenly spaced subset of them
    assert select_keyframes(100, 4, [10, 20, 30, 40, 50, 60]) == [0, 10, 60, 99]
    assert select_keyframes(3, 6, [1]) == [0, 1, 2]


# ---------------------------------------------------------------- events backend on MetaWorld experts


@pytest.fixture(scope="module")
def expert_episodes():
    """Environment states and actions of one scripted-expert episode per task, as the generator records
    them (the observation before each action), without rendering (~1 s per task)."""
    from world_modality.sim.metaworld.env import MetaWorldEnv, expert_policy
    from world_modality.sim.metaworld.tasks import instruction

    episodes = {}
    for task in ("pick-place-v3", "button-press-topdown-v3", "drawer-close-v3", "reach-v3"):
        env, policy = MetaWorldEnv(task, seed=0, render=None), expert_policy(task)
        obs, done, states, actions = env.reset(0), False, [], []
        while not done:
            action = np.clip(policy.get_action(obs), -1.0, 1.0).astype(np.float32)
            states.append(obs)
            actions.append(action)
            obs, success, done = env.step(action)
        env.close()
        assert success
        episodes[task] = (np.stack(states), np.stack(actions), instruction(task))
    return episodes


def _events_text(expert_episodes, task):
    states, actions, instruction = expert_episodes[task]
    events = detect_events(states, actions)
    return events, describe(events, object_noun(instruction), success=True)


def test_events_pick_place_grasps_lifts_then_carries_to_the_goal(expert_episodes):
    events, text = _events_text(expert_episodes, "pick-place-v3")
    assert events.closes and events.grasp is not None and events.lift is not None
    assert events.closes[0] < events.grasp < events.lift
    assert "grasp the puck" in text
    assert text.index("grasp") < text.index("carries it to the goal")
    assert text.endswith("the puck is at its goal position, so the task succeeds")


def test_events_button_press_topdown_presses_without_grasping(expert_episodes):
    events, text = _events_text(expert_episodes, "button-press-topdown-v3")
    # the expert closes its gripper into a fist and presses: closed, but nothing between the fingers
    assert events.closes == [0] and events.grasp is None and events.contact is not None
    assert "grasp" not in text
    assert "presses the button down to its goal position" in text


def test_events_drawer_close_pushes_and_reach_touches_nothing(expert_episodes):
    events, text = _events_text(expert_episodes, "drawer-close-v3")
    assert events.grasp is None and "grasp" not in text
    assert "pushes the drawer forward" in text
    events, text = _events_text(expert_episodes, "reach-v3")
    assert events.contact is None and events.grasp is None
    assert text == "moves the gripper to the goal: the gripper is at the goal, so the task succeeds"


def test_events_backend_refuses_datasets_without_metaworld_state():
    from types import SimpleNamespace

    libero_like = SimpleNamespace(root="libero", features={"observation.state": {"shape": [8]}})
    with pytest.raises(ValueError, match="39-dim 'observation.environment_state'.*--backend vlm"):
        EventsBackend().check(libero_like)


def test_object_noun_comes_from_the_instruction():
    assert object_noun("Lock the door by rotating the lock clockwise") == "lock"
    assert object_noun("Pick up a nut and place it onto a peg") == "nut"
    assert object_noun("Reach a goal position") == "object"


# ---------------------------------------------------------------- wm coc generate / show (events)


def test_generate_events_labels_resume_after_a_kill_without_duplicates(metaworld_dataset, tmp_path):
    tasks = {i: e["task"] for i, e in _dataset_episodes(metaworld_dataset).items()}
    out = tmp_path / "labels.jsonl"
    assert main(["coc", "generate", str(metaworld_dataset), "--out", str(out), "--batch-size", "3"]) == 0
    first = read_coc_labels(out)
    assert sorted(first) == sorted(tasks)
    for episode, label in first.items():
        assert label.backend == "events" and label.keyframes[0] == 0 and len(label.keyframes) >= 6
        assert ("grasp the puck" in label.coc_text) == (tasks[episode] == "pick-place-v3"), label.coc_text
    assert coc_texts_for(load_coc_labels(out), sorted(tasks), require=True) == [
        first[e].coc_text for e in sorted(tasks)
    ]

    # A kill in the middle of an append: two whole lines and half of the third.
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])
    partial = load_coc_labels(out)
    assert len(partial) == 2
    missing = sorted(set(tasks) - set(partial))
    with pytest.raises(ValueError, match=", ".join(map(str, missing))):
        coc_texts_for(partial, sorted(tasks), require=True)
    assert main(["coc", "generate", str(metaworld_dataset), "--out", str(out)]) == 0
    resumed = out.read_text().splitlines()
    assert len(resumed) == len(tasks) and all(json.loads(line) for line in resumed)
    assert read_coc_labels(out) == first

    # An interrupt between batches keeps the finished batch; the rerun labels the rest only.
    out2 = tmp_path / "interrupted.jsonl"

    class InterruptedBackend(EventsBackend):
        calls = 0

        def label(self, source, episodes):
            InterruptedBackend.calls += 1
            if InterruptedBackend.calls == 2:
                raise KeyboardInterrupt
            return super().label(source, episodes)

    with pytest.raises(KeyboardInterrupt):
        generate_coc_labels(metaworld_dataset, InterruptedBackend(), out2, batch_size=1)
    assert len(load_coc_labels(out2)) == 1
    done = generate_coc_labels(metaworld_dataset, EventsBackend(), out2, batch_size=1)
    assert done == {"labelled": len(tasks) - 1, "skipped": 1, "total": len(tasks)}
    assert read_coc_labels(out2) == first


def test_generate_refuses_to_mix_backends_in_one_file(metaworld_dataset, tmp_path, capsys):
    out = tmp_path / "labels.jsonl"
    out.write_text(_line(0, backend="vlm"))
    assert main(["coc", "generate", str(metaworld_dataset), "--out", str(out)]) == 2
    assert "holds labels of backend(s) ['vlm']" in capsys.readouterr().err


def test_show_prints_the_label_and_saves_a_keyframe_strip(metaworld_dataset, tmp_path, capsys):
    from PIL import Image

    pick_place = min(i for i, e in _dataset_episodes(metaworld_dataset).items() if e["task"] == "pick-place-v3")
    labels, strip = tmp_path / "labels.jsonl", tmp_path / "strip.png"
    assert main(["coc", "generate", str(metaworld_dataset), "--out", str(labels), "--episodes", str(pick_place)]) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "coc",
                "show",
                str(metaworld_dataset),
                "--labels",
                str(labels),
                "--episode",
                str(pick_place),
                "--out",
                str(strip),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    label = read_coc_labels(labels)[pick_place]
    assert label.coc_text in printed and str(list(label.keyframes)) in printed
    with Image.open(strip) as image:
        assert image.format == "PNG" and image.width > 3 * image.height  # the keyframes side by side
    assert (
        main(["coc", "show", str(metaworld_dataset), "--labels", str(labels), "--episode", "99", "--out", str(strip)])
        == 2
    )
    assert "no label for episode 99" in capsys.readouterr().err


# ---------------------------------------------------------------- vlm backend with a tiny Qwen3-VL


def _tiny_qwen3_vl(folder):
    """A tiny random Qwen3-VL folder whose LM head is untied from the embeddings: with tied random
    weights greedy decoding only echoes the prompt's last token (a newline), i.e. no text at all."""
    import torch
    from safetensors.torch import load_file, save_file

    from world_modality.model_folders.qwen_vl import write_qwen_vl_folder

    folder = write_qwen_vl_folder(folder, backbone="qwen3_vl", size="tiny")
    weights = load_file(folder / "model.safetensors")
    embeddings = weights["model.language_model.embed_tokens.weight"]
    weights["lm_head.weight"] = (
        torch.randn(embeddings.shape, generator=torch.Generator().manual_seed(0)) * embeddings.std()
    )
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["tie_word_embeddings"] = config["text_config"]["tie_word_embeddings"] = False
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_vlm_backend_prompts_keyframes_and_writes_labels(metaworld_dataset, tmp_path):
    from world_modality.coc.vlm import VlmBackend

    episodes = _dataset_episodes(metaworld_dataset)
    pick_place = min(i for i, e in episodes.items() if e["task"] == "pick-place-v3")
    reach = min(episodes)
    model, out = _tiny_qwen3_vl(tmp_path / "qwen"), tmp_path / "vlm.jsonl"
    # one user turn: each keyframe behind its index, then the packaged template with the instruction
    content = VlmBackend(model, keyframes=3).messages("Pick and place a puck to a goal", [0, 7, 20])[0]["content"]
    assert [c["type"] for c in content] == ["text", "image"] * 3 + ["text"]
    assert content[2]["text"] == "Frame 7:"
    assert "3 frames" in content[-1]["text"] and '"Pick and place a puck to a goal"' in content[-1]["text"]
    argv = [
        "coc",
        "generate",
        str(metaworld_dataset),
        "--backend",
        "vlm",
        "--model",
        str(model),
        "--out",
        str(out),
        "--episodes",
        str(reach),
        str(pick_place),
        "--keyframes",
        "4",
        "--max-new-tokens",
        "5",
        "--batch-size",
        "2",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    labels = read_coc_labels(out)
    assert sorted(labels) == sorted([reach, pick_place])
    for episode, label in labels.items():
        last = episodes[episode]["length"] - 1
        assert label.backend == "vlm" and label.coc_text.strip()
        assert len(label.keyframes) == 4 and label.keyframes[0] == 0 and label.keyframes[-1] == last
    # the pick-place expert closes its gripper once: that frame is one of the keyframes
    from world_modality.coc.episodes import EpisodeSource

    actions = EpisodeSource(metaworld_dataset).episode(pick_place).action
    assert set(gripper_events(actions[:, -1])) <= set(labels[pick_place].keyframes)
    assert main(argv) == 0  # a rerun finds every episode labelled
    assert len(out.read_text().splitlines()) == 2

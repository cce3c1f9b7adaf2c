"""``wm coc``: chain-of-causality labels of a dataset's episodes (generate them, look at one)."""

from __future__ import annotations

import argparse

from lerobot_policy_world_modality.errors import InputError
from world_modality.choices import COUNT
from world_modality.commands import add_common


def register(subparsers) -> None:
    coc = subparsers.add_parser(
        "coc",
        help="generate and inspect chain-of-causality (CoC) labels",
        description="Chain-of-causality labels: one short causal description per episode (the text targets of F+'s CoC loss).",
    )
    sub = coc.add_subparsers(dest="coc_command", metavar="COC_COMMAND", required=True)

    gen = sub.add_parser(
        "generate",
        help="label every episode of a dataset into a JSONL file",
        description=(
            "Write one JSON line per episode: {episode_index, coc_text, backend, keyframes (frame indices within "
            "the episode)}. --backend events (offline, no model) tells the gripper, contact, grasp, lift, release and "
            "goal events found in MetaWorld's recorded privileged state (datasets made by `wm data metaworld`); "
            "--backend vlm asks a local Qwen-VL model (--model) to describe K keyframes of the episode with its "
            "instruction (first and last frame, gripper open/close events, evenly spaced frames). Labels are appended "
            "as each batch finishes; an interrupted run resumes: rerun the same command."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    gen.add_argument(
        "dataset", metavar="DATASET", help="dataset folder, or a repo id already in the local LeRobot cache"
    )
    gen.add_argument("--backend", choices=("events", "vlm"), default="events", help="how the text is made")
    gen.add_argument("--out", required=True, metavar="LABELS.jsonl", help="label file (created, or resumed)")
    gen.add_argument("--episodes", type=int, nargs="+", default=None, metavar="N", help="episode indices; unset: all")
    gen.add_argument(
        "--batch-size", type=COUNT, default=8, metavar="N", help="episodes per batch (one generate call for vlm)"
    )
    gen.add_argument("--model", default=None, metavar="DIR", help="vlm: local Qwen-VL folder (Hugging Face format)")
    gen.add_argument(
        "--keyframes",
        type=int,
        default=6,
        metavar="K",
        help="frames per episode: shown to the vlm; for events, the told events' frames completed to K",
    )
    gen.add_argument("--max-new-tokens", type=COUNT, default=96, metavar="N", help="vlm: length limit of a label")
    gen.add_argument("--camera-key", default=None, metavar="KEY", help="vlm: camera key; unset: the first camera")
    gen.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="vlm: auto = cuda when present")
    add_common(gen)
    gen.set_defaults(handler=_generate)

    show = sub.add_parser(
        "show",
        help="print an episode's label and save its keyframes as a PNG strip",
        description="Print one episode's CoC label and save the label's keyframes side by side (frame index under each) as a PNG.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    show.add_argument("dataset", metavar="DATASET", help="the dataset the labels were made from")
    show.add_argument("--labels", required=True, metavar="LABELS.jsonl", help="label file made by `wm coc generate`")
    show.add_argument("--episode", type=int, required=True, metavar="N", help="episode index")
    show.add_argument("--out", required=True, metavar="STRIP.png", help="where to save the keyframe strip")
    show.add_argument("--camera-key", default=None, metavar="KEY", help="camera key; unset: the first camera")
    add_common(show)
    show.set_defaults(handler=_show)


def _generate(args) -> int:
    from world_modality.coc.generate import generate_coc_labels

    if args.backend == "vlm":
        if args.model is None:
            raise InputError("--backend vlm needs --model DIR, a local Qwen-VL folder")
        from world_modality.coc.vlm import VlmBackend

        backend = VlmBackend(
            args.model, keyframes=args.keyframes, max_new_tokens=args.max_new_tokens, device=args.device
        )
    else:
        if args.model is not None:
            raise InputError("--model is for --backend vlm; the events backend uses no model")
        from world_modality.coc.events import EventsBackend

        backend = EventsBackend(keyframes=args.keyframes)
    done = generate_coc_labels(
        args.dataset, backend, args.out, episodes=args.episodes, batch_size=args.batch_size, camera_key=args.camera_key
    )
    print(
        f"{args.out}: {done['labelled']} episode(s) labelled, {done['skipped']} already there, {done['total']} in the file"
    )
    return 0


def _show(args) -> int:
    from world_modality.coc.strip import show_label

    label, instruction = show_label(args.dataset, args.labels, args.episode, args.out, camera_key=args.camera_key)
    print(f"episode {label.episode_index} ({instruction}) [{label.backend}]")
    print(label.coc_text)
    print(f"keyframes {list(label.keyframes)} saved to {args.out}")
    return 0

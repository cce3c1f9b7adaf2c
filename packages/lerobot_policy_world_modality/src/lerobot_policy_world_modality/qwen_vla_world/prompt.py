"""The one prompt of F+: `<image> <instruction> <ACT_0> ... <ACT_{H-1}>`, for training and rollout alike.

An earlier system got 0% closed-loop success from a prompt that differed between training and
evaluation and from empty instructions. Here the format string and its version live in the policy
config (hence in every checkpoint), every prompt is built by `build_prompt`, and an empty
instruction is an error.
"""

from __future__ import annotations

from lerobot_policy_world_modality.errors import InputError

PROMPT_VERSION = 1
IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
# Qwen-VL's chat layout of one user turn (image, then text) and the assistant turn the <ACT_i>
# tokens open; their hidden states are read after one forward pass, nothing is generated.
DEFAULT_PROMPT_FORMAT = "<|im_start|>user\n{image}{instruction}<|im_end|>\n<|im_start|>assistant\n{actions}"
# Closes a chain-of-causation text placed after the <ACT_i> tokens (or after the prompt).
TEXT_END = "<|im_end|>"
_FIELDS = ("{image}", "{instruction}", "{actions}")


def act_tokens(chunk_size: int) -> list[str]:
    """The action-query tokens `<ACT_0>` .. `<ACT_{H-1}>`."""
    return [f"<ACT_{i}>" for i in range(chunk_size)]


def check_prompt_format(prompt_format: str) -> None:
    """Each field exactly once, and `{actions}` last so that the <ACT_i> tokens end the prompt
    (they then sit at the same positions in a left-padded batch, and text can follow them)."""
    for name in _FIELDS:
        if prompt_format.count(name) != 1:
            raise InputError(f"prompt_format must contain {name} exactly once: {prompt_format!r}")
    if not prompt_format.endswith("{actions}"):
        raise InputError(f"prompt_format must end with {{actions}}: {prompt_format!r}")


def build_prompt(prompt_format: str, instruction: str | None, chunk_size: int, *, with_actions: bool = True) -> str:
    """The prompt text of one sample. ``with_actions=False`` leaves out the <ACT_i> tokens (the
    separate chain-of-causation pass)."""
    if instruction is None or not str(instruction).strip():
        raise InputError(
            f"empty instruction {instruction!r}: every F+ prompt needs the task's language instruction "
            "(check the dataset's instruction key, e.g. LeRobot's `task`)"
        )
    actions = "".join(act_tokens(chunk_size)) if with_actions else ""
    return prompt_format.format(image=IMAGE_PLACEHOLDER, instruction=str(instruction).strip(), actions=actions)

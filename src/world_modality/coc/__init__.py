"""Chain-of-causality (CoC) labels: one short causal description per episode ("moves the gripper to
the puck, closes it to grasp the puck, lifts it and carries it to the goal: ..."), the text targets of
F+'s language loss and a debugging aid.

- `labels`: the JSONL label file (`load_coc_labels`, `coc_texts_for`).
- `events`: labels from MetaWorld's recorded privileged state (offline default); `vlm`: a local
  Qwen-VL model describes keyframes (`keyframes` documents their selection).
- `generate`: resumable, batched labelling of a dataset; `strip`: an episode's keyframes as a PNG.
"""

from world_modality.coc.labels import (
    CocLabel,
    CocLabelError,
    coc_texts_for,
    load_coc_labels,
    read_coc_labels,
)

__all__ = ["CocLabel", "CocLabelError", "coc_texts_for", "load_coc_labels", "read_coc_labels"]

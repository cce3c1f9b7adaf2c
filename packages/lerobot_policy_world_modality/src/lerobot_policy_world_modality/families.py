"""Policy families and their backbones: which arms of an experiment may be compared with which.

A world-memory arm is judged against the baseline and the capacity control of its own family on its own backbone
(docs/ARCHITECTURE.md, Experiment matrix): SmolVLA-world against LeRobot's SmolVLA on the same VLM, F+ against F+
without the world module on the same Qwen-VL, the small family against model A. The family of a policy follows from
its config alone (the policy type and its backbone field), as a plain mapping: a checkpoint's ``config.json``, or a
matrix arm's fields. Torch-free, so reports and matrix files are checked without loading a model library.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from lerobot_policy_world_modality.errors import InputError, MissingFileError

# Policy type -> its family. LeRobot's own `smolvla` is SmolVLA-world with the world module off (its E0).
FAMILY_OF_TYPE = {
    "world_transformer": "world_transformer",
    "smolvla": "smolvla",
    "smolvla_world": "smolvla",
    "qwen_vla_world": "qwen_vla",
}
# The config fields that name a family's backbone: a local folder (or a hub id), in order of precedence.
BACKBONE_FIELDS = {"smolvla": ("vlm_model_name",), "qwen_vla": ("backbone_path", "backbone")}


@dataclass(frozen=True)
class PolicyFamily:
    name: str  # a value of FAMILY_OF_TYPE
    backbone: str | None = None  # the backbone's folder or model name (None: the family has none)

    def __str__(self) -> str:
        return self.name if self.backbone is None else f"{self.name} ({self.backbone})"


def policy_family(policy_type: str, fields: Mapping[str, Any]) -> PolicyFamily:
    """The family of a policy of type ``policy_type`` whose config holds ``fields`` (with its defaults filled in).
    The backbone is named by its folder's name, so the same backbone copied to another path (another machine of
    an experiment run in pieces) is the same backbone."""
    if policy_type not in FAMILY_OF_TYPE:
        raise InputError(f"unknown policy type {policy_type!r}; known: {', '.join(FAMILY_OF_TYPE)}")
    family = FAMILY_OF_TYPE[policy_type]
    for name in BACKBONE_FIELDS.get(family, ()):
        if fields.get(name):
            return PolicyFamily(family, PurePath(str(fields[name]).rstrip("/")).name)
    return PolicyFamily(family)


# A backbone folder's model_type (its config.json) -> the family whose policies read it.
FOLDER_FAMILIES = {"smolvlm": "smolvla", "qwen3_vl": "qwen_vla", "qwen2_5_vl": "qwen_vla"}


def folder_model_type(folder: str | Path) -> str:
    """The model_type in a Hugging Face folder's config.json; a missing folder or config is an error that says so."""
    config = Path(folder).expanduser() / "config.json"
    if not config.is_file():
        raise MissingFileError(
            f"{config.parent} is not a Hugging Face model folder (no config.json): copy the "
            "backbone's folder there, or point at the folder that holds it"
        )
    return json.loads(config.read_text()).get("model_type", "")


def check_backbone(family: str, name: str, where: str) -> None:
    """Refuse, before a model is built, a backbone that a policy of ``family`` cannot load here: ``name`` (a config's
    backbone field; ``where`` names it in the message) must be a local folder of one of the family's model types, or
    a hub id whose files are already in the Hugging Face cache (nothing is downloaded)."""
    folder = Path(name).expanduser()
    if not folder.exists() and _is_hub_id(name):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
        if not isinstance(cached, str):
            raise MissingFileError(
                f"{where}: {name!r} is not a local folder, and not in the Hugging Face cache (nothing is "
                f"downloaded): point it at a local folder holding it, e.g. /models/{name.split('/')[-1]}"
            )
        folder = Path(cached).parent
    try:
        model_type = folder_model_type(folder)
    except MissingFileError as e:
        raise MissingFileError(f"{where}: {e}") from None
    if FOLDER_FAMILIES.get(model_type) != family:
        expected = " or ".join(t for t, f in FOLDER_FAMILIES.items() if f == family)
        raise InputError(
            f"{where}: {folder} holds a {model_type!r} model, not a backbone of the {family} family (a {expected} "
            "folder)"
        )


def _is_hub_id(name: str) -> bool:
    """Whether ``name`` reads as a hub repository id ("org/name") rather than a filesystem path."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if name.startswith(("/", ".", "~")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def backbone_fields(family: str, folder: Path) -> dict[str, Any]:
    """The policy-config fields that make a policy of ``family`` use the backbone in ``folder``."""
    if family == "smolvla":  # SmolVLA builds its VLM from the folder's config and reads weights only when told to
        return {"vlm_model_name": str(folder), "load_vlm_weights": any(folder.glob("*.safetensors"))}
    if family == "qwen_vla":
        return {"backbone_path": str(folder)}
    raise InputError(f"policies of the {family} family have no backbone")

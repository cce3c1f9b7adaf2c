"""Instructions tokenised once: a tokenizer that remembers its recent calls, for closed-loop inference.

Within an episode only the image changes; the instruction, hence its tokens, stays the same. `CachedTokenizer`
wraps a Hugging Face tokenizer: a call is keyed by its texts (a batch by all of them, in order, so a batch that
mixes instructions is an entry of its own and rows never borrow another row's tokens), its keyword settings and
the tokenizer's padding and truncation sides, and a repeated call returns a copy of the first call's output. A
batch that repeats texts (training batches draw from a few instructions) tokenises only its distinct texts. The
output is the tokenizer's own, so actions and training batches are bit-identical with and without the cache. Everything else (saving,
special tokens, vocabulary) is the wrapped tokenizer's; tokens added to it after the first call are not seen by
the calls remembered before.

`InstructionTokenizerStep` is LeRobot's tokenizer step of a policy's preprocessor with its tokenizer so wrapped
(SmolVLA-world, which tokenises the task in its preprocessor); F+ wraps its Qwen-VL processor's tokenizer.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import torch
from lerobot.processor import ProcessorStepRegistry, TokenizerProcessorStep

# Distinct calls remembered (least recently used dropped first): the instructions of a multi-task evaluation.
INSTRUCTION_CACHE_SIZE = 256


class CachedTokenizer:
    """``tokenizer`` whose calls on the same texts and settings tokenise once (LRU of ``size`` calls);
    while ``enabled`` is False every call passes through."""

    def __init__(self, tokenizer: Any, size: int = INSTRUCTION_CACHE_SIZE, enabled: bool = True) -> None:
        vars(self).update(tokenizer=tokenizer, size=size, enabled=enabled, _calls=OrderedDict())

    def __call__(self, text: Any, *args: Any, **kwargs: Any) -> Any:
        if self.enabled and not args and _has_repeats(text):
            gathered = self._gathered(text, kwargs)
            if gathered is not None:
                return gathered
        key = self._key(text, args, kwargs)
        if key is None:
            return self.tokenizer(text, *args, **kwargs)
        calls = self._calls
        output = calls.get(key)
        if output is None:
            output = calls[key] = self.tokenizer(text, *args, **kwargs)
            while len(calls) > self.size:
                calls.popitem(last=False)
        else:
            calls.move_to_end(key)
        return _copy(output)

    def _gathered(self, texts: list[str] | tuple[str, ...], kwargs: dict[str, Any]) -> Any:
        """A batch that repeats texts (a training batch of a few instructions, several simulators on one task): its
        distinct texts tokenised in one call (sorted, so every batch of the same instructions is one cache entry)
        and each row gathered. A row's tokens depend only on its text and the batch's padded length, which the
        distinct texts share, so this is the tokenizer's own output for ``texts``. None for an output that is not
        one row per text (tensors or lists), which is then tokenised whole."""
        distinct = sorted(set(texts))
        output = self(distinct, **kwargs)
        if not all(isinstance(v, torch.Tensor | list) and len(v) == len(distinct) for v in output.values()):
            return None
        position = {text: i for i, text in enumerate(distinct)}
        rows = [position[text] for text in texts]
        gathered = copy.copy(output)
        for name, value in output.items():
            gathered[name] = value[rows] if isinstance(value, torch.Tensor) else [copy.deepcopy(value[i]) for i in rows]
        if getattr(output, "_encodings", None) is not None:  # a fast tokenizer's per-row encodings
            gathered._encodings = [output._encodings[i] for i in rows]
        return gathered

    def _key(self, text: Any, args: tuple, kwargs: dict[str, Any]) -> Hashable | None:
        """The call's key, or None when it is not cached (disabled, or texts/settings that do not hash)."""
        if not self.enabled or args:
            return None
        if isinstance(text, str):
            texts: Any = text
        elif isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text):
            texts = (type(text).__name__, tuple(text))
        else:
            return None
        settings = tuple(sorted(kwargs.items()))
        try:
            hash(settings)
        except TypeError:
            return None
        sides = (getattr(self.tokenizer, "padding_side", None), getattr(self.tokenizer, "truncation_side", None))
        return texts, settings, sides

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("tokenizer", "_calls"):
            raise AttributeError(name)
        return getattr(self.tokenizer, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in vars(self):
            vars(self)[name] = value
        else:  # e.g. `padding_side`: the tokenizer's own setting (part of the key)
            setattr(self.tokenizer, name, value)

    def __len__(self) -> int:
        return len(self.tokenizer)


def _has_repeats(text: Any) -> bool:
    return isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text) and len(set(text)) < len(text)


def _copy(output: Any) -> Any:
    """A fresh copy of a tokenizer output (callers may add keys or write into tensors)."""
    result = copy.copy(output)
    for name, value in output.items():
        if isinstance(value, torch.Tensor):
            result[name] = value.clone()
        elif isinstance(value, list) and all(isinstance(row, list) for row in value):
            result[name] = [list(row) for row in value]
        else:
            result[name] = copy.deepcopy(value)
    return result


@ProcessorStepRegistry.register(name="world_modality_instruction_tokenizer")
class InstructionTokenizerStep(TokenizerProcessorStep):
    """LeRobot's `TokenizerProcessorStep` (same settings, same saved config) tokenising each distinct task once."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.input_tokenizer = CachedTokenizer(self.input_tokenizer)

    @classmethod
    def replacing(cls, step: TokenizerProcessorStep) -> InstructionTokenizerStep:
        """This step with the settings of LeRobot's ``step`` (built from a tokenizer name)."""
        return cls(**step.get_config())

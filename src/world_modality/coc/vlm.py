"""The `vlm` backend: a Qwen-VL model from a local folder describes K keyframes of each episode.

Each episode becomes one user turn: its keyframes (chosen by `world_modality.coc.keyframes`), each
preceded by "Frame i:", then the prompt template ``prompts/vlm_keyframes.txt`` filled with the
instruction. Episodes are generated in batches (left padding), greedily, and the answer's whitespace
is collapsed into one line.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import numpy as np
import torch

from lerobot_policy_world_modality.errors import InputError, MissingFileError
from world_modality.coc.backend import CocBackend
from world_modality.coc.episodes import Episode, EpisodeSource
from world_modality.coc.keyframes import gripper_events, select_keyframes
from world_modality.coc.labels import CocLabel
from world_modality.devices import resolve_device

PROMPT_TEMPLATE = "vlm_keyframes.txt"


def prompt_template() -> str:
    return (files("world_modality.coc") / "prompts" / PROMPT_TEMPLATE).read_text()


class VlmBackend(CocBackend):
    name = "vlm"

    def __init__(
        self, model_path: str | Path, keyframes: int = 6, max_new_tokens: int = 96, device: str = "auto"
    ) -> None:
        model_path = Path(model_path)
        if not (model_path / "config.json").is_file():
            raise MissingFileError(
                f"--model {model_path} is not a Hugging Face model folder (no config.json); pass a local Qwen-VL "
                "folder such as a downloaded Qwen3-VL-2B-Instruct (nothing is fetched from the hub)"
            )
        if keyframes < 2:
            raise InputError(f"--keyframes must be at least 2 (the first and the last frame), got {keyframes}")
        self.model_path, self.keyframes, self.max_new_tokens = model_path, keyframes, max_new_tokens
        self.device = resolve_device(device)
        self.template = prompt_template()
        self.model = self.processor = None  # loaded on first use: a resumed run with nothing left loads nothing

    def _load(self) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(self.model_path)
        self.processor.tokenizer.padding_side = "left"  # generation continues every row from its last token
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = AutoModelForImageTextToText.from_pretrained(self.model_path, dtype=dtype).to(self.device).eval()

    def messages(self, instruction: str, frame_indices: list[int]) -> list[dict]:
        content: list[dict] = []
        for index in frame_indices:
            content += [{"type": "text", "text": f"Frame {index}:"}, {"type": "image"}]
        text = self.template.format(instruction=instruction, num_keyframes=len(frame_indices))
        content.append({"type": "text", "text": text})
        return [{"role": "user", "content": content}]

    def label(self, source: EpisodeSource, episodes: list[Episode]) -> list[CocLabel]:
        from PIL import Image

        if self.model is None:
            self._load()
        texts, images, chosen = [], [], []
        for episode in episodes:
            frames = select_keyframes(len(episode), self.keyframes, gripper_events(episode.action[:, -1]))
            chosen.append(frames)
            images += [Image.fromarray(np.asarray(f)) for f in source.frames(episode, frames)]
            texts.append(
                self.processor.apply_chat_template(
                    self.messages(episode.instruction, frames), tokenize=False, add_generation_prompt=True
                )
            )
        inputs = self.processor(text=texts, images=images, padding=True, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            generated = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        answers = self.processor.batch_decode(generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        labels = []
        for episode, frames, answer in zip(episodes, chosen, answers, strict=True):
            text = " ".join(answer.split())
            if not text:
                raise InputError(
                    f"{self.model_path} generated no text for episode {episode.index} (only whitespace or special "
                    f"tokens in {self.max_new_tokens} new tokens); check that the folder holds a trained instruct model"
                )
            labels.append(CocLabel(episode.index, text, self.name, tuple(frames)))
        return labels

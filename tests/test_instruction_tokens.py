"""`CachedTokenizer` (issue 38, item 1: instructions tokenised once per distinct instruction at rollout): the
tokenizer's own output, a repeated call does not reach the tokenizer again, another text, batch order, setting or
padding side does, and callers own what they get. Each VLA family's rollout with it: test_smolvla_world.py and
test_qwen_vla_world.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import CountingTokenizer
from lerobot_policy_world_modality.common import CachedTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vlm_folder(tmp_path_factory) -> Path:
    from world_modality.model_folders.smolvlm import write_smolvlm_folder

    return write_smolvlm_folder(tmp_path_factory.mktemp("smolvlm") / "tiny", "tiny")


def test_cached_tokenizer_gives_the_tokenizers_own_output_once_per_call(vlm_folder):
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(str(vlm_folder))
    counting = CountingTokenizer(AutoTokenizer.from_pretrained(str(vlm_folder)))
    cached = CachedTokenizer(counting, size=2)
    settings = {"padding": "max_length", "max_length": 16, "truncation": True, "return_tensors": "pt"}
    for texts in (["reach the goal\n"], ["reach the goal\n", "open the drawer\n"], "reach the goal\n"):
        for _ in range(3):
            got, want = cached(texts, **settings), plain(texts, **settings)
            assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert counting.texts == [["reach the goal\n"], ["reach the goal\n", "open the drawer\n"], "reach the goal\n"]

    # Another order of a mixed batch, other settings or another padding side are other calls.
    cached(["open the drawer\n", "reach the goal\n"], **settings)
    cached(["reach the goal\n"], **{**settings, "max_length": 8})
    cached.padding_side = "left"  # the tokenizer's own setting
    assert counting.tokenizer.padding_side == "left"
    got = cached(["reach the goal\n"], **settings)
    plain.padding_side = "left"
    assert torch.equal(got["input_ids"], plain(["reach the goal\n"], **settings)["input_ids"])
    assert len(counting.texts) == 6 and len(cached._calls) == 2  # least recently used calls dropped

    # Callers own what they get: writing into it leaves the remembered output alone; lists are copied too.
    got["input_ids"].zero_()
    assert cached(["reach the goal\n"], **settings)["input_ids"].any()
    listed = cached(["reach the goal\n"])
    listed["input_ids"][0].append(-1)
    assert cached(["reach the goal\n"])["input_ids"][0][-1] != -1
    cached.enabled = False
    cached(["reach the goal\n"])
    assert counting.texts[-1] == ["reach the goal\n"] and len(counting.texts) == 8


@pytest.mark.parametrize("padding", ["longest", "max_length"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_a_batch_that_repeats_texts_tokenises_each_distinct_set_once(vlm_folder, padding, side):
    """Training batches draw from a few instructions: only the distinct texts are tokenised, once per set of them in
    any order and multiplicity, and every row is what the tokenizer gives for the whole batch (padded length, side)."""
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(str(vlm_folder))
    counting = CountingTokenizer(AutoTokenizer.from_pretrained(str(vlm_folder)))
    plain.padding_side = side
    cached = CachedTokenizer(counting)
    cached.padding_side = side
    settings = {"padding": padding, "max_length": 12, "truncation": True, "return_tensors": "pt"}
    short, long = "reach\n", "open the top drawer of the cabinet slowly\n"
    batches = [[short, long, short, short], [long, short, long], [short, short, long, long, short]]
    for texts in batches:
        got, want = cached(texts, **settings), plain(texts, **settings)
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want), texts
    assert counting.texts == [sorted({short, long})]
    # A batch of one instruction repeated: its own (shorter) padded length, as the tokenizer pads it.
    got, want = cached([short] * 3, **settings), plain([short] * 3, **settings)
    assert all(torch.equal(got[k], want[k]) for k in want) and counting.texts[-1] == [short]
    # Lists (a processor's tokenizer call without return_tensors): the same rows, each the caller's own list.
    listed = {**settings, "return_tensors": None}
    got, want = cached(batches[0], **listed), plain(batches[0], **listed)
    assert dict(got) == dict(want) and counting.texts[-1] == sorted({short, long})
    got["input_ids"][0].append(-1)
    assert got["input_ids"][2][-1] != -1


def test_the_tokenizing_benchmark_writes_its_figures(tmp_path):
    """benchmarks/bench_instruction_tokens.py end to end (a few batches): both arms timed, the same tokens, the JSON."""
    import json
    import subprocess
    import sys

    from conftest import SUBPROCESS_ENV
    from lerobot_cli import REPO

    result = tmp_path / "tokens.json"
    script = REPO / "benchmarks" / "bench_instruction_tokens.py"
    command = [sys.executable, str(script), "--calls", "3", "--batch-size", "8", "--json", str(result)]
    proc = subprocess.run(command, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(result.read_text())
    assert set(figures["median_ms"]) == {"tokenizer", "CachedTokenizer"} and min(figures["median_ms"].values()) > 0
    assert figures["settings"]["instructions"] == 10 and figures["commit"] and "speed-up" in proc.stdout

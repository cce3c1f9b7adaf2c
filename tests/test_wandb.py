"""Weights & Biases: each training run folder logs to a run of its own, resumed by the same folder."""

from __future__ import annotations

import sys
import types

from world_modality.training.trainer import _Loggers, wandb_run_id


def test_each_run_folder_path_logs_to_its_own_wandb_run(monkeypatch, tmp_path):
    started = []
    fake = types.SimpleNamespace(
        init=lambda **kwargs: started.append(kwargs) or types.SimpleNamespace(finish=lambda: None)
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    # A matrix's arms of one seed: folders of one name (seed0) under different arms.
    folders = [tmp_path / "train" / arm / "seed0" for arm in ("E0", "E2")] + [tmp_path / "train" / "E0" / "seed0"]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        _Loggers(folder, True, {}, 0).close()
    ids = [run["id"] for run in started]
    assert ids[0] != ids[1] and ids[0] == ids[2]  # the same folder (a resumed run) continues its run
    assert ids == [wandb_run_id(folder) for folder in folders]
    assert all(run["resume"] == "allow" for run in started)

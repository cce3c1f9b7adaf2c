"""What the latents know: a linear probe from a latent cache to MetaWorld's object positions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from lerobot.utils.constants import OBS_ENV_STATE

from lerobot_policy_world_modality.dataset_files import DatasetSchemaError, dataset_fingerprint
from lerobot_policy_world_modality.errors import InputError
from lerobot_policy_world_modality.latent_cache import LatentCache, LatentCacheMismatch
from world_modality.data.readers import EpisodeReader

# MetaWorld's 39-dim observation: hand xyz, gripper, object 1 xyz + quat (4:11), object 2 xyz + quat
# (11:18), the previous step's 18 values, goal xyz.
OBJECT_POSITION_DIMS = (4, 5, 6, 11, 12, 13)


def probe_object_positions(
    cache: LatentCache, dataset: str | Path, holdout_every: int = 5, state_key: str = OBS_ENV_STATE
) -> float:
    """R^2 of a linear (ridge) probe from latents to MetaWorld's object positions, on held-out episodes.

    Targets are the xyz of both objects in the 39-dim privileged state (dimensions that never vary are
    dropped); every ``holdout_every``-th episode is held out, the probe is fitted on the others, and the
    R^2 is averaged over the target dimensions.
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    fingerprint = dataset_fingerprint(dataset)
    if fingerprint != cache.dataset_fingerprint:
        raise LatentCacheMismatch(
            f"latent cache {cache.path} was made from dataset {cache.dataset_fingerprint}, not {fingerprint} ({dataset})"
        )
    reader = EpisodeReader(dataset, state_key)
    if reader.shape != (39,):
        raise DatasetSchemaError(
            f"the object-position probe needs MetaWorld's 39-dim {state_key}, found shape {reader.shape}"
        )
    if len(reader.episodes) < 2 * holdout_every - 1:
        raise InputError(
            f"the probe needs at least {2 * holdout_every - 1} episodes to hold out every {holdout_every}th one, got {len(reader.episodes)}"
        )
    targets = np.concatenate(reader.read(reader.episodes))[:, OBJECT_POSITION_DIMS]
    position = np.repeat(np.arange(len(reader.episodes)), reader.episodes["length"].to_numpy())
    test = position % holdout_every == holdout_every - 1
    varying = (targets[~test].std(axis=0) > 1e-6) & (targets[test].std(axis=0) > 1e-6)
    x = cache.z.float().numpy()
    probe = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 4, 15)))
    probe.fit(x[~test], targets[~test][:, varying])
    return float(r2_score(targets[test][:, varying], probe.predict(x[test])))

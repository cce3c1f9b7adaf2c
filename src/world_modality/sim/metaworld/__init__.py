"""MetaWorld: the env (`env`), its task catalogue (`tasks`), expert-demonstration datasets (`generate`),
evaluation episodes (`episodes`) and the rollout worker's adapter (`adapter`), as one `Simulator`."""

from world_modality.sim.metaworld.simulator import MetaWorld

SIMULATOR = MetaWorld()

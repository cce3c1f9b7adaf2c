"""LIBERO: offline set-up (`setup`, `assets`), the env with LeRobot's conventions (`env`), LIBERO-format
datasets and their checks (`data`), evaluation episodes (`episodes`) and the rollout worker's adapter
(`adapter`), as one `Simulator`."""

from world_modality.sim.libero.simulator import Libero

SIMULATOR = Libero()

"""LIBERO: offline set-up, the env with LeRobot's conventions and LIBERO-format datasets."""

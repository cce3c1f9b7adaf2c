"""Datasets: MetaWorld expert generation and schema checks for LeRobot v3 datasets."""

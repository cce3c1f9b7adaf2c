"""Simulator adapters shared by dataset generation and closed-loop rollouts."""

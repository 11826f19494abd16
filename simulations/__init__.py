"""Launching runs: the ``fedprune`` command, simulations on Ray, presets."""

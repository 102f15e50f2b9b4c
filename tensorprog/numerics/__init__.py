"""Finite-width runs: the coordinate check, µTransfer sweeps, their data and figures."""

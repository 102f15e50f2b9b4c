"""Infinite-width limits: the NNGP kernel at init, the µ-limit of SGD, the NTK limit."""

"""Kernels behind :mod:`anybit.attention` (imported on first launch)."""

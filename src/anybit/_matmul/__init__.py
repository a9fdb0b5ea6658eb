"""Implementations behind :func:`anybit.matmul`; chosen by :mod:`anybit.matmul`'s dispatcher."""

"""Triton cache keys of the kernels: the same whichever kernels a process imported and
compiled first (``anybit._matmul.cache_keys``), so that one process loads from Triton's
on-disk cache what another compiled (``anybit tune``'s compiling processes)."""

import json

from cache_key_report import KERNELS
from conftest import compile_script


def test_kernel_cache_keys_do_not_depend_on_which_kernel_came_first():
    # Triton merges a callee's constexpr globals into its caller's key only when the
    # callee's key exists already; the Gluon kernels share helpers, so gluon before ws
    # and ws before gluon gave both kernels other keys before the callee-first settling
    forward = json.loads(compile_script("cache_key_report.py", *KERNELS))
    backward = json.loads(compile_script("cache_key_report.py", *reversed(KERNELS)))
    assert forward == backward and len(forward) == len(KERNELS)
    assert len(set(forward.values())) == len(KERNELS)

"""Programmatic dependent launch of the decode kernel (``gemv.programmatic_launch``): when it
is used, what the launch passes, and that the compiled kernel waits before any access."""

import json

import pytest
import torch
from conftest import compile_script

from anybit._matmul import gemv as g
from anybit._matmul import gemv_triton
from anybit.formats._base import Decode

CUDA = torch.device("cuda", 0)  # a device object only: nothing here runs on it


@pytest.fixture
def compiled(monkeypatch):
    """A machine that is not interpreting, whose GPU reports ``capability``."""
    monkeypatch.setattr(g, "interpreting", lambda: False)

    def use(capability):
        monkeypatch.setattr(g, "_capability", lambda index: capability)
    return use


@pytest.mark.parametrize("capability, setting, expected", [
    ((9, 0), None, True), ((10, 0), "on", True), ((9, 0), " OFF ", False), ((8, 9), None, False),
])
def test_used_from_hopper_on_unless_switched_off(compiled, monkeypatch, capability, setting, expected):
    compiled(capability)
    if setting is None:
        monkeypatch.delenv(g.PDL_ENV, raising=False)
    else:
        monkeypatch.setenv(g.PDL_ENV, setting)
    assert g.programmatic_launch(CUDA) is expected


def test_never_on_the_cpu_nor_in_the_interpreter(compiled, monkeypatch):
    compiled((9, 0))
    assert not g.programmatic_launch(torch.device("cpu"))
    monkeypatch.setattr(g, "interpreting", lambda: True)
    assert not g.programmatic_launch(CUDA)


def test_an_unknown_setting_is_refused(monkeypatch):
    monkeypatch.setenv(g.PDL_ENV, "1")
    with pytest.raises(ValueError, match=r"ANYBIT_PDL='1' is not supported; accepted: on, off"):
        g.programmatic_launch(CUDA)


@pytest.mark.parametrize("pdl", [True, False])
def test_the_launch_asks_for_it_and_the_kernel_waits(monkeypatch, pdl):
    """With programmatic launch the kernel gets PDL (its wait) and the launch ``launch_pdl``;
    without, neither."""
    launches = []

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append(kwargs)

    monkeypatch.setattr(gemv_triton, "gemv_kernel", Kernel())
    monkeypatch.setattr(g, "programmatic_launch", lambda device: pdl)
    codes = torch.zeros(64, 16, dtype=torch.int32)
    scales = torch.ones(64, 1, dtype=torch.float16)
    config = g.GemvConfig(block_m=1, block_n=32, block_k=128, split_k=1)
    g.launch_gemv(torch.zeros(1, 128, dtype=torch.float16), codes, scales, None, None, None, 64, 128, 4, 128,
                  Decode.SYMMETRIC, config)
    (kwargs,) = launches
    if pdl:
        assert kwargs["PDL"] is True and kwargs["launch_pdl"] is True
    else:
        assert "PDL" not in kwargs and "launch_pdl" not in kwargs


@pytest.mark.parametrize("bits, weights", [(4, 1), (3, 2), (8, 3)])
def test_the_compiled_kernel_waits_before_touching_memory(bits, weights):
    """The kernel compiled for sm_90 (no GPU needed; tests/gemv_ptx.py): griddepcontrol.wait
    comes before the first load, store, copy or atomic on global memory, and the next
    kernel is let launch only after the wait (so the kernels after this one also start
    after the one before it has finished).  The control, without PDL, has neither
    instruction."""
    def report(pdl):
        return json.loads(compile_script("gemv_ptx.py", int(pdl), bits, weights))

    on = report(True)
    assert on["launch_pdl"] and on["wait"] < on["launch_dependents"] < on["first_global_access"]
    off = report(False)
    assert not off["launch_pdl"] and off["wait"] is None and off["launch_dependents"] is None
    assert off["first_global_access"] is not None

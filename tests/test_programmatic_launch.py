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
    ((9, 0), None, g.DEFAULT_TRIGGER), ((10, 0), "on", g.DEFAULT_TRIGGER), ((9, 0), " OFF ", None),
    ((8, 9), None, None), ((8, 9), "late", None), ((9, 0), "Early", g.Trigger.EARLY), ((9, 0), "late", g.Trigger.LATE),
])
def test_used_from_hopper_on_unless_switched_off(compiled, monkeypatch, capability, setting, expected):
    compiled(capability)
    if setting is None:
        monkeypatch.delenv(g.PDL_ENV, raising=False)
    else:
        monkeypatch.setenv(g.PDL_ENV, setting)
    assert g.programmatic_launch(CUDA) is expected


def test_the_default_trigger_is_a_trigger(compiled, monkeypatch):
    compiled((9, 0))
    monkeypatch.delenv(g.PDL_ENV, raising=False)
    assert g.programmatic_launch(CUDA) is g.DEFAULT_TRIGGER
    assert isinstance(g.DEFAULT_TRIGGER, g.Trigger)


def test_never_on_the_cpu_nor_in_the_interpreter(compiled, monkeypatch):
    compiled((9, 0))
    assert g.programmatic_launch(torch.device("cpu")) is None
    monkeypatch.setattr(g, "interpreting", lambda: True)
    assert g.programmatic_launch(CUDA) is None


def test_an_unknown_setting_is_refused(monkeypatch):
    monkeypatch.setenv(g.PDL_ENV, "1")
    with pytest.raises(ValueError, match=r"ANYBIT_PDL='1' is not supported; accepted: on, off, early, late"):
        g.programmatic_launch(CUDA)


@pytest.mark.parametrize("trigger", [g.Trigger.EARLY, g.Trigger.LATE, None])
def test_the_launch_asks_for_it_and_the_kernel_waits(monkeypatch, trigger):
    """With programmatic launch the kernel gets PDL (its wait and where it triggers) and the
    launch ``launch_pdl``; without, neither."""
    launches = []

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append(kwargs)

    monkeypatch.setattr(gemv_triton, "gemv_kernel", Kernel())
    monkeypatch.setattr(g, "programmatic_launch", lambda device: trigger)
    codes = torch.zeros(64, 16, dtype=torch.int32)
    scales = torch.ones(64, 1, dtype=torch.float16)
    config = g.GemvConfig(block_m=1, block_n=32, block_k=128, split_k=1)
    g.launch_gemv(torch.zeros(1, 128, dtype=torch.float16), codes, scales, None, None, None, 64, 128, 4, 128,
                  Decode.SYMMETRIC, config)
    (kwargs,) = launches
    if trigger is None:
        assert "PDL" not in kwargs and "launch_pdl" not in kwargs
    else:
        assert kwargs["PDL"] == gemv_triton.TRIGGER_IDS[trigger] != gemv_triton.PDL_OFF.value
        assert kwargs["launch_pdl"] is True


@pytest.mark.parametrize("bits, weights, norm", [(4, 1, False), (3, 2, False), (8, 3, False), (4, 1, True),
                                                 (4, 2, True)])
def test_the_compiled_kernel_waits_before_touching_memory(bits, weights, norm):
    """The kernel compiled for sm_90 (no GPU needed; tests/gemv_ptx.py): griddepcontrol.wait
    comes before the first load, store, copy or atomic on global memory; the next kernel is
    let launch only after the wait (so the kernels after this one also start after the one
    before it has finished), before the K loop's loads (early) or after them (late).  The
    control, without PDL, has neither instruction.  The same where the kernel reads and
    writes an RMSNorm's sums of squares (``norm``)."""
    def report(pdl):
        return json.loads(compile_script("gemv_ptx.py", pdl, bits, weights, *(["norm"] if norm else [])))

    early = report("early")
    assert early["launch_pdl"] and early["wait"] < early["launch_dependents"] < early["first_global_access"]
    late = report("late")
    assert late["launch_pdl"] and late["wait"] < late["first_global_access"] < late["launch_dependents"]
    assert late["launch_dependents"] > late["last_copy"] and early["launch_dependents"] < early["last_copy"]
    off = report("off")
    assert not off["launch_pdl"] and off["wait"] is None and off["launch_dependents"] is None
    assert off["first_global_access"] is not None

"""Programmatic dependent launch of the decode and GEMM kernels (``gemv.programmatic_launch``): when it
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


def _record_launches(monkeypatch, module, name: str) -> list[dict]:
    """Replace ``module.name`` (a jitted kernel) by one that records each launch's keyword
    arguments instead of launching."""
    launches = []

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append(kwargs)

    monkeypatch.setattr(module, name, Kernel())
    return launches


def _assert_pdl_arguments(launches: list[dict], trigger) -> None:
    """One launch, with PDL and ``launch_pdl`` for ``trigger``, or neither without one."""
    (kwargs,) = launches
    if trigger is None:
        assert "PDL" not in kwargs and "launch_pdl" not in kwargs
    else:
        assert kwargs["PDL"] == gemv_triton.TRIGGER_IDS[trigger] != gemv_triton.PDL_OFF.value
        assert kwargs["launch_pdl"] is True


@pytest.mark.parametrize("trigger", [g.Trigger.EARLY, g.Trigger.LATE, None])
def test_the_launch_asks_for_it_and_the_kernel_waits(monkeypatch, trigger):
    """With programmatic launch the kernel gets PDL (its wait and where it triggers) and the
    launch ``launch_pdl``; without, neither."""
    launches = _record_launches(monkeypatch, gemv_triton, "gemv_kernel")
    monkeypatch.setattr(g, "programmatic_launch", lambda device: trigger)
    codes = torch.zeros(64, 16, dtype=torch.int32)
    scales = torch.ones(64, 1, dtype=torch.float16)
    config = g.GemvConfig(block_m=1, block_n=32, block_k=128, split_k=1)
    g.launch_gemv(torch.zeros(1, 128, dtype=torch.float16), codes, scales, None, None, None, 64, 128, 4, 128,
                  Decode.SYMMETRIC, config)
    _assert_pdl_arguments(launches, trigger)


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


@pytest.mark.parametrize("kernel, split_k", [("triton", 1), ("triton", 4), ("gluon", 2), ("ws", 1), ("ws", 2)])
def test_the_compiled_gemm_kernels_wait_before_touching_memory(kernel, split_k):
    """The GEMM kernels compiled for sm_90 (tests/gemm_pdl_ptx.py): every part of the kernel
    that touches global memory (the whole kernel; the warp-specialized one's loader and each
    consumer warpgroup) waits for the kernel before it first; the next kernel is let launch
    after the wait, before the first copy of the K loop (early) or after the last (late).
    Without PDL, no instruction of either kind."""
    def report(pdl):
        return json.loads(compile_script("gemm_pdl_ptx.py", kernel, pdl, split_k))

    for pdl in ("early", "late"):
        compiled = report(pdl)
        assert compiled["launch_pdl"]
        touching = [part for part in compiled["parts"] if part["first_global_access"] is not None]
        assert len(touching) == (1 if kernel != "ws" else 3)  # the loader and two consumer warpgroups
        assert compiled["waits"] == len(touching)
        for part in touching:
            assert part["wait"] is not None and part["wait"] < part["first_global_access"]
        (loader,) = [part for part in touching if part["first_copy"] is not None]
        if pdl == "early":
            assert loader["wait"] < loader["launch_dependents"] < loader["first_copy"]
        else:
            assert loader["launch_dependents"] > loader["last_copy"]
        assert [part for part in touching if part["launch_dependents"] is not None] == [loader]
    off = report("off")
    assert not off["launch_pdl"] and off["waits"] == 0
    assert all(part["launch_dependents"] is None for part in off["parts"])


@pytest.mark.parametrize("launcher", ["gemm", "gluon", "gluon_ws"])
@pytest.mark.parametrize("trigger", [g.Trigger.EARLY, g.Trigger.LATE, None])
def test_the_gemm_launches_ask_for_it(monkeypatch, launcher, trigger):
    """Each GEMM launcher passes the kernel its PDL and the launch ``launch_pdl`` as
    ``programmatic_launch`` says (the same switch as the decode kernel's)."""
    from anybit._matmul import gemm as gm
    from anybit._matmul import gemm_gluon, gemm_gluon_ws, gemm_triton

    monkeypatch.setattr(g, "programmatic_launch", lambda device: trigger)
    codes = torch.zeros(128, 16, dtype=torch.int32)
    scales = torch.ones(128, 1, dtype=torch.float16)
    x = torch.zeros(64, 128, dtype=torch.float16)
    operands = (x, codes, scales, None, None, 128, 128, 4, 128, Decode.SYMMETRIC)
    if launcher == "gemm":
        launches = _record_launches(monkeypatch, gemm_triton, "gemm_kernel")
        gm.launch_gemm(x, codes, scales, None, None, None, 128, 128, 4, 128, Decode.SYMMETRIC,  # no table
                       gm.GemmConfig(64, 64, 64, 1, 4, 2))
    elif launcher == "gluon":
        launches = _record_launches(monkeypatch, gemm_gluon, "gemm_gluon_kernel")
        gm.launch_gemm_gluon(*operands, gm.GemmConfig(64, 64, 64, 1, 4, 2))
    else:
        launches = _record_launches(monkeypatch, gemm_gluon_ws, "gemm_gluon_ws_kernel")
        gm.launch_gemm_gluon_ws(*operands, gm.ws_config(64, 128, 64, 1, 6))
    _assert_pdl_arguments(launches, trigger)

"""The warp-specialized GEMM's loader held to fewer K-blocks in flight (``GemmConfig.loads_ahead``),
without a GPU: the settings it is accepted with, the tuner's paced twins, and the sm_90 compile.
On a GPU: tests/test_gemm_gluon_ws_cuda.py::test_loads_ahead."""

from dataclasses import replace

import pytest
from conftest import Refused, compile_script

from anybit import tune
from anybit._matmul import candidates as cand
from anybit._matmul import gemm as gm
from anybit._matmul import perf_model as pm

SIX = gm.ws_config(64, 128, 128, 2, 6, cluster_sum=True)


REFUSED = [
    Refused(dict(loads_ahead=6), "loads_ahead=6 with num_stages=6: accepted: 0 .*or 1 <= loads_ahead < num_stages"),
    Refused(dict(loads_ahead=-1), "loads_ahead=-1"),
    Refused(dict(loads_ahead=3, num_stages=3), "loads_ahead=3 with num_stages=3"),
]


@pytest.mark.parametrize("case", REFUSED, ids=Refused.label)
def test_loads_ahead_is_refused_outside_its_settings(case):
    with pytest.raises(ValueError, match=case.match):
        replace(SIX, **case.config)


def test_loads_ahead_settings():
    """In the warp-specialized kernel only; the label, the model's class and the table's dict
    carry it, and a table entry without it reads as 0 (the ring issued full)."""
    plan = gm.Plan(gm.Kernel.GLUON_WS, replace(SIX, loads_ahead=4))
    assert plan.label() == "gluon-ws 64x128x128 split2 12w6s cluster ahead4"
    assert plan.config.ws_only and not SIX.ws_only
    assert gm.Plan.from_dict(plan.to_dict()) == plan
    assert gm.Plan.from_dict({"kernel": "gluon_ws", "config": {
        k: v for k, v in plan.to_dict()["config"].items() if k != "loads_ahead"}}).config.loads_ahead == 0
    problem = pm.Problem(64, 8192, 8192, 4, 128)
    assert pm.plan_class(problem, plan) == "gluon_ws 64x128x128 12w6s cluster ahead4 m64"
    assert pm.plan_class(problem, gm.Plan(gm.Kernel.GLUON_WS, SIX)) == "gluon_ws 64x128x128 12w6s cluster m64"
    with pytest.raises(ValueError, match="loads_ahead=2.*in the gluon_ws kernel only"):
        gm.Plan(gm.Kernel.GEMM, gm.GemmConfig(64, 64, 64, num_stages=3, loads_ahead=2))


@pytest.mark.parametrize("stages, ahead", [(3, 2), (4, 2), (6, 4), (8, 6)])
def test_paced_twin(stages, ahead):
    """Two below the ring's stages, at least 2; none for other kernels, rings of 2 or plans
    already held."""
    base = gm.Plan(gm.Kernel.GLUON_WS, gm.ws_config(64, 128, 128, 1, stages))
    assert cand.paced(base) == gm.Plan(gm.Kernel.GLUON_WS, replace(base.config, loads_ahead=ahead))
    assert cand.paced(cand.paced(base)) is None
    assert cand.paced(gm.Plan(gm.Kernel.GLUON_WS, gm.ws_config(64, 128, 128, 1, 2))) is None
    assert cand.paced(gm.Plan(gm.Kernel.GEMM, gm.GemmConfig(64, 64, 64, num_stages=stages))) is None
    assert cand.paced(gm.Plan(gm.Kernel.DEQUANT)) is None


def test_the_tuner_measures_paced_twins(monkeypatch):
    """The first PACED_MEASURED warp-specialized plans the tuner measures at a point, and the
    table's plan, are also measured paced; the twins join the point's candidates with the
    model's prediction."""
    import torch

    incumbent = gm.Plan(gm.Kernel.GLUON_WS, gm.ws_config(64, 64, 128, 2, 6, 64, 2, cluster_sum=True))
    monkeypatch.setattr(tune, "_incumbent", lambda *args: incumbent)
    monkeypatch.setattr(gm, "hopper", lambda device: True)
    hw = pm.Hardware(sms=132, fp16_tflops=764.0, copy_tbps=3.0)
    point, selected = tune._choose("int4-g128", 8192, 8192, 64, 132, torch.device("cpu"), hw, pm.ModelParams(), [],
                                   2, False)
    plans = [c.plan for c in selected]
    ws = [p for p in plans if p.kernel is gm.Kernel.GLUON_WS and not p.config.loads_ahead]
    twins = [p for p in plans if p.config and p.config.loads_ahead]
    assert twins and all(cand.paced(p) in twins for p in ws[:tune.PACED_MEASURED])
    assert cand.paced(incumbent) in twins
    assert all(t in [c.plan for c in point.candidates] for t in twins)


@pytest.mark.parametrize("stages, ahead, bits", [(3, 2, 4), (6, 4, 8)])
def test_paced_plans_compile(stages, ahead, bits):
    """Compiled for sm_90: the loader also waits for stages' landing (more mbarrier waits than
    without; LLVM copies the loop's wait where it peels the loop), the consumers' MMAs stay in
    flight."""
    args = (64, 128, 128, stages, 0, 12, bits)
    plain = compile_script("ptxas_report.py", *args, "--ptx")
    paced = compile_script("ptxas_report.py", *args, "--ptx", "--loads-ahead", ahead)
    assert "wgmma.mma_async instructions are serialized" not in paced
    assert paced.count("mbarrier.try_wait.parity") > plain.count("mbarrier.try_wait.parity")

"""An RMSNorm between two decode launches (``gemv.launch_gemv_norm_parts`` writing h, h * gamma and
per-tile sums of squares; a launch reading h * gamma scaling its rows) against float64, in Triton's
interpreter on CPU (or on a GPU).  Outputs are poisoned with NaN, so an element left unwritten fails.
"""

from dataclasses import dataclass

import pytest
import torch
from conftest import unit_roundoff

import anybit
from anybit._matmul import gemv as g

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class Case:
    spec: str
    m: int
    n: int  # the producer's rows: the norm's width, the reader's K
    k: int
    reader_ns: tuple[int, ...]  # the rows of the weights of the launch reading the norm
    dtype: torch.dtype
    config: g.GemvConfig | None = None  # the producer's (None: the heuristic's)
    reader_config: g.GemvConfig | None = None
    addend: bool = True

    def __str__(self):
        def cfg(c):
            return "auto" if c is None else f"bm{c.block_m}-bn{c.block_n}-s{c.split_k}"
        return (f"{self.spec}-M{self.m}-N{self.n}-K{self.k}-R{'x'.join(map(str, self.reader_ns))}-"
                f"{str(self.dtype)[6:]}-{cfg(self.config)}-{cfg(self.reader_config)}-{'add' if self.addend else ''}")


CASES = [
    Case("int4-g32", 1, 96, 64, (40,), torch.float16),
    # split-K on both sides, partial last tiles, two weights reading the norm in one launch
    Case("int4-g32", 1, 70, 64, (33, 20), torch.float16, g.GemvConfig(1, 32, 32, 2), g.GemvConfig(1, 16, 32, 3)),
    Case("uint4-g64", 3, 200, 128, (48,), torch.bfloat16, g.GemvConfig(4, 32, 64, 1), addend=False),
    # several row blocks of x on both sides
    Case("int4-g32", 5, 160, 64, (24, 24, 8), torch.float16, g.GemvConfig(2, 64, 32, 2), g.GemvConfig(2, 16, 32, 1)),
    Case("nf4-g32", 8, 64, 96, (64,), torch.float16, g.GemvConfig(8, 16, 32, 3)),
    Case("int3-gc", 2, 33, 48, (17,), torch.bfloat16),
]


def _norm64(h: torch.Tensor, gamma: torch.Tensor, eps: float) -> torch.Tensor:
    wide = h.double()
    return gamma.double() * wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps)


def _settings(qw, m, config):
    config, group = g.launch_settings(qw, m, torch.device(DEVICE), config)
    return config, group, qw.format.kernel_decode().mode


@pytest.mark.parametrize("case", CASES, ids=str)
def test_norm_between_two_launches_matches_float64(case):
    torch.manual_seed(case.m * 1000 + case.n)
    qw = anybit.quantize(torch.randn(case.n, case.k, device=DEVICE), case.spec)
    readers = [anybit.quantize(torch.randn(n, case.n, device=DEVICE), case.spec) for n in case.reader_ns]
    x = torch.randn(case.m, case.k, device=DEVICE).to(case.dtype)
    r = torch.randn(case.m, case.n, device=DEVICE).to(case.dtype) if case.addend else None
    gamma = (torch.rand(case.n, device=DEVICE) + 0.5).to(case.dtype)
    eps = 1e-5
    u = unit_roundoff(case.dtype)

    # the producer: h as the plain launch gives it, h * gamma, and each tile's sums of squares
    config, group, mode = _settings(qw, case.m, case.config)
    part = (qw.codes, qw.params["scales"], qw.params.get("zeros"), None, case.n)
    tiles = g.norm_tiles(case.n, config.block_n)
    h = torch.full((case.m, case.n), float("nan"), dtype=x.dtype, device=DEVICE)
    scaled = torch.full_like(h, float("nan"))
    sums = torch.full((case.m, tiles), float("nan"), device=DEVICE)
    g.launch_gemv_multi(x, [part], g.kernel_table(qw), case.k, qw.format.bits, group, mode, config, [h], addend=r,
                        norm_out=(gamma, scaled, sums))
    plain = g.launch_gemv_multi(x, [part], g.kernel_table(qw), case.k, qw.format.bits, group, mode, config,
                                addend=r)[0]
    assert torch.equal(h, plain)
    wide = h.double()
    assert not torch.isnan(scaled).any() and not torch.isnan(sums).any(), "the kernel left elements unwritten"
    product = wide * gamma.double()
    assert ((scaled.double() - product).abs() <= 2 * u * product.abs()).all()  # one conversion (truncated for bf16)
    expected_sums = torch.stack([(wide[:, t * config.block_n:(t + 1) * config.block_n] ** 2).sum(-1)
                                 for t in range(tiles)], dim=1)
    torch.testing.assert_close(sums.double(), expected_sums, rtol=1e-5, atol=1e-6)

    # the reader: x = h * gamma, each row scaled by rsqrt(mean of squares + eps) after its product
    rconfig, rgroup, rmode = _settings(readers[0], case.m, case.reader_config)
    outs = [torch.full((case.m, n), float("nan"), dtype=x.dtype, device=DEVICE) for n in case.reader_ns]
    g.launch_gemv_multi(scaled, [(q.codes, q.params["scales"], q.params.get("zeros"), None, n)
                                 for q, n in zip(readers, case.reader_ns)],
                        g.kernel_table(readers[0]), case.n, readers[0].format.bits, rgroup, rmode, rconfig, outs,
                        norm_in=(sums, case.n, eps))
    normed = _norm64(h, gamma, eps)
    for y, q in zip(outs, readers):
        assert not torch.isnan(y).any(), "the kernel left elements unwritten"
        w = q.dequantize(torch.float64)
        ref = normed @ w.t()
        magnitude = normed.abs() @ w.abs().t()
        table = rmode in (g.Decode.TABLE, g.Decode.ROW_TABLE)
        roundoff = 2 * u + (case.n + 4) * 2.0**-24 + (u if table or rgroup < rconfig.block_k else 0.0)
        bound = 2 * (u * ref.abs() + roundoff * magnitude) + 1e-30
        assert ((y.double() - ref).abs() <= bound).all(), ((y.double() - ref).abs() / bound).max()


def test_the_public_launch_gives_h_scaled_and_sums():
    torch.manual_seed(0)
    qw = anybit.quantize(torch.randn(64, 64, device=DEVICE), "int4-g32")
    x = torch.randn(2, 64, device=DEVICE).half()
    gamma = torch.rand(64, device=DEVICE).half()
    config, group = g.launch_settings(qw, 2, x.device)
    h, scaled, sums = g.launch_gemv_norm_parts(x, qw.codes, qw.params["scales"], None, None, None, 64, 64, 4,
                                               group, g.Decode.SYMMETRIC, config, gamma)
    assert torch.equal(h, g.launch_gemv(x, qw.codes, qw.params["scales"], None, None, None, 64, 64, 4, group,
                                        g.Decode.SYMMETRIC, config))
    assert sums.shape == (2, g.norm_tiles(64, config.block_n)) and sums.dtype == torch.float32
    torch.testing.assert_close(sums.sum(-1), h.float().pow(2).sum(-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scaled, (h.float() * gamma.float()).half())


def test_norm_arguments_are_checked():
    qw = anybit.quantize(torch.randn(40, 64), "int4-g32")
    x = torch.randn(1, 64, dtype=torch.float16)
    config = g.GemvConfig(1, 32, 32, 1)
    part = (qw.codes, qw.params["scales"], None, None, 40)
    scaled = torch.empty(1, 40, dtype=torch.float16)
    sums = torch.empty(1, 2)
    gamma = torch.ones(40, dtype=torch.float16)

    def launch(**kwargs):
        g.launch_gemv_multi(x, [part], None, 64, 4, 32, g.Decode.SYMMETRIC, config, **kwargs)

    with pytest.raises(ValueError, match="one weight"):
        g.launch_gemv_multi(x, [part, part], None, 64, 4, 32, g.Decode.SYMMETRIC, config,
                            norm_out=(gamma, scaled, sums))
    with pytest.raises(ValueError, match=r"norm weight \(39,\)"):
        launch(norm_out=(gamma[:39], scaled, sums))
    with pytest.raises(ValueError, match="norm output"):
        launch(norm_out=(gamma, scaled.float(), sums))
    with pytest.raises(ValueError, match=r"norm parts \(1, 3\)"):
        launch(norm_out=(gamma, scaled, torch.empty(1, 3)))
    with pytest.raises(ValueError, match=r"norm parts \(2, 2\)"):
        launch(norm_in=(torch.empty(2, 2), 64, 1e-5))
    with pytest.raises(ValueError, match="64 columns"):
        launch(norm_in=(sums, 63, 1e-5))
    with pytest.raises(ValueError, match="eps"):
        launch(norm_in=(sums, 64, -1.0))

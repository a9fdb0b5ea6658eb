"""The Triton decode kernel against float64, in Triton's interpreter on CPU (or on a GPU).

Outputs are poisoned with NaN before each launch, so an element the kernel
does not write fails the test.
"""

import itertools
from dataclasses import dataclass

import pytest
import torch
from conftest import GROUPS, KERNEL_SPECS, assert_matmul_close, launch_poisoned, one_spec_per_family, unit_roundoff

import anybit
from anybit._matmul import gemv as g
from anybit.matmul import Backend, select_backend

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class Case:
    spec: str
    m: int
    n: int
    k: int
    dtype: torch.dtype
    config: g.GemvConfig | None = None  # None: the heuristic's choice

    def __str__(self):
        cfg = "auto" if self.config is None else f"bk{self.config.block_k}-s{self.config.split_k}-u{self.config.unroll}"
        return f"{self.spec}-M{self.m}-N{self.n}-K{self.k}-{str(self.dtype)[6:]}-{cfg}"


def _cases():
    shapes = itertools.cycle([(70, 300), (1, 96), (130, 576), (33, 160)])
    ms = itertools.cycle([1, 3, 17, 32])
    dtypes = itertools.cycle([torch.float16, torch.bfloat16])
    cases = []
    for spec in one_spec_per_family(0):
        n, k = next(shapes)
        cases.append(Case(spec, next(ms), n, k, next(dtypes)))
    # Each kernel path forced: scale after the dot (G >= BLOCK_K), scale in the
    # decode (G < BLOCK_K), split-K or not, both M tiles.
    forced = [
        ("int4-g128", g.GemvConfig(16, 64, 128, 1)),
        ("int4-g128", g.GemvConfig(16, 32, 64, 3)),
        ("uint4-g64", g.GemvConfig(32, 64, 32, 5)),
        ("uint4-g64", g.GemvConfig(16, 64, 128, 2)),  # two groups per K-block
        ("nf4-g32", g.GemvConfig(16, 16, 64, 2)),
        ("lut3-gc", g.GemvConfig(32, 64, 256, 4)),  # more splits than blocks for some
        ("int3-g16", g.GemvConfig(16, 64, 32, 1)),
        # several K-blocks per loop iteration: K=300 makes 10 blocks of 32, the last partial
        ("int4-g32", g.GemvConfig(16, 32, 32, 1, unroll=2)),
        ("nf4-g32", g.GemvConfig(16, 32, 32, 5, unroll=2)),
        ("uint4-g64", g.GemvConfig(16, 64, 32, 2, unroll=5)),
    ]
    for (spec, config), m in zip(forced, itertools.cycle([1, 32, 5])):
        cases.append(Case(spec, m, 70, 300, torch.float16, config))
    return cases


CASES = _cases()


def _run(case: Case, bias: bool):
    return launch_poisoned(g.launch_gemv, g.launch_settings, case, bias, DEVICE)


def _weight_rounding(case: Case, qw) -> float:
    """Unit roundoff of the weight values the dot product sees.

    Integer values are exact in fp16/bf16; table values, and any weight scaled
    before the dot (groups narrower than BLOCK_K), are rounded to x's dtype.
    """
    config, group = g.launch_settings(qw, case.m, torch.device(DEVICE), case.config)
    table = qw.format.kernel_decode().mode in (g.Decode.TABLE, g.Decode.ROW_TABLE)
    return unit_roundoff(case.dtype) if table or group < config.block_k else 0.0


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_kernel_matches_float64(case, bias):
    y, x, qw, b = _run(case, bias)
    assert not torch.isnan(y).any(), "the kernel left elements unwritten"
    assert_matmul_close(y.cpu(), x.cpu(), qw.to("cpu"), None if b is None else b.cpu(),
                        weight_roundoff=_weight_rounding(case, qw))


def test_every_kernel_format_is_covered():
    covered = {c.spec.rsplit("-", 1)[0] for c in CASES}
    assert covered == {s.rsplit("-", 1)[0] for s in KERNEL_SPECS}
    assert {c.spec.rsplit("-", 1)[1] for c in CASES} >= set(GROUPS)


def test_dispatcher_forced_triton(monkeypatch):
    monkeypatch.setenv("ANYBIT_BACKEND", "triton")
    qw = anybit.quantize(torch.randn(40, 96, device=DEVICE), "int4-g32")
    x = torch.randn(2, 3, 96, dtype=torch.float16, device=DEVICE)
    assert select_backend(x, qw) is Backend.TRITON
    y = anybit.matmul(x, qw)
    assert y.shape == (2, 3, 40)
    assert_matmul_close(y.cpu(), x.cpu(), qw.to("cpu"))


@pytest.mark.parametrize(
    "spec, dtype, rows, message",
    [
        ("mxfp4", torch.float16, 2, "format mxfp4 has no Triton kernel yet"),
        ("int4-g32", torch.float32, 2, "x has dtype torch.float32"),
    ],
)
def test_dispatcher_explains_what_triton_cannot_run(monkeypatch, spec, dtype, rows, message):
    monkeypatch.setenv("ANYBIT_BACKEND", "triton")
    qw = anybit.quantize(torch.randn(40, 96, device=DEVICE), spec)
    x = torch.randn(rows, 96, device=DEVICE).to(dtype)
    with pytest.raises(ValueError, match=message):
        anybit.matmul(x, qw)
    monkeypatch.setenv("ANYBIT_BACKEND", "auto")
    assert select_backend(x, qw) is Backend.REFERENCE


def test_auto_uses_the_reference_path_on_cpu(monkeypatch):
    monkeypatch.delenv("ANYBIT_BACKEND", raising=False)
    qw = anybit.quantize(torch.randn(40, 96), "int4-g32")
    assert select_backend(torch.randn(2, 96, dtype=torch.float16), qw) is Backend.REFERENCE


@pytest.mark.parametrize("m", [1, 4, 5, 8, 16])
def test_heuristic_splits_twice_as_far_at_eight_rows(m):
    """5 to 8 rows of x (BLOCK_M 8) with 128-code K-blocks split K for 8 programs per SM,
    as does one row on a layer of at most 128 row tiles; other row counts for 4, and so
    do the 256-code blocks of per-row groups."""
    config = g.gemv_config(m, 4096, 14336, 128, 132, ptx=True, split_groups=True)
    per_sm = 8 if 4 < m <= 8 or m == 1 else 4
    assert config == g.gemv_config(m, 4096, 14336, 128, 132, per_sm, ptx=True, split_groups=True)
    assert config.split_k == g.split_for(14336 // config.block_k, 4096 // config.block_n, per_sm, 132)
    if per_sm == 8:
        assert config.split_k > g.gemv_config(m, 4096, 14336, 128, 132, 4, ptx=True, split_groups=True).split_k
    per_row = g.gemv_config(m, 4096, 14336, 14336, 132, ptx=True)
    assert per_row.block_k == 256
    assert per_row == g.gemv_config(m, 4096, 14336, 14336, 132, 8 if m == 1 else 4, ptx=True)


@pytest.mark.parametrize("n, per_sm", [(1024, 8), (4096, 8), (4097, 4), (6144, 4), (28672, 4)])
@pytest.mark.parametrize("paired", [False, True])
def test_heuristic_splits_layers_with_few_tiles_further_at_one_row(n, per_sm, paired):
    """At one row of x, layers of at most ``ONE_ROW_FEW_TILES`` row tiles (4096 rows of 32)
    split K for 8 programs per SM, larger ones for 4; at two rows all for 4."""
    config = g.gemv_config(1, n, 14336, 128, 132, ptx=True, paired=paired)
    assert config == g.gemv_config(1, n, 14336, 128, 132, per_sm, ptx=True, paired=paired)
    two = g.gemv_config(2, n, 14336, 128, 132, ptx=True, paired=paired)
    assert two == g.gemv_config(2, n, 14336, 128, 132, 4, ptx=True, paired=paired)
    # several weights in one launch count their tiles together
    merged = g.merged_split(config, 2 * n, 14336, 132)
    tiles = -(-2 * n // config.block_n)
    assert merged == g.split_for(14336 // config.block_k, tiles, 8 if tiles <= g.ONE_ROW_FEW_TILES else 4, 132,
                                 config.unroll)


@pytest.mark.parametrize("m", [1, 2, 3, 8, 16, 17, 32])
@pytest.mark.parametrize("split_groups", [False, True])
def test_heuristic_pairs_128_code_blocks_of_4_bit_codes(m, split_groups):
    """4-bit codes with 128-code groups at 1 to 16 rows of x: two 128-code K-blocks per
    iteration at about 4 programs per SM, except at one row where groups are kept apart."""
    config = g.gemv_config(m, 4096, 14336, 128, 132, ptx=True, split_groups=split_groups, paired=True)
    if m > 16:
        assert config.unroll == 1
        assert config == g.gemv_config(m, 4096, 14336, 128, 132, ptx=True, split_groups=split_groups)
    elif m == 1 and split_groups:
        assert (config.block_k, config.unroll) == (256, 1)
    else:
        assert (config.block_k, config.unroll) == (128, 2)
        assert config.split_k == g.split_for(112, 128, 8 if m == 1 else 4, 132, 2)
        assert (112 // config.split_k) % 2 == 0
    # an odd number of 128-code blocks takes them one at a time
    odd = g.gemv_config(m, 4096, 384, 128, 132, ptx=True, split_groups=split_groups, paired=True)
    assert odd.unroll == 1
    # other group sizes keep their blocks
    assert g.gemv_config(m, 4096, 14336, 64, 132, ptx=True, split_groups=split_groups, paired=True) == \
        g.gemv_config(m, 4096, 14336, 64, 132, ptx=True, split_groups=split_groups)


@pytest.mark.parametrize("spec, paired", [("int4-g128", True), ("uint4-g256", True), ("nf4-g128", True),
                                          ("lut4-g128", True), ("int4-g64", False), ("int4-gc", False),
                                          ("int8-g128", False), ("int3-g128", False)])
def test_which_formats_pair_their_blocks(spec, paired):
    qw = anybit.quantize(torch.randn(64, 1024), spec)
    config, _ = g.launch_settings(qw, 4, torch.device("cpu"))
    assert (config.unroll == 2) == paired


def test_heuristic_is_deterministic_and_group_aligned():
    for (m, n, k, group), per_sm, (ptx, split_groups, interleaved) in itertools.product(
        [(1, 4096, 4096, 128), (32, 28672, 4096, 64), (7, 576, 576, 576), (1, 64, 1536, 16), (3, 4096, 14336, 128),
         (1, 4096, 4096, 4096), (2, 576, 576, 64), (1, 96, 96, 96)],
        (2, 4, 8),
        [(False, False, False), (True, False, False), (True, True, False), (True, True, True)],
    ):
        first = g.gemv_config(m, n, k, group, 132, per_sm, ptx, split_groups, interleaved)
        assert first == g.gemv_config(m, n, k, group, 132, per_sm, ptx, split_groups, interleaved)
        assert (first.block_n, first.num_warps) == ((64, 4) if interleaved and m > 16 else (32, 2))
        assert first.block_k % 32 == 0 and first.block_m >= m > first.block_m // 2
        assert first.block_k & (first.block_k - 1) == 0
        if 32 <= group < k:
            # one group per K-block, or whole groups kept apart (at most 4 product columns)
            assert group % first.block_k == 0 or (
                split_groups and first.block_k % group == 0 and first.block_m * first.block_k // group <= 4)
        assert 1 <= first.split_k <= -(-k // first.block_k)
        assert -(-k // first.block_k) % first.split_k == 0  # equal whole blocks per split


@pytest.mark.parametrize("k_blocks, want, split", [(32, 5, 4), (112, 5, 4), (112, 6, 7), (5, 3, 5), (7, 4, 7), (64, 1, 1)])
def test_even_split_divides_the_blocks(k_blocks, want, split):
    assert g.even_split(k_blocks, want) == split


@pytest.mark.parametrize("k_blocks, tiles, unroll", [(32, 128, 2), (112, 128, 2), (112, 896, 2), (16, 4008, 2),
                                                     (96, 7, 4), (10, 3, 5), (2, 1, 2)])
def test_split_leaves_whole_unrolled_steps_per_split(k_blocks, tiles, unroll):
    split = g.split_for(k_blocks, tiles, 4, 132, unroll)
    assert k_blocks % split == 0 and (k_blocks // split) % unroll == 0
    assert split == g.even_split(k_blocks // unroll, min(k_blocks // unroll, -(-4 * 132 // tiles)))


def test_unroll_must_divide_the_blocks_of_a_split():
    qw = anybit.quantize(torch.randn(40, 300), "int4-g32")
    x = torch.randn(1, 300, dtype=torch.float16)
    config = g.GemvConfig(1, 32, 64, 1, unroll=2)  # 5 blocks of 64
    with pytest.raises(ValueError, match="config.unroll=2 must be a positive divisor of the 5 K-blocks"):
        g.launch_gemv(x, qw.codes, qw.params["scales"], None, None, None, 40, 300, 4, 32, g.Decode.SYMMETRIC,
                      config)
    with pytest.raises(ValueError, match="unroll=3 does not divide the 16 K-blocks"):
        g.split_for(16, 4, 4, 132, unroll=3)


def test_dispatcher_caches_are_traced_without_warnings():
    """torch.compile traces the dispatcher: its caches must neither warn nor break the graph,
    and eager calls still hit the cache."""
    import warnings

    calls = []

    @g.traceable_cache(maxsize=None)
    def doubled(v: int) -> int:
        calls.append(v)
        return 2 * v

    @torch.compile(backend="eager", fullgraph=True)
    def scaled(x):
        return x * doubled(3) * g.gemv_config(1, 4096, 4096, 128, 132).block_k

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = scaled(torch.ones(2))
    assert y.tolist() == [6.0 * g.gemv_config(1, 4096, 4096, 128, 132).block_k] * 2
    calls.clear()
    assert doubled(5) == doubled(5) == 10 and calls == [5]


@pytest.mark.parametrize(
    "spec, ns, m, config",
    [
        ("int4-g32", (70, 33, 33), 1, g.GemvConfig(1, 32, 64, 3)),  # split-K, partial last tiles
        ("int4-g32", (70, 33), 2, g.GemvConfig(2, 32, 32, 1, unroll=3)),  # 3 blocks per iteration
        ("uint4-g64", (40, 96), 3, g.GemvConfig(4, 32, 64, 1)),
        ("nf4-g32", (64, 16, 50), 5, g.GemvConfig(8, 16, 32, 2)),
        ("int3-gc", (33, 70), 2, None),
    ],
    ids=str,
)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_one_launch_serves_several_weights(spec, ns, m, config, bias):
    """Weights sharing x, K and the format in one launch: each output as its own launch gives it."""
    torch.manual_seed(len(ns) * 100 + m)
    k = 96
    qws = [anybit.quantize(torch.randn(n, k, device=DEVICE), spec) for n in ns]
    biases = [torch.randn(n, device=DEVICE) if bias else None for n in ns]
    x = torch.randn(m, k, device=DEVICE).to(torch.float16)
    config, group = g.launch_settings(qws[0], m, x.device, config)
    mode = qws[0].format.kernel_decode().mode
    parts = [(q.codes, q.params["scales"], q.params.get("zeros"), b, n) for q, b, n in zip(qws, biases, ns)]
    outs = [torch.full((m, n), float("nan"), dtype=x.dtype, device=DEVICE) for n in ns]
    ys = g.launch_gemv_multi(x, parts, g.kernel_table(qws[0]), k, qws[0].format.bits, group, mode, config, outs)
    for y, qw, b in zip(ys, qws, biases):
        assert not torch.isnan(y).any(), "the kernel left elements unwritten"
        assert_matmul_close(y.cpu(), x.cpu(), qw.to("cpu"), None if b is None else b.cpu(),
                            weight_roundoff=unit_roundoff(x.dtype) if group < config.block_k or mode.name == "TABLE"
                            else 0.0)


def test_one_launch_rejects_weights_that_differ():
    qa = anybit.quantize(torch.randn(40, 96), "int4-g32")
    qb = anybit.quantize(torch.randn(40, 64), "int4-g32")
    x = torch.randn(1, 96, dtype=torch.float16)
    config = g.GemvConfig(1, 32, 32, 1)
    parts = [(q.codes, q.params["scales"], None, None, 40) for q in (qa, qb)]
    with pytest.raises(ValueError, match="must share K"):
        g.launch_gemv_multi(x, parts, None, 96, 4, 32, g.Decode.SYMMETRIC, config)
    with pytest.raises(ValueError, match="1 to 3"):
        g.launch_gemv_multi(x, [parts[0]] * 4, None, 96, 4, 32, g.Decode.SYMMETRIC, config)

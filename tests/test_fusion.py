"""The graph pass that puts decode-kernel calls sharing their input into one launch
(Triton's interpreter on CPU; the compiled path is in test_gemv_cuda.py)."""

import logging
import shutil

import pytest
import torch
from conftest import assert_matmul_close

import anybit
from anybit._matmul import fusion
from anybit._matmul import gemv as g

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class Siblings(torch.nn.Module):
    """q/k/v-like and gate/up-like layers on two inputs, plus one on its own."""

    def __init__(self, spec: str, bias: bool):
        super().__init__()
        torch.manual_seed(0)
        sizes = {"q": 64, "k": 32, "v": 32, "gate": 80, "up": 80, "down": 40, "other": 48}
        ins = {"down": 80, "other": 80}
        self.layers = torch.nn.ModuleDict({
            name: torch.nn.Linear(ins.get(name, 96), n, bias=bias) for name, n in sizes.items()})
        anybit.quantize_(self, spec, skip=())

    def forward(self, x, h):
        q, k, v = self.layers["q"](x), self.layers["k"](x), self.layers["v"](x)
        mlp = self.layers["down"](self.layers["gate"](x) * self.layers["up"](x))
        return q.sum(-1) + k.sum(-1) + v.sum(-1), mlp, self.layers["other"](h)


def _graph(module, *inputs):
    from torch.fx.experimental.proxy_tensor import make_fx

    return make_fx(module, tracing_mode="real")(*inputs)


def _count(gm, op):
    return sum(node.target is op for node in gm.graph.nodes)


@pytest.mark.parametrize("spec, bias", [("int4-g32", False), ("uint4-g64", True), ("nf4-g32", False)])
def test_siblings_share_one_launch_and_give_the_same_products(monkeypatch, spec, bias):
    monkeypatch.setenv("ANYBIT_BACKEND", "triton")
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    model = Siblings(spec, bias).to(DEVICE)
    x = torch.randn(2, 96, device=DEVICE, dtype=torch.float16)
    h = torch.randn(2, 80, device=DEVICE, dtype=torch.float16)
    # a fixed table (NF4's) made before tracing reaches each call as its own constant node
    g.kernel_table(model.layers["q"].qweight)
    gm = _graph(model, x, h)
    before = model(x, h)
    assert _count(gm, fusion._GEMV) == 7
    saved = fusion.fuse_sibling_gemv(gm.graph)
    gm.recompile()
    # q, k, v -> one launch; gate, up -> one; down and other stand alone
    assert saved == 3
    assert _count(gm, fusion._MULTI) == 2 and _count(gm, fusion._GEMV) == 2
    after = gm(x, h)
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-3)
    # and each fused product is still right against float64
    q = model.layers["q"]
    y = torch.ops.anybit.gemv_multi(
        x, [q.qweight.codes], [q.qweight.params["scales"]], [q.qweight.params.get("zeros")],
        g.kernel_table(q.qweight), [q.bias], [64], 96, q.qweight.format.bits,
        g.launch_settings(q.qweight, 2, x.device)[1], q.qweight.format.kernel_decode().mode.value,
        *[getattr(g.launch_settings(q.qweight, 2, x.device)[0], f) for f in
          ("block_m", "block_n", "block_k", "split_k", "num_warps", "num_stages", "x_pairs", "unroll")])[0]
    assert_matmul_close(y.cpu(), x.cpu(), q.qweight.to("cpu"), None if q.bias is None else q.bias.cpu(),
                        weight_roundoff=1e-3 if spec.startswith("nf4") else 0.0)


def test_calls_on_different_inputs_stay_apart(monkeypatch):
    monkeypatch.setenv("ANYBIT_BACKEND", "triton")
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    model = Siblings("int4-g32", False).to(DEVICE)

    def apart(x, y):
        return model.layers["q"](x), model.layers["k"](y)

    x = torch.randn(1, 96, device=DEVICE, dtype=torch.float16)
    gm = _graph(apart, x, x.clone())
    assert fusion.fuse_sibling_gemv(gm.graph) == 0
    assert _count(gm, fusion._GEMV) == 2


def test_the_pass_is_exported_and_hashable():
    p = anybit.SiblingFusion()
    assert isinstance(p.uuid(), bytes) and p.uuid() == anybit.SiblingFusion().uuid()


class _Counting(fusion.SiblingFusion):
    saved = None

    def __call__(self, graph):
        type(self).saved = fusion.fuse_sibling_gemv(graph)


@pytest.mark.skipif(DEVICE == "cpu" and shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="Inductor compiles the graph's CPU code with a C++ compiler, and none is installed")
@pytest.mark.parametrize("spec", ["int4-g32", "nf4-g32"])
def test_inductor_runs_the_pass(monkeypatch, spec):
    """torch.compile with the pass: one launch per sibling group, the same outputs as eager."""
    monkeypatch.setenv("ANYBIT_BACKEND", "triton")
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    torch._dynamo.reset()
    model = Siblings(spec, True).to(DEVICE)
    x = torch.randn(3, 96, device=DEVICE, dtype=torch.float16)
    h = torch.randn(3, 80, device=DEVICE, dtype=torch.float16)
    compiled = torch.compile(model, fullgraph=True, options={"post_grad_custom_post_pass": _Counting(),
                                                              "fx_graph_cache": False})
    after = compiled(x, h)
    assert _Counting.saved == 3
    for a, b in zip(model(x, h), after):
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-3)


class Mlp(torch.nn.Module):
    """transformers' Llama MLP: down(silu(gate(x)) * up(x)); ``swap`` takes the silu of the
    second product instead (the launch's second weight is then the gate)."""

    def __init__(self, spec: str, bias: bool, swap: bool = False, leak: bool = False):
        super().__init__()
        torch.manual_seed(1)
        self.gate, self.up = torch.nn.Linear(96, 80, bias=bias), torch.nn.Linear(96, 80, bias=bias)
        self.down = torch.nn.Linear(80, 40, bias=bias)
        self.swap, self.leak = swap, leak
        anybit.quantize_(self, spec, skip=())

    def forward(self, x):
        a, b = self.gate(x), self.up(x)
        if self.swap:
            a, b = b, a
        y = self.down(torch.nn.functional.silu(a) * b)
        return (y, a) if self.leak else y


@pytest.mark.parametrize("spec, bias, swap", [("int4-g32", False, False), ("uint4-g64", True, True),
                                              ("nf4-g32", False, True)])
def test_glu_is_written_by_the_launch_of_its_products(monkeypatch, spec, bias, swap):
    monkeypatch.setenv("ANYBIT_BACKEND", "triton")
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    model = Mlp(spec, bias, swap).to(DEVICE)
    monkeypatch.setattr(fusion, "GLU_MAX_ROWS", 2)
    x = torch.randn(2, 1, 96, device=DEVICE, dtype=torch.float16)
    g.kernel_table(model.gate.qweight)
    gm = _graph(model, x)
    before = model(x)
    assert fusion.fuse_sibling_gemv(gm.graph) == 1 and fusion.fuse_glu(gm.graph) == 1
    gm.recompile()
    multi = [node for node in gm.graph.nodes if node.target is fusion._MULTI]
    assert len(multi) == 1 and multi[0].kwargs.get("glu") is True
    assert not any(node.target in (torch.ops.aten.silu.default, torch.ops.aten.mul.Tensor) for node in gm.graph.nodes)
    torch.testing.assert_close(gm(x), before, rtol=2e-3, atol=2e-3)


def test_glu_stays_apart_where_a_product_is_read_elsewhere(monkeypatch):
    monkeypatch.setenv("ANYBIT_BACKEND", "triton")
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    model = Mlp("int4-g32", False, leak=True).to(DEVICE)
    gm = _graph(model, torch.randn(fusion.GLU_MAX_ROWS, 96, device=DEVICE, dtype=torch.float16))
    assert fusion.fuse_sibling_gemv(gm.graph) == 1 and fusion.fuse_glu(gm.graph) == 0


def test_glu_stays_apart_past_its_rows(monkeypatch):
    monkeypatch.setenv("ANYBIT_BACKEND", "triton")
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    model = Mlp("int4-g32", False).to(DEVICE)
    gm = _graph(model, torch.randn(fusion.GLU_MAX_ROWS + 1, 96, device=DEVICE, dtype=torch.float16))
    assert fusion.fuse_sibling_gemv(gm.graph) == 1 and fusion.fuse_glu(gm.graph) == 0


def test_the_pass_key_names_the_glu_rule():
    assert anybit.SiblingFusion().uuid() != anybit.SiblingFusion(glu=False).uuid()


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.skipif(DEVICE == "cpu" and shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="Inductor compiles the graph's CPU code with a C++ compiler, and none is installed")
def test_inductor_meets_no_anybit_op_without_a_lowering(monkeypatch):
    """The pass registers the graph's anybit ops, and those it may put in, as Inductor
    fallbacks before Inductor lowers the graph: Inductor then never creates a fallback of
    its own for one (whose log line some torch versions build from the op's whole input
    chain, printed or not)."""
    from torch._inductor import lowering

    monkeypatch.setenv("ANYBIT_BACKEND", "triton")
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    ops = [torch.ops.anybit.gemv.default, torch.ops.anybit.gemv_multi.default,
           torch.ops.anybit.gemv_norm_parts.default]
    for op in ops:  # as in a process that has compiled nothing yet
        monkeypatch.delitem(lowering.lowerings, op, raising=False)
    records, logger = _Records(), logging.getLogger("torch._inductor.graph")
    monkeypatch.setattr(logger, "level", logging.INFO)
    logger.addHandler(records)
    try:
        torch._dynamo.reset()
        model = Siblings("int4-g32", False).to(DEVICE)
        x = torch.randn(1, 96, device=DEVICE, dtype=torch.float16)
        h = torch.randn(1, 80, device=DEVICE, dtype=torch.float16)
        compiled = torch.compile(model, fullgraph=True, options={"post_grad_custom_post_pass": anybit.SiblingFusion(),
                                                                  "fx_graph_cache": False})
        compiled(x, h)
    finally:
        logger.removeHandler(records)
        torch._dynamo.reset()
    assert not [m for m in records.messages if "implicit fallback" in m and "anybit" in m], records.messages
    assert all(op in lowering.lowerings for op in ops)
    assert fusion.register_fallbacks(torch.fx.Graph()) == []


def test_tables_are_compared_by_value():
    """Constant tables with the same levels share a key, other levels do not."""
    holder = torch.nn.Module()
    holder.a = torch.linspace(-1, 1, 16)
    holder.b = torch.linspace(-1, 1, 16)
    holder.c = torch.linspace(-1, 0.9, 16)
    graph = torch.fx.Graph(owning_module=holder)
    a, b, c = (graph.get_attr(name) for name in "abc")
    assert fusion._table_key(a, graph) == fusion._table_key(b, graph) != fusion._table_key(c, graph)
    assert fusion._table_key(None, graph) is None


class Residual(torch.nn.Module):
    """A residual add after a layer (folded), and one after a layer whose output is read twice (kept)."""

    def __init__(self, spec: str, bias: bool):
        super().__init__()
        torch.manual_seed(0)
        self.down = torch.nn.Linear(80, 48, bias=bias)
        self.other = torch.nn.Linear(80, 48, bias=bias)
        anybit.quantize_(self, spec, skip=())

    def forward(self, x, r):
        shared = self.other(x)
        return r + self.down(x), shared + r, shared * 2


@pytest.mark.parametrize("spec, bias", [("int4-g32", False), ("uint4-g16", True)])
def test_residual_add_folds_into_the_product(monkeypatch, spec, bias):
    monkeypatch.setenv("ANYBIT_BACKEND", "triton")
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    model = Residual(spec, bias).to(DEVICE)
    x = torch.randn(2, 1, 80, device=DEVICE, dtype=torch.float16)
    r = torch.randn(2, 1, 48, device=DEVICE, dtype=torch.float16) * 4
    gm = _graph(model, x, r)
    assert _count(gm, fusion._ADD) == 2
    assert fusion.fuse_residual_add(gm.graph) == 1
    gm.recompile()
    assert _count(gm, fusion._ADD) == 1
    assert sum(n.target is fusion._GEMV and n.kwargs.get("addend") is not None for n in gm.graph.nodes) == 1
    folded, kept, doubled = gm(x, r)
    assert folded.shape == r.shape
    down = model.down
    config, group = g.launch_settings(down.qweight, 2, x.device)
    # groups smaller than a K-block scale each weight before the dot, rounding it to x's dtype
    rounding = 2.0**-11 if group < config.block_k else 0.0
    assert_matmul_close(folded.reshape(2, 48).cpu(), x.reshape(2, 80).cpu(), down.qweight.to("cpu"),
                        None if down.bias is None else down.bias.cpu(), weight_roundoff=rounding,
                        addend=r.reshape(2, 48).cpu())
    for a, b in zip(model(x, r)[1:], (kept, doubled)):
        assert torch.equal(a, b)


def test_addend_with_split_k_is_added_once(monkeypatch):
    """The split-K fix-up adds the addend once, in the program that writes the tile."""
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    qw = anybit.quantize(torch.randn(40, 256, device=DEVICE), "int4-g64")
    x = torch.randn(3, 256, device=DEVICE, dtype=torch.float16)
    r = torch.randn(3, 40, device=DEVICE, dtype=torch.float16)
    config = g.GemvConfig(block_m=4, block_n=16, block_k=64, split_k=2)
    y = g.launch_gemv(x, qw.codes, qw.params["scales"], None, None, None, 40, 256, 4, 64, g.Decode.SYMMETRIC,
                      config, addend=r)
    assert_matmul_close(y.cpu(), x.cpu(), qw.to("cpu"), addend=r.cpu())
    with pytest.raises(ValueError, match=r"addend \(3, 41\)"):
        g.launch_gemv(x, qw.codes, qw.params["scales"], None, None, None, 40, 256, 4, 64, g.Decode.SYMMETRIC,
                      config, addend=torch.zeros(3, 41, dtype=torch.float16, device=DEVICE))


def test_the_pass_key_names_the_residual_rule():
    assert anybit.SiblingFusion(residual=False).uuid() != anybit.SiblingFusion().uuid()


class Normed(torch.nn.Module):
    """transformers' RMSNorm of a product with a residual add, read by two products (folded:
    no kernel of its own), and the same norm of a tensor no decode call made (left alone)."""

    def __init__(self, spec: str):
        super().__init__()
        torch.manual_seed(0)
        self.o = torch.nn.Linear(80, 48, bias=False)
        self.gate = torch.nn.Linear(48, 32, bias=False)
        self.up = torch.nn.Linear(48, 32, bias=False)
        anybit.quantize_(self, spec, skip=())
        self.gamma = torch.nn.Parameter(torch.rand(48, dtype=torch.float16) + 0.5)

    def norm(self, h):
        wide = h.to(torch.float32)
        return self.gamma * (wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + 1e-6)).to(h.dtype)

    def forward(self, x, r):
        h = r + self.o(x)
        normed = self.norm(h)
        return self.gate(normed) * self.up(normed), h, self.norm(r)


@pytest.mark.parametrize("spec", ["int4-g32", "uint4-g16"])
def test_rms_norm_between_products_needs_no_kernel(monkeypatch, spec):
    monkeypatch.setenv("ANYBIT_BACKEND", "triton")
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    model = Normed(spec).to(DEVICE)
    x = torch.randn(2, 1, 80, device=DEVICE, dtype=torch.float16)
    r = torch.randn(2, 1, 48, device=DEVICE, dtype=torch.float16) * 4
    gm = _graph(model, x, r)
    assert fusion.fuse_sibling_gemv(gm.graph) == 1
    assert fusion.fuse_residual_add(gm.graph) == 1
    assert _count(gm, torch.ops.aten.rsqrt.default) == 2
    assert fusion.fuse_rms_norm(gm.graph) == 1
    gm.recompile()
    assert _count(gm, fusion._NORM_PARTS) == 1 and _count(gm, torch.ops.aten.rsqrt.default) == 1
    assert [n.kwargs.get("norm_n") for n in gm.graph.nodes if n.target is fusion._MULTI] == [48]
    out, h, other = gm(x, r)
    eager_out, eager_h, eager_other = model(x, r)
    assert torch.equal(other, eager_other)  # the norm of r stays as it was
    # h: the product plus r, rounded once (the eager add rounds the product first)
    torch.testing.assert_close(h, eager_h, rtol=2e-3, atol=4e-3)
    # the products of the norm, as transformers computes it, of the fused launch's own h
    normed = g.rms_norm_reference(h, model.gamma.detach(), 1e-6)
    torch.testing.assert_close(out, model.gate(normed) * model.up(normed), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(out, eager_out, rtol=3e-2, atol=3e-2)


def _residual_folded(monkeypatch, cls):
    """The traced graph of a ``cls`` (a Normed) on one row, its residual add folded."""
    monkeypatch.setenv("ANYBIT_BACKEND", "triton")
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    gm = _graph(cls("int4-g32").to(DEVICE), torch.randn(1, 80, device=DEVICE, dtype=torch.float16),
                torch.randn(1, 48, device=DEVICE, dtype=torch.float16))
    assert fusion.fuse_residual_add(gm.graph) == 1
    return gm


def test_a_norm_read_by_anything_else_keeps_its_kernel(monkeypatch):
    class Shared(Normed):
        def forward(self, x, r):
            normed = self.norm(r + self.o(x))
            return self.up(normed), normed.sum()

    assert fusion.fuse_rms_norm(_residual_folded(monkeypatch, Shared).graph) == 0


def test_a_norm_over_more_tiles_than_a_reader_adds_keeps_its_kernel(monkeypatch):
    gm = _residual_folded(monkeypatch, Normed)
    monkeypatch.setattr(g, "MAX_NORM_PARTS", 1)  # o's 48 rows make 2 tiles of 32
    assert fusion.fuse_rms_norm(gm.graph) == 0
    monkeypatch.setattr(g, "MAX_NORM_PARTS", 2)
    assert fusion.fuse_rms_norm(gm.graph) == 1


def test_the_pass_key_names_the_norm_rule():
    assert anybit.SiblingFusion(norm=False).uuid() != anybit.SiblingFusion().uuid()

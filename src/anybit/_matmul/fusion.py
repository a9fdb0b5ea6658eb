"""A torch.compile graph pass: decode-kernel calls that share their input become one launch.

A transformer layer multiplies one activation by several weights in a row: the
query, key and value projections, the gate and up projections of the MLP.  At
decoding batch sizes each of those products is a short kernel whose fixed cost
(launch, pipeline fill, split-K fix-up) is a large part of its time, so one
launch for the siblings is faster than three (H200, int4-g128, one row of x:
6144x4096 in 8.8 us against 7.2 + 4.5 + 4.5 us; docs/NOTES.md).

The pass runs on Inductor's post-grad graph: it groups the ``anybit::gemv``
nodes with the same x, format, K, tiles and kind of operands, and replaces each
group of up to ``gemv.MAX_WEIGHTS`` by one ``anybit::gemv_multi`` node (split-K
chosen again for the total rows) whose outputs take the place of the originals.
Nothing changes in the model or in what is saved; each output is the same
product (accumulated in fp32; a different split of K can change the last bit).

It then folds residual connections into the products they follow: an
``aten.add`` of a decode-kernel product (through its reshapes) and a tensor of
the same shape and dtype, where nothing else reads the product, becomes the
kernel's ``addend`` (added to the fp32 sum before its one rounding, where the
add rounds the product first; ``fuse_residual_add``).  In a decoder layer that
is the MLP's residual add, one elementwise kernel fewer per layer (the
attention's residual add is fused into the norm after it by Inductor anyway).

Last, an RMSNorm between two products loses its kernel (``fuse_rms_norm``): a
norm is a reduction over the whole row, so the launch that writes h cannot
finish it alone (tried: the last program of that launch normalising the row
cost as much as the norm's own kernel).  Instead that launch writes h, h * gamma
and the sums of squares of each of its tiles, and every launch reading the norm
reads h * gamma as x, adds the sums in order and scales its result rows by
rsqrt(mean + eps): work that no launch waits for.  In a decoder layer compiled
on its own that is the norm after the attention (0.05 ms of a 2.19 ms decoding
step of a Llama-3.1-8B-shaped model at batch 1, H200; docs/NOTES.md e2e-v12).

And at one row of x the MLP's activation, silu(gate) * up of a gate/up launch's
two products where nothing else reads them, is written by that launch
(``fuse_glu``: each program reads a tile of both weights and computes it from
both fp32 sums, rounded as transformers rounds it): one elementwise kernel fewer
per layer, and the two products are never stored (0.115 ms of a 2.14 ms step at
batch 1; slower at batch 8, where it is not applied: ``GLU_MAX_ROWS``).

Use::

    torch.compile(model, options={"post_grad_custom_post_pass": anybit.SiblingFusion()})

or, where the ``torch.compile`` call is not yours (transformers' ``generate`` with a
compile config), set ``torch._inductor.config.post_grad_custom_post_pass`` to one
before the first compiled call.

The pass also registers every anybit op in the graph as an Inductor fallback
(``register_fallbacks``) before Inductor lowers it.  Inductor would do so itself
on meeting the op, but some torch versions (2.11 among them) first format the
op's arguments for a log line whether or not it is printed, and the text of an
argument is the whole chain of IR behind it, repeated wherever the chain forks:
with the norms folded the output layer's product is the first plain
``anybit::gemv`` of a whole-forward graph, and its argument's chain is every
layer before it (a Llama-3.1-8B-shaped model's compile did not finish in
10 minutes; docs/NOTES.md e2e-v13).
"""

from __future__ import annotations

import operator
from collections import defaultdict

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

from . import gemv as g

_GEMV = torch.ops.anybit.gemv.default
_MULTI = torch.ops.anybit.gemv_multi.default
#: The operands that differ between fused calls (one list each in gemv_multi), the rest must agree.
_PER_WEIGHT = ("codes", "scales", "zeros", "bias", "n")


_NAMES = [a.name for a in _GEMV._schema.arguments]
#: Where each argument of ``anybit::gemv_multi`` sits in a call's positional arguments.
_MULTI_AT = {a.name: i for i, a in enumerate(_MULTI._schema.arguments)}
#: The arguments every call gives (the optional ones, from ``addend`` on, follow).
_REQUIRED = _NAMES[: _NAMES.index("addend")]
_DEFAULTS = {a.name: a.default_value for a in _GEMV._schema.arguments if a.has_default_value()}


def _arguments(node: torch.fx.Node) -> dict:
    """The node's arguments by name (from the op's schema, with its defaults)."""
    values = dict(_DEFAULTS)
    values.update(zip(_NAMES, node.args))
    values.update(node.kwargs)
    return values


#: Ops that give another shape of the same data: each call reshapes x itself, so
#: siblings see different nodes for one activation.
_VIEWS = (torch.ops.aten.view.default, torch.ops.aten.reshape.default, torch.ops.aten._unsafe_view.default)


def _through_views(node) -> tuple:
    """(the node ``node`` is a reshape of, through any number of reshapes, or ``node``
    itself; the reshapes between)."""
    views = []
    while isinstance(node, torch.fx.Node) and node.target in _VIEWS:
        views.append(node)
        node = node.args[0]
    return node, views


def _same_data(x: torch.fx.Node) -> tuple:
    """A key equal for x nodes that are views of one tensor with one shape."""
    return _through_views(x)[0], tuple(x.meta["val"].shape)


#: Ops that copy a tensor unchanged (how a constant made during tracing reaches its use).
_COPIES = (torch.ops.aten.lift_fresh_copy.default, torch.ops.aten.clone.default)


def _table_key(table: torch.fx.Node | None, graph: torch.fx.Graph):
    """A key equal for tables with the same levels: a fixed table (NF4's) often reaches each
    call as its own constant node (or a fresh copy of one), so constants are compared by
    value (16 or so numbers)."""
    while isinstance(table, torch.fx.Node) and table.target in _COPIES:
        table = table.args[0]
    if table is not None and table.op == "get_attr" and graph.owning_module is not None:
        values = graph.owning_module
        for name in table.target.split("."):
            values = getattr(values, name)
        return str(values.dtype), tuple(values.flatten().tolist())
    return table


def _group_key(args: dict, graph: torch.fx.Graph) -> tuple:
    """What must agree for calls to share a launch (split_k is chosen again)."""
    shared = tuple(args[name] for name in ("k", "bits", "group", "mode", "block_m", "block_n", "block_k",
                                           "num_warps", "num_stages", "x_pairs", "unroll"))
    return ((_same_data(args["x"]), _table_key(args["table"], graph)) + shared
            + (args["zeros"] is None, args["bias"] is None))


def _weight_operands(node: torch.fx.Node) -> list[torch.fx.Node]:
    """The nodes of a call's own weight (the fused call takes x and the table from the first call)."""
    args = _arguments(node)
    return [args[name] for name in ("codes", "scales", "zeros", "bias") if isinstance(args[name], torch.fx.Node)]


def _available_at(node: torch.fx.Node, first: torch.fx.Node, order: dict) -> bool:
    """Whether ``node``'s weight operands exist before ``first``, or are constants
    (get_attr, no inputs) that can be moved there."""
    return all(order[arg] < order[first] or arg.op == "get_attr" for arg in _weight_operands(node))


def _hoist_constants(node: torch.fx.Node, first: torch.fx.Node, order: dict) -> None:
    for arg in _weight_operands(node):
        if arg.op == "get_attr" and order[arg] > order[first]:
            first.prepend(arg)


def fuse_sibling_gemv(graph: torch.fx.Graph) -> int:
    """Rewrite ``graph`` in place; returns how many launches were saved."""
    order = {node: i for i, node in enumerate(graph.nodes)}
    groups = defaultdict(list)
    for node in graph.nodes:
        if node.target is _GEMV:
            args = _arguments(node)
            static = all(isinstance(d, int) for d in args["x"].meta["val"].shape)  # no symbolic sizes
            if static and g.Decode(args["mode"]) is not g.Decode.ROW_TABLE and args["addend"] is None:
                groups[_group_key(args, graph)].append(node)
    saved = 0
    for members in groups.values():
        for start in range(0, len(members), g.MAX_WEIGHTS):
            chunk = members[start : start + g.MAX_WEIGHTS]
            # the fused node takes the first call's place: every operand must exist by then
            chunk = [chunk[0]] + [n for n in chunk[1:] if _available_at(n, chunk[0], order)]
            if len(chunk) > 1:
                for node in chunk[1:]:
                    _hoist_constants(node, chunk[0], order)
                _fuse(graph, chunk)
                saved += len(chunk) - 1
                order = {node: i for i, node in enumerate(graph.nodes)}
    if saved:
        graph.lint()
    return saved


def _fuse(graph: torch.fx.Graph, chunk: list[torch.fx.Node]) -> None:
    args = [_arguments(node) for node in chunk]
    first = args[0]
    ys = [node.meta["val"] for node in chunk]
    n_total = sum(a["n"] for a in args)
    config = g.GemvConfig(first["block_m"], first["block_n"], first["block_k"], first["split_k"],
                          unroll=first["unroll"])
    split_k = g.merged_split(config, n_total, first["k"], g.sm_count(ys[0].device))
    lists = {name: [a[name] for a in args] for name in _PER_WEIGHT}
    with graph.inserting_before(chunk[0]):
        fused = graph.call_function(_MULTI, (
            first["x"], lists["codes"], lists["scales"], lists["zeros"], first["table"], lists["bias"], lists["n"],
            first["k"], first["bits"], first["group"], first["mode"], first["block_m"], first["block_n"],
            first["block_k"], split_k, first["num_warps"], first["num_stages"], first["x_pairs"], first["unroll"]))
        fused.meta["val"] = list(ys)
        for i, node in enumerate(chunk):
            item = graph.call_function(operator.getitem, (fused, i))
            item.meta["val"] = ys[i]
            node.replace_all_uses_with(item)
    for node in chunk:
        graph.erase_node(node)


_ADD = torch.ops.aten.add.Tensor
_VIEW = torch.ops.aten.view.default


def _product_behind(node) -> tuple[torch.fx.Node | None, list[torch.fx.Node]]:
    """(the ``anybit::gemv`` call ``node`` is, or is a reshape of, and the reshapes
    between), or (None, [])."""
    node, views = _through_views(node)
    if isinstance(node, torch.fx.Node) and node.target is _GEMV:
        return node, views
    return None, []


def _foldable(add: torch.fx.Node, call: torch.fx.Node, views: list, other) -> bool:
    """Whether ``add`` = (``call`` through ``views``) + ``other`` can become the call's addend."""
    if not isinstance(other, torch.fx.Node) or any(len(n.users) != 1 for n in (call, *views)):
        return False
    y, out, o = call.meta.get("val"), add.meta.get("val"), other.meta.get("val")
    if y is None or out is None or o is None or _arguments(call)["addend"] is not None:
        return False
    static = all(isinstance(d, int) for d in (*y.shape, *o.shape))
    return (static and tuple(o.shape) == tuple(out.shape) and out.numel() == y.numel()
            and o.dtype == y.dtype == out.dtype and o.is_contiguous())


def fuse_residual_add(graph: torch.fx.Graph) -> int:
    """Rewrite ``graph`` in place (see the module docstring); returns how many adds were folded."""
    folded = 0
    for add in list(graph.nodes):
        if add.target is not _ADD or len(add.args) != 2 or add.kwargs:
            continue
        for product, other in (add.args, add.args[::-1]):
            call, views = _product_behind(product)
            if call is None or not _foldable(add, call, views, other):
                continue
            args = _arguments(call)
            y, out = call.meta["val"], add.meta["val"]
            with graph.inserting_before(add):
                flat = graph.call_function(_VIEW, (other, list(y.shape)))
                flat.meta["val"] = other.meta["val"].view(y.shape)
                fused = graph.call_function(_GEMV, tuple(args[name] for name in _REQUIRED), {"addend": flat})
                fused.meta["val"] = y
                result = graph.call_function(_VIEW, (fused, list(out.shape)))
                result.meta["val"] = out
            add.replace_all_uses_with(result)
            graph.erase_node(add)
            for node in (*views, call):
                graph.erase_node(node)
            folded += 1
            break
    if folded:
        graph.lint()
    return folded


_NORM_PARTS = torch.ops.anybit.gemv_norm_parts.default
_CONVERT = torch.ops.prims.convert_element_type.default
_MUL = torch.ops.aten.mul.Tensor


def _is(node, *targets) -> bool:
    return isinstance(node, torch.fx.Node) and node.target in targets


def _val(node):
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def _converted(node) -> tuple[torch.fx.Node, torch.dtype] | None:
    """(x, dtype) where ``node`` converts x to dtype (prims.convert_element_type, as Inductor's
    graph has it, or aten._to_copy with nothing but a dtype), else None."""
    if _is(node, _CONVERT):
        return node.args[0], node.args[1]
    if _is(node, torch.ops.aten._to_copy.default) and set(node.kwargs) == {"dtype"} and len(node.args) == 1:
        return node.args[0], node.kwargs["dtype"]
    return None


def _widened(node) -> torch.fx.Node | None:
    """x where ``node`` is x converted to float32, else None."""
    conversion = _converted(node)
    return conversion[0] if conversion is not None and conversion[1] == torch.float32 else None


def _rms_norm(node) -> tuple[torch.fx.Node, torch.fx.Node, float] | None:
    """(h, weight, eps) where ``node`` is transformers' RMSNorm of h, as the post-grad graph
    spells it: weight * (float32(h) * rsqrt(mean(float32(h)^2, -1) + eps)).to(h's dtype),
    weight of h's dtype and shape (h.shape[-1],); else None."""
    if not _is(node, _MUL) or len(node.args) != 2:
        return None
    for weight, normed in (node.args, node.args[::-1]):
        narrowed = _converted(normed)
        if narrowed is None or not _is(narrowed[0], _MUL):
            continue
        for wide, scale in (narrowed[0].args, narrowed[0].args[::-1]):
            h = _widened(wide)
            if h is None or not _is(scale, torch.ops.aten.rsqrt.default):
                continue
            total = scale.args[0]
            if not _is(total, _ADD, torch.ops.aten.add.Scalar) or not isinstance(total.args[1], float):
                continue
            mean = total.args[0]
            if not _is(mean, torch.ops.aten.mean.dim) or len(mean.args) < 3 or mean.args[2] is not True:
                continue
            square = mean.args[0]
            hv, wv = _val(h), _val(weight)
            if hv is None or wv is None or list(mean.args[1]) not in ([-1], [hv.dim() - 1]):
                continue
            squares_wide = (_is(square, torch.ops.aten.pow.Tensor_Scalar) and square.args[0] is wide
                            and square.args[1] == 2) or (_is(square, _MUL) and square.args == (wide, wide))
            if squares_wide and narrowed[1] == hv.dtype == wv.dtype and tuple(wv.shape) == (hv.shape[-1],):
                return h, weight, total.args[1]
    return None


def _erase_dead(graph: torch.fx.Graph, root: torch.fx.Node) -> set[torch.fx.Node]:
    """Erase ``root`` (and reshapes of it that nothing reads) once nothing reads it, then each
    pure call it read that nothing reads any more, and so on (only the dead part of the graph
    is visited); returns the erased nodes."""
    erased = set()
    for user in list(root.users):
        if _is(user, *_VIEWS) and not user.users:
            graph.erase_node(user)
            erased.add(user)
    stack = [root]
    while stack:
        node = stack.pop()
        if node in erased or node.op != "call_function" or node.users or node.is_impure():
            continue  # reached twice, or still read
        inputs = node.all_input_nodes
        graph.erase_node(node)
        erased.add(node)
        stack.extend(inputs)
    return erased


def _readers(node: torch.fx.Node) -> list[torch.fx.Node] | None:
    """The decode calls that read ``node`` (through reshapes) as their x, or None where
    anything else reads it (or a call already scales its rows)."""
    calls = []
    for user in node.users:
        if _is(user, *_VIEWS):
            more = _readers(user)
            if more is None:
                return None
            calls += more
        elif _is(user, _GEMV, _MULTI) and user.args[0] is node and node not in user.args[1:]:
            if user.kwargs.get("norm_parts") is not None:
                return None
            calls.append(user)
        else:
            return None
    return calls


def fuse_rms_norm(graph: torch.fx.Graph) -> int:
    """Rewrite ``graph`` in place: transformers' RMSNorm y of a single-weight decode call's
    result h (through its reshapes), where only decode calls read y (as their x), needs no
    kernel of its own: the call producing h becomes ``anybit::gemv_norm_parts`` (h, h *
    gamma, per-tile sums of squares), and each call reading y reads h * gamma instead and
    scales its rows by rsqrt(mean of squares + eps) (``norm_parts``); returns how many norms
    were folded."""
    folded, erased = 0, set()
    for node in list(graph.nodes):
        norm = None if node in erased else _rms_norm(node)
        if norm is None:
            continue
        h, gamma, eps = norm
        call, _ = _product_behind(h)
        readers = _readers(node)
        y, out = _val(call), _val(node)
        if call is None or not readers or y is None or out is None or out.numel() != y.numel():
            continue
        if not all(isinstance(d, int) for d in (*y.shape, *out.shape)):
            continue
        args = _arguments(call)
        tiles = g.norm_tiles(args["n"], args["block_n"])
        if tiles > g.MAX_NORM_PARTS:
            continue
        if gamma.op != "placeholder":  # (the weights of a compiled module are placeholders)
            order = {n: i for i, n in enumerate(graph.nodes)}
            if order[gamma] > order[call]:
                if gamma.op != "get_attr":
                    continue
                call.prepend(gamma)  # a constant: it can move
        sums_val = y.new_empty((y.shape[0], tiles), dtype=torch.float32)
        with graph.inserting_before(call):
            fused = graph.call_function(_NORM_PARTS, tuple(args[name] for name in _REQUIRED),
                                        {"addend": args["addend"], "gamma": gamma})
            fused.meta["val"] = (y, y, sums_val)
            items = []
            for i, val in enumerate((y, y, sums_val)):
                items.append(graph.call_function(operator.getitem, (fused, i)))
                items[-1].meta["val"] = val
        product, scaled, sums = items
        call.replace_all_uses_with(product)
        graph.erase_node(call)
        for reader in readers:
            x = reader.args[0]
            with graph.inserting_before(reader):
                flat = graph.call_function(_VIEW, (scaled, list(_val(x).shape)))
                flat.meta["val"] = _val(x)
            reader.args = (flat, *reader.args[1:])
            reader.kwargs = {**reader.kwargs, "norm_parts": sums, "norm_n": y.shape[1], "norm_eps": eps}
        erased |= _erase_dead(graph, node)
        folded += 1
    if folded:
        graph.lint()
    return folded


#: What transformers' silu(gate) * up may consist of in a post-grad graph (``_glu_operands``).
_GLU_STEPS = (*_VIEWS, _CONVERT, torch.ops.aten._to_copy.default, torch.ops.aten.neg.default, torch.ops.aten.exp.default,
              _ADD, torch.ops.aten.add.Scalar, torch.ops.aten.div.Tensor, _MUL, torch.ops.aten.sigmoid.default,
              torch.ops.aten.silu.default)


def _silu_of(node) -> torch.fx.Node | None:
    """x where ``node`` is silu(x) as a post-grad graph spells it (aten.silu, x / (1 + exp(-x))
    or x * sigmoid(x)), else None."""
    if _is(node, torch.ops.aten.silu.default):
        return node.args[0]
    if _is(node, torch.ops.aten.div.Tensor) and len(node.args) == 2:
        x, den = node.args
        if _is(den, _ADD, torch.ops.aten.add.Scalar) and den.args[1] == 1 and _is(den.args[0], torch.ops.aten.exp.default):
            neg = den.args[0].args[0]
            if _is(neg, torch.ops.aten.neg.default) and neg.args[0] is x:
                return x
    if _is(node, _MUL) and len(node.args) == 2:
        for x, sigmoid in (node.args, node.args[::-1]):
            if _is(sigmoid, torch.ops.aten.sigmoid.default) and sigmoid.args[0] is x:
                return x
    return None


def _glu_operands(mul: torch.fx.Node) -> tuple[torch.fx.Node, int] | None:
    """(the two-weight ``anybit::gemv_multi`` call, which of its products is the gate) where
    ``mul`` is silu(gate) * up of its two products (through reshapes and conversions) and
    nothing else reads those products or what lies between; else None."""
    if not _is(mul, _MUL) or len(mul.args) != 2:
        return None
    for gate, up in (mul.args, mul.args[::-1]):
        narrowed = _converted(gate)
        x = _silu_of(narrowed[0] if narrowed is not None else gate)
        if x is None:
            continue
        items = (_through_views(_widened(x) or x)[0], _through_views(up)[0])
        if not all(_is(item, operator.getitem) for item in items):
            continue
        multi = items[0].args[0]
        if (items[1].args[0] is not multi or not _is(multi, _MULTI) or {items[0].args[1], items[1].args[1]} != {0, 1}
                or set(multi.users) != set(items) or multi.kwargs.get("glu")):
            continue
        ns, y, out = multi.args[_MULTI_AT["ns"]], _val(items[0]), _val(mul)
        if len(ns) != 2 or ns[0] != ns[1] or y is None or out is None or out.dtype != y.dtype or out.numel() != y.numel():
            continue
        inside, stack = set(), [mul]  # every node from the products to mul
        while stack:
            node = stack.pop()
            if node not in inside and node not in items:
                inside.add(node)
                stack.extend(node.all_input_nodes)
        steps_only = all(_is(node, *_GLU_STEPS) for node in inside)
        if steps_only and all(user in inside for node in (*inside - {mul}, *items) for user in node.users):
            return multi, items[0].args[1]
    return None


#: ``fuse_glu`` folds launches with at most this many rows of x: measured on the H200 (Llama-3.1-8B-
#: shaped model, int4-g128), the decoding step took 0.115 ms less at batch 1 and 0.07 ms more at
#: batch 8 (a program then reads tile t of both weights: half the programs, each twice the work).
GLU_MAX_ROWS = 1


def fuse_glu(graph: torch.fx.Graph) -> int:
    """Rewrite ``graph`` in place: silu(gate) * up of a two-weight decode launch's products
    (the MLP of transformers' Llama-like layers) with at most ``GLU_MAX_ROWS`` rows of x is
    written by that launch (``glu``), and the products and the elementwise kernel between
    are gone; returns how many were folded."""
    folded = 0
    for mul in list(graph.nodes):
        found = None if mul.op != "call_function" else _glu_operands(mul)
        if found is None or _val(found[0].args[0]).shape[0] > GLU_MAX_ROWS:
            continue
        multi, gate = found
        args = list(multi.args)
        if gate == 1:  # the kernel takes the gate first
            for name in ("codes", "scales", "zeros", "bias"):
                args[_MULTI_AT[name]] = args[_MULTI_AT[name]][::-1]
        y = multi.meta["val"][gate]
        multi.args = tuple(args)
        multi.kwargs = {**multi.kwargs, "glu": True}
        multi.meta["val"] = [y]
        with graph.inserting_before(mul):
            item = graph.call_function(operator.getitem, (multi, 0))
            item.meta["val"] = y
            result = graph.call_function(_VIEW, (item, list(_val(mul).shape)))
            result.meta["val"] = _val(mul)
        mul.replace_all_uses_with(result)
        _erase_dead(graph, mul)
        folded += 1
    if folded:
        graph.lint()
    return folded


def register_fallbacks(graph: torch.fx.Graph) -> list[torch._ops.OpOverload]:
    """Register each ``anybit::`` op that ``graph`` calls, or that a pass here may put in it,
    as an Inductor fallback (a call of the op's own kernel), with the layout constraint
    Inductor would choose for it; returns the ops registered now (none already were).

    The same registration Inductor makes on first meeting an op without a lowering, made
    here so that Inductor does not build the text of the op's arguments first (see the
    module docstring)."""
    from torch._inductor import lowering
    from torch._library.utils import get_layout_constraint_tag

    ops = {node.target for node in graph.nodes if node.op == "call_function"}
    ops |= {torch.ops.anybit.gemv.default, torch.ops.anybit.gemv_multi.default,
            torch.ops.anybit.gemv_norm_parts.default}
    new = [op for op in ops if isinstance(op, torch._ops.OpOverload) and op.namespace == "anybit"
           and op not in lowering.lowerings]
    for op in sorted(new, key=str):
        constraint = lowering.tag_to_layout_constraint(get_layout_constraint_tag(op, with_default=True))
        lowering.make_fallback(op, layout_constraint=constraint)
    return new


class SiblingFusion(CustomGraphPass):
    """Inductor's ``post_grad_custom_post_pass`` that applies ``fuse_sibling_gemv`` and then,
    with ``residual`` (the default), ``fuse_residual_add``, with ``norm`` (the default),
    ``fuse_rms_norm`` and, with ``glu`` (the default), ``fuse_glu``."""

    def __init__(self, residual: bool = True, norm: bool = True, glu: bool = True):
        self.residual = residual
        self.norm = norm
        self.glu = glu

    def __call__(self, graph: torch.fx.Graph) -> None:
        register_fallbacks(graph)
        fuse_sibling_gemv(graph)
        if self.residual:
            fuse_residual_add(graph)
        if self.norm:
            fuse_rms_norm(graph)
        if self.glu:
            fuse_glu(graph)

    def uuid(self) -> bytes:
        return (get_hash_for_files((__file__, g.__file__)) + (b"+residual" if self.residual else b"")
                + (b"+norm" if self.norm else b"") + (b"+glu" if self.glu else b""))

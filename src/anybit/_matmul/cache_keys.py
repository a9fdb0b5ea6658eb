"""Triton cache keys that are the same in every process.

A jitted function's cache key (``JITCallable.cache_key``, which names its compiled
kernels in Triton's on-disk cache) hashes its source, its callees' keys and the
constexpr globals it reads, its callees' included.  Triton (3.6 and later) merges a
callee's globals into its caller's key before computing the callee's key, so a callee
whose key was not yet computed adds nothing: a kernel's key depends on which other
kernels were compiled first in the process.  Processes that launched the same plans in
another order then compiled them again instead of loading them from the cache, which
``anybit tune``'s compiling processes (``tune.precompile``) rely on.

``settle_cache_keys`` computes the keys callee first, so that every key holds all the
globals below it whatever ran before; each kernel module calls it on its kernels when
imported (which is at the first launch: the modules are imported lazily).
"""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from triton.runtime.jit import JITCallable


def _resolve(node: ast.expr, scope: dict[str, Any]) -> Any:
    """The object a name or a dotted attribute (``decode_ptx.decode``) names in ``scope``,
    or None."""
    if isinstance(node, ast.Name):
        return scope.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _resolve(node.value, scope)
        return None if base is None else getattr(base, node.attr, None)
    return None


def callees(fn) -> list:
    """The jitted functions ``fn``'s source names (its globals and attributes of them), in
    source order, each once."""
    from triton.runtime.jit import JITCallable

    found = {}
    for node in ast.walk(fn.parse()):
        if isinstance(node, (ast.Name, ast.Attribute)):
            value = _resolve(node, fn.__globals__)
            if isinstance(value, JITCallable) and value is not fn:
                found[id(value)] = value
    return list(found.values())


def settle_cache_keys(*kernels: JITCallable) -> None:
    """Compute the cache keys of ``kernels`` and of every jitted function they call,
    callees before callers.  Under Triton's interpreter (``TRITON_INTERPRET=1``), which
    compiles nothing, it does nothing."""
    from triton import knobs

    if knobs.runtime.interpret:
        return
    done: set[int] = set()

    def visit(fn) -> None:
        if id(fn) in done:
            return
        done.add(id(fn))
        for callee in callees(fn):
            visit(callee)
        fn.cache_key  # noqa: B018 - computed and kept by the function

    for kernel in kernels:
        visit(kernel)

"""The A/B scripts' plan strings (benchmarks/table_variants.py, gemv_variants.py): a table
entry's warp-specialized plan written as a variant and read back is the same plan."""

import json
import os
import sys

import pytest

from anybit._matmul import gemm as gm

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import gemv_variants  # noqa: E402
import table_variants  # noqa: E402

TABLE = os.path.join(os.path.dirname(__file__), "..", "src", "anybit", "_matmul", "tuned", "nvidia-h100-80gb-hbm3.json")


def _ws_entries():
    with open(TABLE) as f:
        return [e for e in json.load(f)["entries"] if e["kernel"] == "gluon_ws"]


def test_the_table_has_plans_with_every_field_the_strings_carry():
    configs = [e["config"] for e in _ws_entries()]
    assert any(c["tail_rows"] for c in configs) and any(c["loads_ahead"] for c in configs)
    assert any(c["stream_k"] for c in configs) and any(c["cluster_sum"] for c in configs)


@pytest.mark.parametrize("staged", [-1, 0, 1])
def test_a_table_plan_round_trips_through_its_variant_string(staged):
    """Every warp-specialized entry of the H100 table (tail rows, loads ahead, stream-K,
    cluster sums, warpgroups sharing K) as ``_ws_text`` writes it and ``_config`` reads it:
    the same ``GemmConfig`` and the ``staged`` asked for."""
    for e in _ws_entries():
        text = table_variants._ws_text(e["config"], staged=staged)
        parsed = gemv_variants._config(text, e["m"], e["n"], e["k"], "gemm")
        assert parsed[0] == "ws" and parsed[1] == gm.GemmConfig(**e["config"]), text
        assert parsed[6] == (None if staged < 0 else bool(staged))

"""Transport faults at every storage request, against real host processes (issue #10's randomised test).

The harness and what makes a run ``exact`` are in ``chaos_cluster.py`` (``run_transport``).

``run_transport`` is shared with tests/test_chaos_soak.py (slow) and benchmarks/chaos_report.py. Run
clusters one at a time on one Azurite: local hosts claim timer occurrences in the account's
``azure-webjobs-hosts`` container by function name only, so a concurrent cluster's host can take (and
spend on its own tables) the sweeper occurrence of this one.
"""
from __future__ import annotations


import pytest

from chaos_cluster import describe, run_transport

pytestmark = pytest.mark.chaos

SEEDS = (11, 22, 33)


@pytest.mark.parametrize("seed", SEEDS)
def test_hello_world_100_under_2pct_lost_replies_and_2pct_failures(azurite, tmp_path, seed):
    """Two hosts, sweeper on, 2 % lost replies + 2 % failures before apply on every storage request."""
    result = run_transport(azurite, tmp_path, seed, lose=0.02, fail=0.02, timeout=180)
    print(describe(result))  # shown with -rA: times, duplicates and re-drives of a passing run too
    assert sum(result.injected.values()) > 0, describe(result)  # the faults were really on
    assert result.exact, describe(result)

"""The Triton kernels' argument groups are one table (``kernels.problem.GROUPS``): the launchers build
them from it, the kernels unpack them in its order, the static report types them from it."""
import importlib.util
import inspect
import os

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None
                                and os.environ.get("CONTRASTIVE_OPS_REQUIRE_TRITON") != "1",
                                reason="Triton is not installed")


def test_role_switch_indices_follow_their_list():
    from contrastive_ops.kernels import tiles

    for index, name in enumerate(tiles.ROLE_SWITCHES):
        assert getattr(tiles, name) == index, name


def test_every_group_parameter_of_the_core_kernels_is_in_the_table():
    from contrastive_ops.kernels import contrastive_bwd, contrastive_fwd, problem, ring_select

    kernels = [contrastive_fwd._contrastive_fwd_kernel, contrastive_bwd._contrastive_bwd_dq_kernel,
               contrastive_bwd._contrastive_bwd_dc_kernel, contrastive_bwd._contrastive_bwd_ds_kernel,
               ring_select._ring_count_kernel, ring_select._ring_select_kernel]
    for kernel in kernels:
        params = inspect.signature(kernel.fn).parameters
        runtime = [name for name, p in params.items() if p.annotation is inspect.Parameter.empty]
        assert all(name in problem.GROUPS or name == "COUNT" for name in runtime), (kernel.fn.__name__, runtime)
        assert "ROLE" in params, kernel.fn.__name__


def test_the_problem_builds_its_groups_as_the_table_lists_them():
    from contrastive_ops.kernels import problem, tiles

    q, k = torch.randn(5, 8), torch.randn(6, 8)
    guide = (torch.randn(5, 3), torch.randn(6, 3), torch.randn(5))
    t = problem.TileProblem.build(q, k, None, torch.tensor(2.0), pos_index=torch.arange(5), guide=guide)
    for name in ("inputs", "roles", "sizes"):
        assert len(getattr(t, name)) == len(problem.GROUPS[name]), name
    members = dict(zip((m for m, _ in problem.GROUPS["roles"]), t.roles))
    assert members["POS"] is t.pos_index and members["GUIDE_D"] == 3 and members["stride_gc"] == 3
    role = t.constexprs()["ROLE"]
    assert len(role) == len(tiles.ROLE_SWITCHES)
    assert role[tiles.HAS_POS] and role[tiles.HAS_GUIDE] and not role[tiles.HAS_LABELS]

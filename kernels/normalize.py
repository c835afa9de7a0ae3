"""Fused L2 normalization: inverse row norms (applied to the tiles' fp32 dot products) and the
normalization's backward, ``du = (g - x̂<x̂, g>) / max(‖x‖, eps)`` (``g / eps`` where ``‖x‖ <= eps``),
with ``eps = 1e-12`` as ``F.normalize``."""
import torch
import triton
import triton.language as tl

EPS = 1e-12


@triton.jit
def _inv_norm_kernel(X, R, N, D, stride_x, EPS_: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_mask = rows < N
    offs_d = tl.arange(0, BLOCK_D)
    x_rows = X + rows.to(tl.int64)[:, None] * stride_x
    squares = tl.zeros((BLOCK_ROWS,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        mask = row_mask[:, None] & ((d0 + offs_d) < D)[None, :]
        x = tl.load(x_rows + (d0 + offs_d)[None, :], mask=mask, other=0.0).to(tl.float32)
        squares += tl.sum(x * x, axis=1)
    tl.store(R + rows, 1.0 / tl.maximum(tl.sqrt(squares), EPS_), mask=row_mask)


@triton.jit
def _normalize_bwd_kernel(X, G, DX, N, D, stride_x, stride_g, stride_dx,
                          EPS_: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_mask = rows < N
    offs_d = tl.arange(0, BLOCK_D)
    x_rows = X + rows.to(tl.int64)[:, None] * stride_x
    g_rows = G + rows.to(tl.int64)[:, None] * stride_g
    squares = tl.zeros((BLOCK_ROWS,), dtype=tl.float32)
    x_dot_g = tl.zeros((BLOCK_ROWS,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        mask = row_mask[:, None] & ((d0 + offs_d) < D)[None, :]
        x = tl.load(x_rows + (d0 + offs_d)[None, :], mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_rows + (d0 + offs_d)[None, :], mask=mask, other=0.0)
        squares += tl.sum(x * x, axis=1)
        x_dot_g += tl.sum(x * g, axis=1)
    norm = tl.sqrt(squares)
    inv = 1.0 / tl.maximum(norm, EPS_)
    radial = tl.where(norm > EPS_, x_dot_g * inv, 0.0)  # <x̂, g>
    dx_rows = DX + rows.to(tl.int64)[:, None] * stride_dx
    for d0 in range(0, D, BLOCK_D):
        mask = row_mask[:, None] & ((d0 + offs_d) < D)[None, :]
        x = tl.load(x_rows + (d0 + offs_d)[None, :], mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_rows + (d0 + offs_d)[None, :], mask=mask, other=0.0)
        dx = (g - x * (inv * radial)[:, None]) * inv[:, None]
        tl.store(dx_rows + (d0 + offs_d)[None, :], dx.to(DX.dtype.element_ty), mask=mask)


def _blocks(d: int) -> tuple[int, int]:
    block_d = min(triton.next_power_of_2(max(d, 16)), 256)
    return max(1, 2048 // block_d), block_d


def inverse_norms(x: torch.Tensor) -> torch.Tensor:
    """fp32 ``[N]``: ``1 / max(‖x_i‖, eps)`` of the rows of ``x [N, D]`` (last dim contiguous)."""
    n, d = x.shape
    out = torch.empty(n, dtype=torch.float32, device=x.device)
    rows, block_d = _blocks(d)
    _inv_norm_kernel[(triton.cdiv(n, rows),)](x, out, n, d, x.stride(0), EPS_=EPS, BLOCK_ROWS=rows, BLOCK_D=block_d)
    return out


def normalize_backward(x: torch.Tensor, grad_unit: torch.Tensor) -> torch.Tensor:
    """Gradient through ``F.normalize(x, dim=-1)`` given ``grad_unit`` (fp32), in ``x``'s dtype."""
    n, d = x.shape
    out = torch.empty_like(x)
    rows, block_d = _blocks(d)
    _normalize_bwd_kernel[(triton.cdiv(n, rows),)](
        x, grad_unit, out, n, d, x.stride(0), grad_unit.stride(0), out.stride(0),
        EPS_=EPS, BLOCK_ROWS=rows, BLOCK_D=block_d,
    )
    return out


def unit_rows(x: torch.Tensor, inv_norms) -> torch.Tensor:
    """``x̂ = x · rq`` in ``x``'s dtype and strides (the operand of the backward's products),
    ``inv_norms`` the fp32 ``[N]`` inverse norms; ``x`` itself when ``inv_norms`` is None."""
    if inv_norms is None:
        return x
    out = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)  # the kernels reuse x's strides
    return out.copy_(x.float() * inv_norms[:, None])

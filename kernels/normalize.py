"""Fused L2 normalization: inverse row norms (applied to the tiles' fp32 dot products) and the
normalization's backward, ``du = (g - x̂<x̂, g>) / max(‖x‖, eps)`` (``g / eps`` where ``‖x‖ <= eps``),
with ``eps = 1e-12`` as ``F.normalize``.

Norms are scaled as ``core.normalize_rows``'s: each row's largest magnitude ``c`` is found first and
``‖x‖ = c·‖x/c‖``, so the fp32 sum of squares neither overflows (entries ≳ 1e19) nor underflows."""
import torch
import triton
import triton.language as tl

EPS = 1e-12


@triton.jit
def _row_magnitude(x_rows, row_mask, offs_d, D, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """Each row's largest magnitude (1 for a zero row), fp32 ``[BLOCK_ROWS]``."""
    c = tl.zeros((BLOCK_ROWS,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        mask = row_mask[:, None] & ((d0 + offs_d) < D)[None, :]
        x = tl.load(x_rows + (d0 + offs_d)[None, :], mask=mask, other=0.0).to(tl.float32)
        c = tl.maximum(c, tl.max(tl.abs(x), axis=1))
    return tl.where(c > 0, c, 1.0)


@triton.jit
def _inv_norm_kernel(X, R, N, D, stride_x, EPS_: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_mask = rows < N
    offs_d = tl.arange(0, BLOCK_D)
    x_rows = X + rows.to(tl.int64)[:, None] * stride_x
    c = _row_magnitude(x_rows, row_mask, offs_d, D, BLOCK_ROWS, BLOCK_D)
    squares = tl.zeros((BLOCK_ROWS,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        mask = row_mask[:, None] & ((d0 + offs_d) < D)[None, :]
        y = tl.load(x_rows + (d0 + offs_d)[None, :], mask=mask, other=0.0).to(tl.float32) / c[:, None]
        squares += tl.sum(y * y, axis=1)
    # 1/max(c·‖y‖, eps) as (1/c)/max(‖y‖, eps/c): no overflow of c·‖y‖
    tl.store(R + rows, (1.0 / c) / tl.maximum(tl.sqrt(squares), EPS_ / c), mask=row_mask)


@triton.jit
def _normalize_bwd_kernel(X, G, DX, N, D, stride_x, stride_g, stride_dx,
                          EPS_: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_mask = rows < N
    offs_d = tl.arange(0, BLOCK_D)
    x_rows = X + rows.to(tl.int64)[:, None] * stride_x
    g_rows = G + rows.to(tl.int64)[:, None] * stride_g
    c = _row_magnitude(x_rows, row_mask, offs_d, D, BLOCK_ROWS, BLOCK_D)  # y = x / c: sums in range
    squares = tl.zeros((BLOCK_ROWS,), dtype=tl.float32)
    y_dot_g = tl.zeros((BLOCK_ROWS,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        mask = row_mask[:, None] & ((d0 + offs_d) < D)[None, :]
        y = tl.load(x_rows + (d0 + offs_d)[None, :], mask=mask, other=0.0).to(tl.float32) / c[:, None]
        g = tl.load(g_rows + (d0 + offs_d)[None, :], mask=mask, other=0.0)
        squares += tl.sum(y * y, axis=1)
        y_dot_g += tl.sum(y * g, axis=1)
    norm_y = tl.sqrt(squares)
    inv_y = 1.0 / tl.maximum(norm_y, EPS_ / c)  # x̂ = y · inv_y
    inv = (1.0 / c) * inv_y  # 1 / max(‖x‖, eps)
    radial = tl.where(norm_y * c > EPS_, y_dot_g * inv_y, 0.0)  # <x̂, g>
    dx_rows = DX + rows.to(tl.int64)[:, None] * stride_dx
    for d0 in range(0, D, BLOCK_D):
        mask = row_mask[:, None] & ((d0 + offs_d) < D)[None, :]
        y = tl.load(x_rows + (d0 + offs_d)[None, :], mask=mask, other=0.0).to(tl.float32) / c[:, None]
        g = tl.load(g_rows + (d0 + offs_d)[None, :], mask=mask, other=0.0)
        dx = (g - y * (inv_y * radial)[:, None]) * inv[:, None]
        tl.store(dx_rows + (d0 + offs_d)[None, :], dx.to(DX.dtype.element_ty), mask=mask)


def _rowwise(x: torch.Tensor) -> torch.Tensor:
    """``x`` where its rows are of unit stride (the kernels step rows by ``stride(0)`` and read each row's
    elements one apart), else a contiguous copy."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _blocks(d: int) -> tuple[int, int]:
    block_d = min(triton.next_power_of_2(max(d, 16)), 256)
    return max(1, 2048 // block_d), block_d


def inverse_norms(x: torch.Tensor) -> torch.Tensor:
    """fp32 ``[N]``: ``1 / max(‖x_i‖, eps)`` of the rows of ``x [N, D]`` (any strides)."""
    x = _rowwise(x)
    n, d = x.shape
    out = torch.empty(n, dtype=torch.float32, device=x.device)
    rows, block_d = _blocks(d)
    _inv_norm_kernel[(triton.cdiv(n, rows),)](x, out, n, d, x.stride(0), EPS_=EPS, BLOCK_ROWS=rows, BLOCK_D=block_d)
    return out


def normalize_backward(x: torch.Tensor, grad_unit: torch.Tensor) -> torch.Tensor:
    """Gradient through ``F.normalize(x, dim=-1)`` given ``grad_unit`` (fp32), in ``x``'s dtype; ``x`` and
    ``grad_unit`` of any strides (the kernel reads rows of unit stride), the result dense."""
    x, grad_unit = _rowwise(x), _rowwise(grad_unit)
    n, d = x.shape
    out = torch.empty((n, d), dtype=x.dtype, device=x.device)
    rows, block_d = _blocks(d)
    _normalize_bwd_kernel[(triton.cdiv(n, rows),)](
        x, grad_unit, out, n, d, x.stride(0), grad_unit.stride(0), out.stride(0),
        EPS_=EPS, BLOCK_ROWS=rows, BLOCK_D=block_d,
    )
    return out


def unit_rows(x: torch.Tensor, inv_norms) -> torch.Tensor:
    """``x̂ = x · rq`` in ``x``'s dtype and strides (the operand of the backward's products),
    ``inv_norms`` the fp32 ``[N]`` inverse norms; ``x`` itself when ``inv_norms`` is None.

    Rows that share memory (an expanded ``x``, row stride 0) are one row repeated: its unit row is
    computed once and expanded alike, as a tensor with ``x``'s strides cannot hold distinct rows."""
    if inv_norms is None:
        return x
    if x.shape[0] > 1 and x.stride(0) == 0:
        return (x[:1].float() * inv_norms[:1, None]).to(x.dtype).expand(x.shape)
    if torch._debug_has_internal_overlap(x) == 1:  # rows overlapping otherwise (as_strided): no such layout
        raise ValueError(f"rows that overlap in memory (shape {tuple(x.shape)}, strides {x.stride()}) cannot be "
                         "normalized in place of their layout: pass x.contiguous()")
    out = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)  # the kernels reuse x's strides
    return out.copy_(x.float() * inv_norms[:, None])

"""The forward of Triton's fused-attention tutorial, re-implemented for the static model.

The tutorial (``python/tutorials/06-fused-attention.py`` of triton-lang/triton, MIT licence, credited
there to the OpenAI kernel team) is the FlashAttention-2 forward: a program per block of ``BLOCK_M``
queries of one head, an online softmax over blocks of ``BLOCK_N`` keys with ``exp2`` and the scale
folded into log2(e), the accumulator rescaled per block, ``P`` cast to fp16 for the second product,
and one division by the row sum at the end. This file writes that same algorithm in the same tiles
so that Triton compiles it the way it compiles the tutorial; it is not the
tutorial's text. Non-causal only (the calibration points are non-causal).

Autotuning space of the tutorial's ``_attn_fwd`` on CUDA: ``BLOCK_M`` ∈ {64, 128}, ``BLOCK_N`` ∈
{32, 64}, ``num_stages`` ∈ {3, 4, 7}, ``num_warps`` ∈ {4, 8}, 8 warps dropped where
``BLOCK_M * BLOCK_N < 128 * 128`` — so 4 warps throughout (:data:`CONFIGS`).
"""
from __future__ import annotations

import triton
import triton.language as tl

#: (BLOCK_M, BLOCK_N, num_warps, num_stages) the tutorial's tuner chooses among on an H100
CONFIGS = tuple((bm, bn, 4, s) for bm in (64, 128) for bn in (32, 64) for s in (3, 4, 7))


@triton.jit
def attention_fwd_kernel(Q, K, V, sm_scale, LSE, Out,
                         stride_qz, stride_qh, stride_qm, stride_qk,
                         stride_kz, stride_kh, stride_kn, stride_kk,
                         stride_vz, stride_vh, stride_vk, stride_vn,
                         stride_oz, stride_oh, stride_om, stride_on,
                         Z, H, N_CTX,
                         HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_zh = tl.program_id(1)
    z = pid_zh // H
    h = pid_zh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q_ptrs = Q + z.to(tl.int64) * stride_qz + h.to(tl.int64) * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qk
    kt_ptrs = K + z.to(tl.int64) * stride_kz + h.to(tl.int64) * stride_kh + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kk
    v_ptrs = V + z.to(tl.int64) * stride_vz + h.to(tl.int64) * stride_vh + offs_n[:, None] * stride_vk + offs_d[None, :] * stride_vn
    o_ptrs = Out + z.to(tl.int64) * stride_oz + h.to(tl.int64) * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_on
    scale2 = sm_scale * 1.44269504  # exp(x·s) = exp2(x·s·log2 e)
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.full([BLOCK_M], 1.0, tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    q = tl.load(q_ptrs)
    for _ in range(0, N_CTX, BLOCK_N):
        s = tl.dot(q, tl.load(kt_ptrs))
        new_max = tl.maximum(row_max, tl.max(s, 1) * scale2)
        p = tl.math.exp2(s * scale2 - new_max[:, None])
        alpha = tl.math.exp2(row_max - new_max)
        row_sum = row_sum * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(tl.float16), tl.load(v_ptrs), acc)
        row_max = new_max
        kt_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vk
    row_max += tl.math.log2(row_sum)
    acc = acc / row_sum[:, None]
    tl.store(LSE + pid_zh * N_CTX + offs_m, row_max)
    tl.store(o_ptrs, acc.to(Out.type.element_ty))

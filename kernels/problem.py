"""One tiled problem as the kernels see it: prepared inputs, role vectors and constexpr switches."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .normalize import inverse_norms


def _rowwise(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


@dataclass
class TileProblem:
    """Rows ``query [N, D]`` against columns ``[keys; extra] [M_total, D]`` (keys are ``0 .. M-1``).

    Absent optional vectors are replaced by a placeholder pointer that the kernels never read
    (their ``HAS_*`` switch is off).
    """

    query: torch.Tensor
    columns: torch.Tensor
    rq: torch.Tensor  # fp32 [N] inverse norms (placeholder without normalization)
    rc: torch.Tensor  # fp32 [M_total]
    scale: torch.Tensor  # 0-d fp32
    bias: torch.Tensor  # 0-d fp32 (pairwise sigmoid) or placeholder
    beta: float  # hard-negative exponent (0.0 when off)
    pos_index: torch.Tensor
    self_index: torch.Tensor
    row_labels: torch.Tensor
    col_labels: torch.Tensor
    band_lo: torch.Tensor
    band_hi: torch.Tensor
    guide_rows: torch.Tensor  # [N, G] (placeholder without a guide)
    guide_cols: torch.Tensor  # [M_total, G]
    guide_max: torch.Tensor  # fp32 [N]
    n: int
    m: int
    m_total: int
    d: int
    flags: dict

    @classmethod
    def build(cls, query, keys, extra, scale, *, bias=None, pos_index=None, self_index=None, row_labels=None,
              col_labels=None, band=None, key_negatives=True, decoupled=False, column_terms=False, normalize=True,
              hard_beta=None, pairwise_sigmoid=False, guide=None):
        """``keys=None``: the columns are the rows themselves. ``scale``, ``bias``: 0-d fp32 tensors.

        Options as ``core.RoleSpec``: labels together with ``pos_index`` mask false negatives;
        ``hard_beta`` asks for the LSEs of ``(1+β)·S`` and ``β·S``; ``pairwise_sigmoid`` for the
        per-row sums of ``softplus(-z·(S + bias))``; ``guide``: ``(guide_rows [N, G], guide_cols
        [M_total, G], guide_max [N])`` (same dtype; the guide's products use its dtype's precision)."""
        query = _rowwise(query)
        m = query.shape[0] if keys is None else keys.shape[0]
        if keys is None and extra is None:
            columns = query
        else:
            parts = [query if keys is None else keys] + ([] if extra is None else [extra])
            columns = _rowwise(parts[0]) if len(parts) == 1 else torch.cat(parts, dim=0)
        placeholder = scale
        # the kernels index vectors as ``V + i``: make every O(N + M) vector dense (labels may be a
        # strided view, an incoming gradient an expanded scalar)
        pos_index, self_index, row_labels, col_labels = (
            None if v is None else v.contiguous() for v in (pos_index, self_index, row_labels, col_labels))
        band = None if band is None else (band[0].contiguous(), band[1].contiguous())
        if guide is not None:
            guide = (_rowwise(guide[0]), _rowwise(guide[1]), guide[2].to(torch.float32).contiguous())
        if normalize:
            rq = inverse_norms(query)
            rc = rq if columns is query else inverse_norms(columns)
        else:
            rq = rc = placeholder
        flags = {
            "HAS_POS": pos_index is not None,
            "HAS_LABELS": pos_index is None and row_labels is not None,
            "MASK_LABELS": pos_index is not None and row_labels is not None,
            "HAS_SELF": self_index is not None,
            "KEY_NEGATIVES": bool(key_negatives),
            "DECOUPLED": bool(decoupled),
            "HAS_BAND": band is not None,
            "NORMALIZE": bool(normalize),
            "COLUMN_TERMS": bool(column_terms),
            "HARD_NEGATIVES": hard_beta is not None,
            "PAIRWISE_SIGMOID": bool(pairwise_sigmoid),
            "INPUT_PRECISION": _input_precision(query.dtype),
            "HAS_GUIDE": guide is not None,
            "GUIDE_BLOCK_D": 16 if guide is None else _guide_block(guide[0].shape[1]),
            "GUIDE_PRECISION": "ieee" if guide is None else _input_precision(guide[0].dtype),
        }
        return cls(
            query=query, columns=columns, rq=rq, rc=rc, scale=scale,
            bias=placeholder if bias is None else bias, beta=0.0 if hard_beta is None else float(hard_beta),
            pos_index=placeholder if pos_index is None else pos_index,
            self_index=placeholder if self_index is None else self_index,
            row_labels=placeholder if row_labels is None else row_labels,
            col_labels=placeholder if col_labels is None else col_labels,
            band_lo=placeholder if band is None else band[0],
            band_hi=placeholder if band is None else band[1],
            guide_rows=placeholder if guide is None else guide[0],
            guide_cols=placeholder if guide is None else guide[1],
            guide_max=placeholder if guide is None else guide[2],
            n=query.shape[0], m=m, m_total=columns.shape[0], d=query.shape[1], flags=flags,
        )

    @property
    def column_terms(self) -> bool:
        return self.flags["COLUMN_TERMS"]

    def constexprs(self) -> dict:
        return dict(self.flags)

    def guide_args(self) -> dict:
        """The kernels' guide arguments (by name; placeholders without a guide)."""
        has = self.flags["HAS_GUIDE"]
        return {"GUIDE_ROWS": self.guide_rows, "GUIDE_COLS": self.guide_cols, "GUIDE_MAX": self.guide_max,
                "GUIDE_D": self.guide_rows.shape[1] if has else 0,
                "stride_gr": self.guide_rows.stride(0) if has else 0,
                "stride_gc": self.guide_cols.stride(0) if has else 0}

    def tuning_key(self) -> tuple:
        """Problems with equal keys share one tile config (so ring selection, forward and backward
        of one call always do)."""
        import triton

        return (triton.next_power_of_2(self.n), triton.next_power_of_2(self.m_total), self.d, self.query.dtype,
                self.flags["NORMALIZE"], self.flags["COLUMN_TERMS"], self.flags["INPUT_PRECISION"],
                self.flags["HAS_GUIDE"], self.query.device.index)


def _guide_block(g: int) -> int:
    """The guide's ``BLOCK_D``: G rounded up to a power of two, from 16 to 64."""
    return min(64, max(16, 1 << max(0, g - 1).bit_length()))


def _input_precision(dtype: torch.dtype) -> str:
    """fp32 dot products follow ``torch.get_float32_matmul_precision()``: ``"highest"`` → IEEE fp32,
    otherwise tf32 tensor cores. (fp16/bf16 ignore it.)"""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"

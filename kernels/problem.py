"""One tiled problem as the kernels see it: prepared inputs, role vectors and constexpr switches.

The kernels take their arguments in groups (Triton tuples), each built here: ``inputs`` (the
features, their inverse norms, the scale and bias), ``roles`` (every O(N + M) vector and size a role
rule reads) with the constexpr tuple ``ROLE`` of the role switches, and ``sizes``. :data:`GROUPS`
lists each group's members in order with their Triton types, for the launchers and the static report
alike; a new role is a member of ``roles`` (and a switch of ``tiles.ROLE_SWITCHES``) here and its rule
in ``tiles.tile_roles``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .band import half_domain_band
from .normalize import inverse_norms
from .tiles import ROLE_SWITCHES

#: The guide's switches of a problem without a guide.
NO_GUIDE = {"HAS_GUIDE": False, "GUIDE_BLOCK_D": 16, "GUIDE_PRECISION": "ieee"}

#: The kernels' argument groups: member names in order and their Triton types (``"F"``: a pointer in
#: the features' dtype). The static report types the kernels' arguments from this table.
GROUPS = {
    "inputs": (("Q", "F"), ("C", "F"), ("RQ", "*fp32"), ("RC", "*fp32"), ("SCALE", "*fp32"), ("BIAS", "*fp32")),
    "roles": (("POS", "*i64"), ("SELF", "*i64"), ("ROW_LABELS", "*i64"), ("COL_LABELS", "*i64"),
              ("BAND_LO", "*fp32"), ("BAND_HI", "*fp32"), ("GUIDE_ROWS", "F"), ("GUIDE_COLS", "F"),
              ("GUIDE_MAX", "*fp32"), ("GUIDE_D", "i32"), ("stride_gr", "i32"), ("stride_gc", "i32")),
    "sizes": (("N", "i32"), ("M", "i32"), ("M_TOTAL", "i32"), ("D", "i32"), ("stride_q", "i32"),
              ("stride_c", "i32"), ("beta", "fp32")),
    # the forward's outputs and its symmetric losses' [P, M] column partials
    "row_terms": (("ROW_LSE", "*fp32"), ("ROW_POS", "*fp32"), ("ROW_DEN", "*i32"), ("ROW_POS_N", "*i32"),
                  ("ROW_LSE_BETA", "*fp32"), ("ROW_PAIR_LOSS", "*fp32")),
    "partials": (("PART_MAX", "*fp32"), ("PART_SUM", "*fp32"), ("PART_POS", "*fp32"), ("PART_DEN", "*i32"),
                 ("PART_POS_N", "*i32")),
    "row_products": (("CH", "F"), ("ROW_DQ", "*fp32"), ("ROW_DSCALE", "*fp32"), ("stride_dq", "i32")),
    # the backward's saved terms and their incoming gradients
    "grads": (("ROW_LSE", "*fp32"), ("G_ROW_LSE", "*fp32"), ("G_ROW_POS_W", "*fp32"), ("ROW_LSE_BETA", "*fp32"),
              ("G_ROW_LSE_BETA", "*fp32"), ("G_ROW_PAIR", "*fp32"), ("COL_LSE", "*fp32"), ("G_COL_LSE", "*fp32"),
              ("G_COL_POS_W", "*fp32")),
    # each backward kernel's own outputs
    "dq_out": (("CH", "F"), ("DS_SCALE", "*fp32"), ("DQ", "*fp32"), ("DSCALE_PART", "*fp32"),
               ("DBIAS_PART", "*fp32"), ("stride_dq", "i32")),
    "dc_out": (("QH", "F"), ("DS_SCALE", "*fp32"), ("DC", "*fp32"), ("stride_dc", "i32")),
    "ds_out": (("DS_SCALE", "*fp32"), ("DS", "F"), ("DSCALE_PART", "*fp32"), ("DBIAS_PART", "*fp32"),
               ("stride_ds", "i32"), ("row0", "i32"), ("col0", "i32"), ("chunk_rows", "i32"), ("chunk_cols", "i32")),
    # the dS chunks' pair losses (SigLIP's gradient formed in the forward): a partial per row and column tile
    "pair_out": (("LOSS_PART", "*fp32"), ("stride_lp", "i32")),
    # the Ring selection's ranks and results
    "ranks": (("RANK_TOP", "*i32"), ("RANK_BOTTOM", "*i32"), ("V_HI", "*fp32"), ("V_LO", "*fp32")),
}


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
    band_lo: torch.Tensor  # fp32 [N]: the Ring band as an interval of the tiles' halves (half_domain_band)
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
        ``band``: the Ring band ``(v_lo, v_hi)`` of the logits (kept as :func:`half_domain_band`'s interval);
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
        if band is not None:  # the kernels test the band on the tiles' halves
            band = half_domain_band(*band, scale, rq if normalize else None)
        flags = {
            **role_switches(pos_index is not None, row_labels is not None, self_index is not None, key_negatives,
                            decoupled, band is not None, normalize, column_terms, hard_beta is not None,
                            pairwise_sigmoid),
            "INPUT_PRECISION": _input_precision(query.dtype),
            **(NO_GUIDE if guide is None else {"HAS_GUIDE": True, "GUIDE_BLOCK_D": _guide_block(guide[0].shape[1]),
                                               "GUIDE_PRECISION": _input_precision(guide[0].dtype)}),
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
        """The kernels' constexpr switches: ``ROLE`` (the role switches in ``tiles.ROLE_SWITCHES``' order)
        and the others by name."""
        return role_constexprs(self.flags)

    @property
    def inputs(self) -> tuple:
        """The ``inputs`` group (:data:`GROUPS`)."""
        return (self.query, self.columns, self.rq, self.rc, self.scale, self.bias)

    @property
    def roles(self) -> tuple:
        """The ``roles`` group (:data:`GROUPS`; placeholders where a switch is off)."""
        has = self.flags["HAS_GUIDE"]
        return (self.pos_index, self.self_index, self.row_labels, self.col_labels, self.band_lo, self.band_hi,
                self.guide_rows, self.guide_cols, self.guide_max, self.guide_rows.shape[1] if has else 0,
                self.guide_rows.stride(0) if has else 0, self.guide_cols.stride(0) if has else 0)

    @property
    def sizes(self) -> tuple:
        """The ``sizes`` group (:data:`GROUPS`)."""
        return (self.n, self.m, self.m_total, self.d, self.query.stride(0), self.columns.stride(0), self.beta)

    def tuning_key(self) -> tuple:
        """Problems with equal keys share one tile config (so ring selection, forward and backward
        of one call always do)."""
        import triton

        return (triton.next_power_of_2(self.n), triton.next_power_of_2(self.m_total), self.d, self.query.dtype,
                self.flags["NORMALIZE"], self.flags["COLUMN_TERMS"], self.flags["INPUT_PRECISION"],
                self.flags["HAS_GUIDE"], self.query.device.index)


def role_switches(has_pos: bool, has_labels: bool, has_self: bool, key_negatives: bool, decoupled: bool,
                  has_band: bool, normalize: bool, column_terms: bool, hard_negatives: bool,
                  pairwise_sigmoid: bool) -> dict:
    """The kernels' switches of a problem's roles and terms (labels with a positive index mask false
    negatives; without one they define the positives). :meth:`TileProblem.build` and the static report
    both take them from here."""
    return {
        "HAS_POS": bool(has_pos),
        "HAS_LABELS": not has_pos and bool(has_labels),
        "MASK_LABELS": bool(has_pos) and bool(has_labels),
        "HAS_SELF": bool(has_self),
        "KEY_NEGATIVES": bool(key_negatives),
        "DECOUPLED": bool(decoupled),
        "HAS_BAND": bool(has_band),
        "NORMALIZE": bool(normalize),
        "COLUMN_TERMS": bool(column_terms),
        "HARD_NEGATIVES": bool(hard_negatives),
        "PAIRWISE_SIGMOID": bool(pairwise_sigmoid),
    }


def role_constexprs(flags: dict) -> dict:
    """``flags`` (switch name -> value) as the kernels take them: the role switches as one constexpr
    tuple ``ROLE`` in ``tiles.ROLE_SWITCHES``' order, the others by name."""
    out = {name: value for name, value in flags.items() if name not in ROLE_SWITCHES}
    out["ROLE"] = tuple(flags[name] for name in ROLE_SWITCHES)
    return out


def _guide_block(g: int) -> int:
    """The guide's ``BLOCK_D``: G rounded up to a power of two, from 16 to 64."""
    return min(64, max(16, 1 << max(0, g - 1).bit_length()))


def _input_precision(dtype: torch.dtype) -> str:
    """fp32 dot products follow ``torch.get_float32_matmul_precision()``: ``"highest"`` → IEEE fp32,
    otherwise tf32 tensor cores. (fp16/bf16 ignore it.)"""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"

"""The generic masked contrastive core that every loss is a thin wrapper of.

Given anchors ``Q [N, D]``, keys ``K [M, D]`` and optional extra negatives ``E [R, D]`` (a MoCo
queue, logically appended to ``K`` as columns ``M .. M+R-1``), a scale ``s`` and optional L2
normalization, the logits are ``S[i, j] = s * <q̂_i, k̂_j>``. Each pair ``(i, j)`` gets a role by
cheap rules (never an N×M mask tensor):

* **self** (excluded): ``j == self_index[i]``, an anchor never contrasts with itself;
* **positive**: ``j == pos_index[i]`` (one positive per row) or, without ``pos_index``,
  ``row_labels[i] == col_labels[j]`` (several positives; extra negatives are never positives), self
  excluded;
* **label-excluded** (false-negative masking): with ``pos_index`` *and* labels, an in-batch key
  ``j != pos_index[i]`` with ``row_labels[i] == col_labels[j]`` is neither positive nor candidate
  (extra negatives are never excluded by labels);
* **candidate negative**: neither of the above, and either an extra negative or an in-batch key
  while ``key_negatives`` is on;
* **guide-excluded** (a guide model's false negatives, GISTEmbed): with ``guide_rows [N, G]``,
  ``guide_cols [M + R, G]`` and ``guide_max [N]``, a candidate ``(i, j)`` whose guide similarity
  ``<guide_rows[i], guide_cols[j]>`` exceeds ``guide_max[i]`` is no candidate (positives are kept);
  the guide's products are formed tile by tile beside the logits, in fp32 (float64 stays float64 on
  the naive and chunked backends; the triton and cuda backends compare fp32 copies);
* **denominator**: the candidate negatives (restricted to the row's band ``[lo_i, hi_i]`` of logit
  values when a ring is asked for) plus the positives unless ``decoupled``.

Per row the core returns, in fp32: ``lse`` = log-sum-exp of ``S`` over the denominator (0 where it
is empty), ``pos`` = mean of ``S`` over the positives (0 where there are none), and the integer
counts of both; with ``column_terms`` the same per key column (anchors = in-batch keys, denominator
= the rows with the same role rule, so an excluded pair is excluded in both directions). ``lse`` and
``pos`` are differentiable with respect to Q, K, E and a tensor scale; every loss is a combination
of them (e.g. InfoNCE row loss = lse - pos).

Two options add per-row terms (both differentiable):

* ``hard_beta = β >= 0`` (hard-negative weighting): ``row_lse`` becomes the log-sum-exp of
  ``(1+β)·S`` over the denominator and ``row_lse_beta`` that of ``β·S`` (0 where it is empty);
  ``row_pos`` stays the mean of ``S``. Not combined with ``column_terms``.
* ``pairwise_sigmoid`` (SigLIP): ``row_pair_loss[i] = Σ_j softplus(-z_ij·(S_ij + bias))`` over the
  row's valid columns (positives and candidates as above, before any Ring band: self- and
  label-excluded columns are left out), ``z_ij = +1`` for a positive, ``-1`` otherwise (extra
  negatives included). ``bias`` is a float or a 0-d tensor, which receives a gradient.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Union

import torch

Scale = Union[float, torch.Tensor]

#: How the ranks of a process group see each other's rows (``contrastive_ops.exchange``).
EXCHANGES = ("auto", "gather", "ring")


#: The loss options as every backend's ops take them, in this order: ``(name, torch schema type)``.
#: The one list of them: :meth:`RoleSpec.flat` / :meth:`RoleSpec.from_flat` convert, :func:`role_schema`
#: writes the ops' schema, and the CUDA extension's operators take the same names (``csrc/ops.cpp``,
#: checked by the tests). A new role is a field of :class:`RoleSpec` and a line here.
ROLE_FIELDS: tuple[tuple[str, str], ...] = (
    ("pos_index", "Tensor?"),
    ("self_index", "Tensor?"),
    ("row_labels", "Tensor?"),
    ("col_labels", "Tensor?"),
    ("guide_rows", "Tensor?"),
    ("guide_cols", "Tensor?"),
    ("guide_max", "Tensor?"),
    ("key_negatives", "bool"),
    ("decoupled", "bool"),
    ("column_terms", "bool"),
    ("normalize", "bool"),
    ("hard_beta", "float?"),
    ("pairwise_sigmoid", "bool"),
)
ROLE_NAMES = tuple(name for name, _ in ROLE_FIELDS)


def role_schema() -> str:
    """The options' part of a ``torch.library`` schema: ``"Tensor? pos_index, ..., bool pairwise_sigmoid"``."""
    return ", ".join(f"{kind} {name}" for name, kind in ROLE_FIELDS)


@dataclass(frozen=True)
class RoleSpec:
    """Which pairs are positives, excluded or negatives, and what to reduce.

    Index and label tensors are O(N + M); the core never builds an N×M mask from them.
    """

    pos_index: torch.Tensor | None = None  # [N] long: column of each row's single positive
    row_labels: torch.Tensor | None = None  # [N] int: positives share a label ...
    col_labels: torch.Tensor | None = None  # [M] int: ... with an in-batch key
    self_index: torch.Tensor | None = None  # [N] long: column excluded from row i (itself)
    key_negatives: bool = True  # in-batch keys other than positives are negatives
    decoupled: bool = False  # positives are left out of the denominator (DCL)
    column_terms: bool = False  # also reduce every key column (symmetric losses)
    ring: tuple[float, float] | None = None  # (outer, inner) of the restricted band (ring_info_nce)
    normalize: bool = True  # L2-normalize Q, K and E rows first (eps as F.normalize)
    hard_beta: float | None = None  # β: row_lse over (1+β)·S and row_lse_beta over β·S (hard negatives)
    pairwise_sigmoid: bool = False  # also row_pair_loss, SigLIP's per-row sum of pairwise sigmoid losses
    guide_rows: torch.Tensor | None = None  # [N, G] a guide's row embeddings (no gradient flows to them)
    guide_cols: torch.Tensor | None = None  # [M + R, G] ... and its column embeddings
    guide_max: torch.Tensor | None = None  # [N] candidates with a larger guide similarity are excluded
    # a promise of the caller, not a role (no op takes it): the gradient of row_pair_loss will be one value for
    # every row (a mean or sum of it), so a backend may form the pair losses' gradient in the forward
    uniform_pair_grad: bool = False
    # a promise too: of the terms, the caller uses row_pair_loss alone (siglip_loss), so a backend may leave
    # the softmax terms out (None) where it forms the pair losses' gradient in the forward
    pair_loss_only: bool = False

    @property
    def has_guide(self) -> bool:
        return self.guide_rows is not None

    def flat(self) -> tuple:
        """The options in the order of :data:`ROLE_FIELDS` (bools as bool, ``hard_beta`` as float or None)."""
        values = []
        for name, kind in ROLE_FIELDS:
            value = getattr(self, name)
            if kind == "bool":
                value = bool(value)
            elif kind == "float?" and value is not None:
                value = float(value)
            values.append(value)
        return tuple(values)

    @classmethod
    def from_flat(cls, values, ring: tuple[float, float] | None = None) -> RoleSpec:
        """The inverse of :meth:`flat`; ``ring``, whose band is selected before the ops run, comes apart."""
        if len(values) != len(ROLE_FIELDS):
            raise ValueError(f"expected {len(ROLE_FIELDS)} role values ({', '.join(ROLE_NAMES)}), got {len(values)}")
        return cls(**dict(zip(ROLE_NAMES, values)), ring=ring)

    def __post_init__(self):
        guide = (self.guide_rows, self.guide_cols, self.guide_max)
        if any(g is not None for g in guide):
            if any(g is None for g in guide):
                raise ValueError("guide_rows, guide_cols and guide_max must be given together")
            rows, cols, limit = guide
            if rows.dim() != 2 or cols.dim() != 2 or rows.shape[1] != cols.shape[1]:
                raise ValueError(f"guide_rows and guide_cols must be [N, G] and [M, G], got {tuple(rows.shape)} "
                                 f"and {tuple(cols.shape)}")
            if limit.dim() != 1 or limit.shape[0] != rows.shape[0]:
                raise ValueError(f"guide_max must be [N] = [{rows.shape[0]}], got {tuple(limit.shape)}")
            if not all(g.is_floating_point() for g in guide):
                raise TypeError("guide_rows, guide_cols and guide_max must be floating point tensors")
        if self.hard_beta is not None:
            if not self.hard_beta >= 0:
                raise ValueError(f"hard_beta must be >= 0 or None, got {self.hard_beta!r}")
            if self.column_terms:
                raise ValueError("hard_beta is not supported together with column_terms=True")


class ContrastiveTerms(NamedTuple):
    """Per-row and per-column reductions of the masked logits (fp32; counts are int64)."""

    row_lse: torch.Tensor  # [N]
    row_pos: torch.Tensor  # [N]
    row_den_count: torch.Tensor  # [N]
    row_pos_count: torch.Tensor  # [N]
    col_lse: torch.Tensor | None  # [M] with column_terms, else None
    col_pos: torch.Tensor | None
    col_den_count: torch.Tensor | None
    col_pos_count: torch.Tensor | None
    row_lse_beta: torch.Tensor | None = None  # [N] with hard_beta: log-sum-exp of β·S over the denominator
    row_pair_loss: torch.Tensor | None = None  # [N] with pairwise_sigmoid: Σ_j softplus(-z_ij·(S_ij + bias))


def terms_from_outputs(outputs, spec: RoleSpec) -> ContrastiveTerms:
    """The :class:`ContrastiveTerms` of an op's outputs, given in the order of its fields (extra outputs
    after them are ignored): the terms ``spec`` does not ask for become None (the ops return them as
    empty tensors, since an op's outputs are always tensors)."""
    named = dict(zip(ContrastiveTerms._fields, outputs))
    if not spec.column_terms:
        named.update(col_lse=None, col_pos=None, col_den_count=None, col_pos_count=None)
    if spec.hard_beta is None:
        named["row_lse_beta"] = None
    if not spec.pairwise_sigmoid:
        named["row_pair_loss"] = None
    return ContrastiveTerms(**named)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp32/fp16/bf16 inputs; float64 stays float64 (for references and gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def pair_roles(
    rows: torch.Tensor,
    cols: torch.Tensor,
    num_keys: int,
    spec: RoleSpec,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Roles of the tile ``rows × cols`` (global indices): ``(positive, candidate_negative)``.

    Both are bool ``[len(rows), len(cols)]``; the caller owns the band and the denominator rule. A pair
    that is neither (self, label-excluded, or an in-batch key without ``key_negatives``) is left out.
    """
    is_key = cols < num_keys
    shape = (rows.shape[0], cols.shape[0])
    if spec.self_index is not None:
        is_self = cols[None, :] == spec.self_index[rows][:, None]
    else:
        is_self = torch.zeros(shape, dtype=torch.bool, device=rows.device)
    same_label = None
    if spec.row_labels is not None:
        key_cols = cols.clamp(max=num_keys - 1)
        same_label = (spec.row_labels[rows][:, None] == spec.col_labels[key_cols][None, :]) & is_key[None, :]
    if spec.pos_index is not None:
        positive = cols[None, :] == spec.pos_index[rows][:, None]
    elif same_label is not None:
        positive = same_label
    else:
        positive = torch.zeros(shape, dtype=torch.bool, device=rows.device)
    positive = positive & ~is_self
    negative_pool = ~is_key if not spec.key_negatives else torch.ones_like(is_key)
    candidate = ~positive & ~is_self & negative_pool[None, :]
    if spec.pos_index is not None and same_label is not None:
        candidate = candidate & ~same_label  # false negatives: same label, not the positive
    if spec.has_guide:
        candidate = candidate & ~guide_excluded(rows, cols, spec)
    return positive, candidate


def check_guide_shapes(spec: RoleSpec, n: int, m_total: int) -> None:
    """A guide's rows must match the ``n`` rows and its columns the ``m_total`` columns (keys, then
    extra negatives) of the problem it filters."""
    if not spec.has_guide:
        return
    if spec.guide_rows.shape[0] != n:
        raise ValueError(f"guide_rows has {spec.guide_rows.shape[0]} rows but the query has {n}")
    if spec.guide_cols.shape[0] != m_total:
        raise ValueError(f"guide_cols has {spec.guide_cols.shape[0]} rows but there are {m_total} columns "
                         "(keys, then extra negatives)")


def guide_excluded(rows: torch.Tensor, cols: torch.Tensor, spec: RoleSpec) -> torch.Tensor:
    """bool ``[len(rows), len(cols)]``: pairs whose guide similarity exceeds the row's ``guide_max``."""
    acc = accumulation_dtype(spec.guide_rows.dtype)  # fp32, float64 for float64 guides
    sim = spec.guide_rows[rows].to(acc) @ spec.guide_cols[cols].to(acc).T
    return sim > spec.guide_max[rows].to(acc)[:, None]


def denominator(
    positive: torch.Tensor,
    candidate: torch.Tensor,
    logits: torch.Tensor,
    spec: RoleSpec,
    band: tuple[torch.Tensor, torch.Tensor] | None,
) -> torch.Tensor:
    """The tile's denominator mask: candidates (within the rows' band, if any) plus positives."""
    if band is not None:
        lo, hi = band
        candidate = candidate & (logits >= lo[:, None]) & (logits <= hi[:, None])
    return candidate if spec.decoupled else candidate | positive


def sigmoid_pair_losses(
    logits: torch.Tensor, bias: torch.Tensor, positive: torch.Tensor, candidate: torch.Tensor
) -> torch.Tensor:
    """SigLIP's per-pair ``softplus(-z·(S + bias))`` of a tile, 0 outside the valid pairs.

    ``z = +1`` on positives, ``-1`` on candidates; other pairs (self, label-excluded) are not valid.
    """
    shifted = logits + bias
    signed = torch.where(positive, -shifted, shifted)
    # log(1 + e^x) exactly: F.softplus returns x itself above its threshold (20), a 2e-9 error
    per_pair = torch.logaddexp(signed, torch.zeros_like(signed))
    return torch.where(positive | candidate, per_pair, torch.zeros_like(per_pair))


def ring_ranks(candidate_count: torch.Tensor, outer: float, inner: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ring rank bounds per row: ``hi = floor(outer·M_i)``, ``lo = floor(inner·hi)``.

    Ranks are 0-based in descending order of the logits; the ring is ``[lo, hi)``. Computed in
    float64 so every backend and the references agree on the integer bounds.
    """
    hi = torch.floor(candidate_count.to(torch.float64) * outer).to(torch.int64)
    lo = torch.floor(hi.to(torch.float64) * inner).to(torch.int64)
    return lo, hi


def as_scale_tensor(scale: Scale, ref: torch.Tensor) -> torch.Tensor:
    """The scale as a 0-d tensor in the accumulation dtype on ``ref``'s device (no host sync)."""
    acc = accumulation_dtype(ref.dtype)
    if isinstance(scale, torch.Tensor):
        return scale.reshape(()).to(acc)
    return torch.tensor(scale, dtype=acc, device=ref.device)


# ---------------------------------------------------------------------------------------------
# L2 normalization of feature rows (every backend's, so that they agree on odd inputs)
# ---------------------------------------------------------------------------------------------

#: ``F.normalize``'s eps: a row is divided by ``max(‖x‖, NORM_EPS)``.
NORM_EPS = 1e-12


def _row_magnitude(x: torch.Tensor) -> torch.Tensor:
    """``[N, 1]``: each row's largest magnitude, 1 for a zero row (no gradient). Dividing a row by it
    before the sum of squares keeps that sum in range: it neither overflows (rows of norm ≳ 1e19 in
    fp32) nor underflows."""
    with torch.no_grad():
        magnitude = x.detach().abs().amax(dim=-1, keepdim=True)
        return torch.where(magnitude > 0, magnitude, torch.ones_like(magnitude))


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """``x / max(‖x‖, 1e-12)`` row-wise, as ``F.normalize(x, dim=-1)`` computed in the accumulation dtype
    (fp32 for fp16/bf16/fp32, float64 for float64) with a scaled norm, returned in ``x``'s dtype.

    Unlike ``F.normalize`` in the input dtype, a zero fp16 row stays 0 (fp16 has no 1e-12: the eps
    underflows and 0/0 is NaN there), and a row whose sum of squares overflows fp32 (entries ≳ 1e19) is
    still a unit row rather than 0. Differentiable (autograd's gradient is that of ``F.normalize``);
    non-finite entries give NaN rows."""
    acc = accumulation_dtype(x.dtype)
    xa = x.to(acc)
    c = _row_magnitude(xa)
    y = xa / c  # max |y| = 1 per nonzero row: ‖y‖ in [1, sqrt(D)]
    unit = y / torch.maximum(torch.linalg.vector_norm(y, dim=-1, keepdim=True), NORM_EPS / c)
    return unit.to(x.dtype)


def normalize_rows_backward(x: torch.Tensor, grad_unit: torch.Tensor) -> torch.Tensor:
    """The gradient through :func:`normalize_rows` in ``grad_unit``'s dtype: ``(g - x̂<x̂, g>)/max(‖x‖, eps)``
    (``g/eps`` where ``‖x‖ <= eps``), with the same scaled norm."""
    xa = x.to(grad_unit.dtype)
    c = _row_magnitude(xa)
    y = xa / c
    norm_y = torch.linalg.vector_norm(y, dim=-1, keepdim=True)
    unit = y / torch.maximum(norm_y, NORM_EPS / c)
    radial = (unit * grad_unit).sum(dim=-1, keepdim=True) * (norm_y * c > NORM_EPS)
    return (grad_unit - unit * radial) / torch.maximum(norm_y * c, torch.full_like(norm_y, NORM_EPS))

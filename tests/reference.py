"""Float64 references written straight from each loss's definition, independent of
the package's core: cross-entropies over explicit logit matrices and a per-row sort for the Ring."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _unit(x, normalize=True):
    x = x.double()
    return F.normalize(x, dim=1) if normalize else x


def info_nce(q, k, neg=None, *, temperature=0.07, in_batch_negatives=True, symmetric=False, normalize=True):
    q, k = _unit(q, normalize), _unit(k, normalize)
    n = q.shape[0]
    target = torch.arange(n)
    qk = q @ k.T / temperature
    parts = [qk] if in_batch_negatives else [qk.diagonal()[:, None]]
    if neg is not None:
        parts.append(q @ _unit(neg, normalize).T / temperature)
    forward = F.cross_entropy(torch.cat(parts, 1), target if in_batch_negatives else torch.zeros_like(target),
                              reduction="none")
    if not symmetric:
        return forward
    return 0.5 * (forward + F.cross_entropy(qk.T, target, reduction="none"))


def nt_xent(z1, z2, *, temperature=0.5, normalize=True):
    z = torch.cat([_unit(z1, normalize), _unit(z2, normalize)])
    n = z1.shape[0]
    sim = (z @ z.T / temperature).fill_diagonal_(float("-inf"))
    return F.cross_entropy(sim, (torch.arange(2 * n) + n) % (2 * n), reduction="none")


def dcl(z1, z2, *, temperature=0.1, normalize=True, weights=None):
    z = torch.cat([_unit(z1, normalize), _unit(z2, normalize)])
    n = z1.shape[0]
    sim = z @ z.T / temperature
    idx = torch.arange(2 * n)
    pos = (idx + n) % (2 * n)
    pos_logit = sim[idx, pos]
    if weights is not None:
        pos_logit = pos_logit * weights
    neg = sim.clone()
    neg[idx, idx] = float("-inf")
    neg[idx, pos] = float("-inf")
    if n == 1:
        return torch.zeros(2, dtype=torch.float64) * pos_logit
    return -pos_logit + torch.logsumexp(neg, dim=1)


def clip(img, txt, scale, *, normalize=False):
    img, txt = _unit(img, normalize), _unit(txt, normalize)
    logits = scale * img @ txt.T
    target = torch.arange(img.shape[0])
    return 0.5 * (F.cross_entropy(logits, target, reduction="none") + F.cross_entropy(logits.T, target, reduction="none"))


def supcon(x, labels, *, temperature=0.1, normalize=True):
    """Returns (per-anchor losses with 0 for anchors without positives, number of such anchors)."""
    x = _unit(x, normalize)
    n = x.shape[0]
    sim = x @ x.T / temperature
    eye = torch.eye(n, dtype=torch.bool)
    log_prob = sim - torch.logsumexp(sim.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    count = pos.sum(1)
    loss = -(log_prob * pos).sum(1) / count.clamp(min=1)
    return torch.where(count > 0, loss, torch.zeros_like(loss)), int((count > 0).sum())



def _ring_row_loss(positive, cand, outer, inner):
    """One anchor's Ring loss from its positive logit and its candidates' logits (DESIGN.md §5):
    ranks ``[floor(inner·hi), hi)`` of the descending candidates, ``hi = floor(outer·M_i)``, ties at
    a boundary kept; an empty ring gives 0."""
    hi = math.floor(outer * cand.numel())
    lo = math.floor(inner * hi)
    if hi <= lo:
        return positive * 0
    ordered = cand.detach().sort(descending=True).values
    v_hi, v_lo = ordered[lo], ordered[hi - 1]
    ring = cand[(cand >= v_lo) & (cand <= v_hi)]
    return -positive + torch.logsumexp(torch.cat([positive[None], ring]), dim=0)

def ring_info_nce(q, k, neg=None, *, temperature=0.07, outer=0.1, inner=0.1, in_batch_negatives=True, normalize=True):
    """A loop over rows with a full sort of each row's candidates (see ``ring_info_nce``)."""
    q, k = _unit(q, normalize), _unit(k, normalize)
    n = q.shape[0]
    qk = q @ k.T / temperature
    qn = q @ _unit(neg, normalize).T / temperature if neg is not None else q.new_zeros(n, 0)
    losses = []
    for i in range(n):
        candidates = [qn[i]]
        if in_batch_negatives:
            candidates.append(torch.cat([qk[i, :i], qk[i, i + 1 :]]))
        cand = torch.cat(candidates)
        losses.append(_ring_row_loss(qk[i, i], cand, outer, inner))
    return torch.stack(losses)


# ---------------------------------------------------------------------------------------------
# False-negative masking, hard negatives, debiased, SigLIP
# ---------------------------------------------------------------------------------------------


def _false_negatives(row_labels, col_labels):
    """``[N, M]`` bool: same label and not the diagonal positive."""
    same = row_labels[:, None] == col_labels[None, :]
    return same & ~torch.eye(same.shape[0], same.shape[1], dtype=torch.bool)


def info_nce_masked(q, k, neg=None, *, query_labels, key_labels, temperature=0.07, symmetric=False, normalize=True):
    """InfoNCE where every key sharing the query's label (other than its positive) is removed from
    the softmax: those logits are set to -inf; queue negatives are kept."""
    q, k = _unit(q, normalize), _unit(k, normalize)
    n = q.shape[0]
    target = torch.arange(n)
    masked = _false_negatives(query_labels, key_labels)
    qk = (q @ k.T / temperature).masked_fill(masked, float("-inf"))
    parts = [qk] + ([q @ _unit(neg, normalize).T / temperature] if neg is not None else [])
    forward = F.cross_entropy(torch.cat(parts, 1), target, reduction="none")
    if not symmetric:
        return forward
    return 0.5 * (forward + F.cross_entropy(qk.T, target, reduction="none"))


def clip_masked(img, txt, scale, labels, *, normalize=False):
    img, txt = _unit(img, normalize), _unit(txt, normalize)
    masked = _false_negatives(labels, labels)
    logits = (scale * img @ txt.T).masked_fill(masked, float("-inf"))
    target = torch.arange(img.shape[0])
    return 0.5 * (F.cross_entropy(logits, target, reduction="none") + F.cross_entropy(logits.T, target, reduction="none"))


def ring_info_nce_masked(q, k, neg=None, *, query_labels, key_labels, temperature=0.07, outer=0.1, inner=0.1,
                         normalize=True):
    """As :func:`ring_info_nce`, the candidates being the keys of other labels and the queue."""
    q, k = _unit(q, normalize), _unit(k, normalize)
    n = q.shape[0]
    qk = q @ k.T / temperature
    qn = q @ _unit(neg, normalize).T / temperature if neg is not None else q.new_zeros(n, 0)
    losses = []
    for i in range(n):
        keep = (key_labels != query_labels[i]) & (torch.arange(n) != i)
        cand = torch.cat([qn[i], qk[i][keep]])
        losses.append(_ring_row_loss(qk[i, i], cand, outer, inner))
    return torch.stack(losses)


def hard_negative(z1, z2, *, temperature=0.5, beta=1.0, tau_plus=0.1, normalize=True):
    """Robinson et al.'s ``criterion`` (github joshr17/HCL, main.py, estimator "hard"), transcribed in
    float64 with its negative mask, returning the per-row losses instead of their mean."""
    out_1, out_2 = _unit(z1, normalize), _unit(z2, normalize)
    batch_size = out_1.shape[0]
    out = torch.cat([out_1, out_2], dim=0)
    neg = torch.exp(torch.mm(out, out.t().contiguous()) / temperature)
    mask = torch.ones((batch_size, 2 * batch_size), dtype=torch.bool)
    for i in range(batch_size):
        mask[i, i] = 0
        mask[i, i + batch_size] = 0
    mask = torch.cat((mask, mask), 0)
    neg = neg.masked_select(mask).view(2 * batch_size, -1)
    pos = torch.exp(torch.sum(out_1 * out_2, dim=-1) / temperature)
    pos = torch.cat([pos, pos], dim=0)
    n = batch_size * 2 - 2
    imp = (beta * neg.log()).exp()
    reweight_neg = (imp * neg).sum(dim=-1) / imp.mean(dim=-1)
    ng = (-tau_plus * n * pos + reweight_neg) / (1 - tau_plus)
    ng = torch.clamp(ng, min=n * math.e ** (-1 / temperature))
    return -torch.log(pos / (pos + ng))


def hard_negative_clamp_rows(z1, z2, *, temperature=0.5, beta=1.0, tau_plus=0.1, normalize=True):
    """Bool ``[2N]``: the rows whose ``Ng`` the reference clamps."""
    out_1, out_2 = _unit(z1, normalize), _unit(z2, normalize)
    b = out_1.shape[0]
    out = torch.cat([out_1, out_2])
    s = out @ out.T / temperature
    idx = torch.arange(2 * b)
    keep = torch.ones_like(s, dtype=torch.bool)
    keep[idx, idx] = False
    keep[idx, (idx + b) % (2 * b)] = False
    neg = torch.exp(s[keep].view(2 * b, -1))
    pos = torch.exp(s[idx, (idx + b) % (2 * b)])
    n = 2 * b - 2
    imp = neg**beta
    ng = (-tau_plus * n * pos + (imp * neg).sum(-1) / imp.mean(-1)) / (1 - tau_plus)
    return ng < n * math.e ** (-1 / temperature)


def siglip(img, txt, scale, bias, *, normalize=False):
    """open_clip's SigLIP loss per image row: ``-Σ_j logsigmoid(y_ij·(s·<i, t_j> + b))``, y = 2·eye - 1
    (the mean over rows is open_clip's ``sum / N``)."""
    img, txt = _unit(img, normalize), _unit(txt, normalize)
    logits = scale * img @ txt.T + bias
    labels = 2 * torch.eye(img.shape[0], dtype=torch.float64) - 1
    return -F.logsigmoid(labels * logits).sum(dim=1)


def gist(anchor, positive, negative, anchor_guide, positive_guide, negative_guide, *, temperature=0.01,
         margin_strategy="absolute", margin=0.0, contrast_anchors=True, contrast_positives=True):
    """GISTEmbed's per-anchor cross-entropy over explicit score blocks with the guide's -inf mask."""
    cos = lambda a, b: F.normalize(a.double(), dim=1) @ F.normalize(b.double(), dim=1).T
    g_pos = cos(anchor_guide, positive_guide).diagonal()[:, None]
    limit = g_pos - margin if margin_strategy == "absolute" else g_pos - g_pos.abs() * margin
    n = anchor.shape[0]

    def masked(sim, guide_sim, keep_diagonal=False):
        drop = guide_sim > limit
        if keep_diagonal:
            drop = drop & ~torch.eye(n, dtype=torch.bool)
        return sim.masked_fill(drop, float("-inf"))

    blocks = [masked(cos(anchor, positive), cos(anchor_guide, positive_guide), keep_diagonal=True)]
    if contrast_anchors:
        blocks.append(masked(cos(anchor, anchor), cos(anchor_guide, anchor_guide)))
    if contrast_positives:
        blocks.append(masked(cos(positive, positive), cos(positive_guide, positive_guide)))
    if negative is not None:
        blocks.append(masked(cos(anchor, negative), cos(anchor_guide, negative_guide)))
    return F.cross_entropy(torch.cat(blocks, 1) / temperature, torch.arange(n), reduction="none")

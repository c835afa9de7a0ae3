"""Worker for test_distributed.py, launched by torchrun with the gloo backend (2 processes).

Every rank builds the same global batch, takes its slice, and checks the process-group losses:
the mean over ranks of the ranks' losses equals the single-process loss on the whole batch, and
each rank's gradients divided by the world size equal the single-process gradients of its slice.
It also runs the distributed compat classes beside the peers' own code in the same setting.
Writes the worst relative errors of each check to ``<out>/rank<r>.json``.
"""
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(__file__))

import peers

import contrastive_ops as co
from contrastive_ops.compat import lightly as co_lightly
from contrastive_ops.compat import open_clip as co_open_clip

N_LOCAL, D, R = 7, 6, 5


def sentence_transformers_losses():
    """``(the installed sentence-transformers losses, the compat module)``, or None without it."""
    try:
        from sentence_transformers.sentence_transformer import losses
    except ImportError:
        return None
    from contrastive_ops.compat import sentence_transformers

    return losses, sentence_transformers


def gist_like(cls, projection, margin_strategy, margin):
    """A GISTEmbedLoss of ``cls`` without models (as sentence-transformers' own tests build one): the
    model returns the embeddings carried by the features, the guide their projection."""
    obj = cls.__new__(cls)
    torch.nn.Module.__init__(obj)
    obj.temperature, obj.margin_strategy, obj.margin = 0.05, margin_strategy, margin
    obj.similarity_fct = torch.nn.CosineSimilarity(dim=-1)
    obj.contrast_anchors = obj.contrast_positives = obj.gather_across_devices = True
    obj.must_retokenize = False
    obj.cross_entropy_loss = torch.nn.CrossEntropyLoss()
    obj.model = lambda f: {"sentence_embedding": f["sentence_embedding"]}
    obj.guide = lambda f: {"sentence_embedding": f["sentence_embedding"] @ projection}
    return obj


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def main():
    out_dir = sys.argv[1]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    group = dist.group.WORLD
    torch.manual_seed(1234 + int(os.environ.get("TEST_SEED", "0")))  # the same data on every rank
    n = N_LOCAL * world
    a, b, queue = torch.randn(n, D, dtype=torch.float64), torch.randn(n, D, dtype=torch.float64), torch.randn(R, D, dtype=torch.float64)
    labels = torch.randint(0, 3, (n,))
    scale = torch.tensor(6.5, dtype=torch.float64)
    mine = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)

    losses = {
        "info_nce_queue": lambda x, y, s, lab, pg: co.info_nce(x, y, queue, temperature=0.2, process_group=pg),
        "info_nce_symmetric": lambda x, y, s, lab, pg: co.info_nce(x, y, symmetric=True, process_group=pg),
        "clip": lambda x, y, s, lab, pg: co.clip_loss(x, y, s, process_group=pg),
        "nt_xent": lambda x, y, s, lab, pg: co.nt_xent(x, y, process_group=pg),
        "dcl": lambda x, y, s, lab, pg: co.dcl_loss(x, y, process_group=pg),
        "supcon": lambda x, y, s, lab, pg: co.supcon_loss(x, lab, process_group=pg),
        "ring": lambda x, y, s, lab, pg: co.ring_info_nce(x, y, queue, outer=0.5, inner=0.2, process_group=pg),
        "module_nt_xent": lambda x, y, s, lab, pg: co.nn.NTXentLoss(process_group=pg)(x, y),
        "info_nce_labels": lambda x, y, s, lab, pg: co.info_nce(x, y, queue, symmetric=True, labels=lab, process_group=pg),
        "clip_labels": lambda x, y, s, lab, pg: co.clip_loss(x, y, s, labels=lab, process_group=pg),
        "ring_labels": lambda x, y, s, lab, pg: co.ring_info_nce(x, y, queue, outer=0.5, inner=0.2, labels=lab,
                                                                 process_group=pg),
        "hard_negative": lambda x, y, s, lab, pg: co.hard_negative_nce(x, y, temperature=0.4, process_group=pg),
        "debiased": lambda x, y, s, lab, pg: co.debiased_nce(x, y, tau_plus=0.2, process_group=pg),
        "siglip": lambda x, y, s, lab, pg: co.siglip_loss(x, y, s, -2.0, process_group=pg),
    }
    results = {}
    for name, fn in losses.items():
        full = [t.clone().requires_grad_(True) for t in (a, b, scale)]
        single = fn(full[0], full[1], full[2], labels, None)
        single_grads = torch.autograd.grad(single, full, allow_unused=True, materialize_grads=True)
        local = [a[mine].clone().requires_grad_(True), b[mine].clone().requires_grad_(True), scale.clone().requires_grad_(True)]
        loss = fn(local[0], local[1], local[2], labels[mine], group)
        grads = torch.autograd.grad(loss, local, allow_unused=True, materialize_grads=True)
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        mean_loss /= world
        scale_grad = grads[2].clone()
        dist.all_reduce(scale_grad)  # DDP averages a replicated parameter's gradient over the ranks
        results[name] = {
            "loss": rel_err(mean_loss, single),
            "grad_a": rel_err(grads[0] / world, single_grads[0][mine]),
            "grad_b": rel_err(grads[1] / world, single_grads[1][mine]) if single_grads[1].abs().max() > 0 else 0.0,
            "grad_scale": rel_err(scale_grad / world, single_grads[2]) if name in ("clip", "clip_labels", "siglip") else 0.0,
        }

    # compat classes against the peers' code, both run distributed on the same slices
    oc = peers.open_clip_loss()
    for local_loss in (True, False):
        for with_grad in (True, False):
            key = f"open_clip_local{int(local_loss)}_grad{int(with_grad)}"
            kw = {"local_loss": local_loss, "gather_with_grad": with_grad, "rank": rank, "world_size": world}
            ours_in = [a[mine].clone().requires_grad_(True), b[mine].clone().requires_grad_(True), scale.clone().requires_grad_(True)]
            peer_in = [t.detach().clone().requires_grad_(True) for t in ours_in]
            ours = co_open_clip.ClipLoss(**kw)(*ours_in)
            peer = oc.ClipLoss(**kw)(*peer_in)
            g_ours = torch.autograd.grad(ours, ours_in)
            g_peer = torch.autograd.grad(peer, peer_in)
            results[key] = {"loss": rel_err(ours, peer), **{f"grad{i}": rel_err(x, y) for i, (x, y) in enumerate(zip(g_ours, g_peer))}}
    for impl in ("bidir", "gather"):  # open_clip's neighbour exchange is this package's ring
        kw = {"rank": rank, "world_size": world, "dist_impl": impl}
        ours_in = [a[mine].clone().requires_grad_(True), b[mine].clone().requires_grad_(True),
                   scale.clone().requires_grad_(True), torch.tensor(-3.0, dtype=torch.float64, requires_grad=True)]
        peer_in = [t.detach().clone().requires_grad_(True) for t in ours_in]
        ours = co_open_clip.SigLipLoss(**kw)(*ours_in)
        peer = oc.SigLipLoss(**kw)(*peer_in)
        g_ours = torch.autograd.grad(ours, ours_in)
        g_peer = torch.autograd.grad(peer, peer_in)
        results[f"open_clip_siglip_{impl}"] = {
            "loss": rel_err(ours, peer), **{f"grad{i}": rel_err(x, y) for i, (x, y) in enumerate(zip(g_ours, g_peer))}}
    ntx, dcl = peers.lightly_losses()
    for key, ours_mod, peer_mod in (
        ("lightly_ntxent", co_lightly.NTXentLoss(gather_distributed=True), ntx.NTXentLoss(gather_distributed=True)),
        ("lightly_dcl", co_lightly.DCLLoss(gather_distributed=True), dcl.DCLLoss(gather_distributed=True)),
        ("lightly_ntxent_ring", co_lightly.NTXentLoss(gather_distributed=True, exchange="ring"),
         ntx.NTXentLoss(gather_distributed=True)),
        ("lightly_dcl_ring", co_lightly.DCLLoss(gather_distributed=True, exchange="ring"),
         dcl.DCLLoss(gather_distributed=True)),
    ):
        ours_in = [a[mine].clone().requires_grad_(True), b[mine].clone().requires_grad_(True)]
        peer_in = [t.detach().clone().requires_grad_(True) for t in ours_in]
        ours, peer = ours_mod(*ours_in), peer_mod(*peer_in)
        g_ours, g_peer = torch.autograd.grad(ours, ours_in), torch.autograd.grad(peer, peer_in)
        results[key] = {"loss": rel_err(ours, peer), **{f"grad{i}": rel_err(x, y) for i, (x, y) in enumerate(zip(g_ours, g_peer))}}

    st = sentence_transformers_losses()
    if st is not None:  # gather_across_devices: this rank's queries against every rank's documents
        st_peer, st_ours = st
        docs_in = torch.randn(n, D, dtype=torch.float64)  # one hard-negative column
        all_dirs = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
        for name, dirs, hardness in (("mnrl_1", ("query_to_doc",), None), ("mnrl_4", all_dirs, None),
                                     ("mnrl_hard_negatives", ("query_to_doc",), "hard_negatives"),
                                     ("mnrl_in_batch_negatives", all_dirs, "in_batch_negatives"),
                                     ("mnrl_all_negatives", ("query_to_doc",), "all_negatives")):
            kw = {"gather_across_devices": True, "directions": dirs}
            if hardness is not None:
                kw |= {"hardness_mode": hardness, "hardness_strength": 5.0}
            ours_in = [a[mine].clone().requires_grad_(True), b[mine].clone().requires_grad_(True),
                       docs_in[mine].clone().requires_grad_(True)]
            peer_in = [t.detach().clone().requires_grad_(True) for t in ours_in]
            ours = st_ours.MultipleNegativesRankingLoss(None, **kw).compute_loss_from_embeddings(ours_in, None)
            peer = st_peer.MultipleNegativesRankingLoss(None, **kw).compute_loss_from_embeddings(peer_in, None)
            g_ours, g_peer = torch.autograd.grad(ours, ours_in), torch.autograd.grad(peer, peer_in)
            results[f"sentence_transformers_{name}"] = {
                "loss": rel_err(ours, peer), **{f"grad{i}": rel_err(x, y) for i, (x, y) in enumerate(zip(g_ours, g_peer))}}
        # GIST: a guide that projects the embeddings (the same on every rank); positives and negatives
        # gathered, anchors local; the class (fake models, as the peer's own tests build it) and gist_loss
        projection = torch.randn(D, 4, dtype=torch.float64)
        for margin_strategy, margin in (("absolute", 0.1), ("relative", 0.05)):
            ours_in = [a[mine].clone().requires_grad_(True), b[mine].clone().requires_grad_(True),
                       docs_in[mine].clone().requires_grad_(True)]
            peer_in = [t.detach().clone().requires_grad_(True) for t in ours_in]
            features = lambda xs: [{"sentence_embedding": x} for x in xs]
            peer = gist_like(st_peer.GISTEmbedLoss, projection, margin_strategy, margin)(features(peer_in), None)
            ours = gist_like(st_ours.GISTEmbedLoss, projection, margin_strategy, margin)(features(ours_in), None)
            fn_in = [t.detach().clone().requires_grad_(True) for t in ours_in]
            functional = co.gist_loss(*fn_in, anchor_guide=fn_in[0].detach() @ projection,
                                      positive_guide=fn_in[1].detach() @ projection,
                                      negative_guide=fn_in[2].detach() @ projection, temperature=0.05,
                                      margin_strategy=margin_strategy, margin=margin, process_group=group)
            g_peer = torch.autograd.grad(peer, peer_in)
            for key, loss, inputs in (("gist", ours, ours_in), ("gist_loss", functional, fn_in)):
                grads = torch.autograd.grad(loss, inputs)
                results[f"sentence_transformers_{key}_{margin_strategy}"] = {
                    "loss": rel_err(loss, peer), **{f"grad{i}": rel_err(x, y) for i, (x, y) in enumerate(zip(grads, g_peer))}}

    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)
    dist.barrier()  # no rank tears down while another still has collectives in flight
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Gloo worker threads can still hold finished work objects whose tensors are freed during
    # interpreter finalization, which intermittently aborts the process (SIGABRT) after all work
    # is done. The results are written and the group destroyed: leave without finalization.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

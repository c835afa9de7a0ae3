"""Kernels of other projects whose GPU times are published, held here to run them through the model.

* :mod:`.attention` — the forward of Triton's fused-attention tutorial, written anew from its
  algorithm and configuration space (the tutorial's source is not copied here).

siglip-kernel's Triton kernel is read from the installed package (``siglip_kernel.triton_sigmoid_bce``).
"""

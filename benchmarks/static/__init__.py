"""The static model of the GPU kernels: what the compiler made of them and what time that implies.

No GPU is needed: the Triton kernels are compiled ahead of time for sm_90a by Triton's compiler and
the CUDA extension's kernels by nvcc; registers, spills, shared memory, MMA kind and SASS per tile are
read from the compiled code and turned into a roofline of each headline workload. Every time it gives
is *modeled*. Entry point: ``python -m benchmarks.static``.

* :mod:`.model` — device constants, a launch's modeled time, the modeled workloads (no compiling);
* :mod:`.sass` — Triton's bundled ptxas/cuobjdump and the SASS reader;
* :mod:`.triton_report` — the Triton kernels' variants and the launches of one loss call;
* :mod:`.cuda_report` — the CUDA extension's epilogues and fused sm_90a tiles, compared with Triton.
"""

"""Triton kernels of the `mahia::` ops, one module per op (kernel + launcher).

Imported only when a CUDA tensor reaches an op (or by the interpreter tests and the AOT build), so
that importing mahia stays fast and works without Triton or a GPU. Under the Triton interpreter
(environment variable TRITON_INTERPRET=1, which must be set before these modules are imported) the
same launchers run on CPU tensors.
"""

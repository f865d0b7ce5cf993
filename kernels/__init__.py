"""Kernels (installed as graphopt.kernels): NumPy references, Numba and TVM implementations.

- formats: sparse weight formats (BSR of W^T; N:M-compressed values + in-group indices);
- ref: NumPy reference kernels, the test oracle;
- numba_kernels: host-CPU kernels (parallel, nogil, cached) for dense, BSR and N:M matmul.
Numba/TVM imports stay inside this package. Not yet: TVM kernels and the autotuner.
"""

"""Kernels (installed as graphopt.kernels): NumPy references, Numba and TVM implementations.

- formats: sparse weight formats (BSR of W^T; N:M-compressed values + in-group indices);
- ref: NumPy reference kernels, the test oracle;
- numba_kernels: host-CPU kernels (parallel, nogil, cached) for dense, BSR and N:M matmul;
- tvm_kernels: TIR kernels for dense, BSR and N:M matmul building for x86, aarch64 and CUDA;
- autotune: the Numba kernels' tunables (path, threads) timed per problem, cached per
  (kernel, target, shape).
Numba/TVM imports stay inside this package.
"""

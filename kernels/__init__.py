"""Kernels (installed as graphopt.kernels): NumPy references, Numba and TVM implementations,
and what chooses between them.

- formats: sparse weight formats (BSR of W^T; N:M-compressed values + in-group indices);
- ref: NumPy reference kernels, the test oracle;
- numba_kernels: host-CPU kernels (parallel, nogil, cached) for dense, BSR and N:M matmul;
- autotune: the Numba kernels' tunables (path, threads) timed per problem, cached per
  (kernel, target, shape);
- choice: the one kernel-choice mechanism (a kernel against its alternative: measured, or by
  the target's rule; one margin, one cache);
- sparse_run: the run-time engine of `graphopt run`: onnxruntime with sparse layers through
  the kernels where they measured faster;
- tvm/: everything that imports TVM: TIR kernels, the Relax rewrite, schedules, tuning,
  code generation and export, and `tvm.lowering`, which the compiler reaches by name.
Numba/TVM imports stay inside this package.
"""

"""Kernels (installed as graphopt.kernels): NumPy references, Numba and TVM implementations.

Empty in this release: the sparse, quantized and dense kernels arrive with the passes that
produce their ops. Numba/TVM imports stay inside this package.
"""

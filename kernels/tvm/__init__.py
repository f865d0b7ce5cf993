"""The TVM side of graphopt (installed as graphopt.kernels.tvm): everything that imports TVM.

- lowering: what the compiler and the CLI call, by name through the registry;
- arches: what each architecture's artifact is, where it runs, how it is checked (data);
- codegen: ONNX -> Relax -> build -> export -> check (the artifact);
- relax_kernels: the Relax rewrite that hands layers to graphopt's kernels;
- cpu_schedules: graphopt's DLight CPU rules and fallback schedules;
- tuning: MetaSchedule with a persistent database, locally or over TVM RPC;
- kernels: TIR kernels (dense, packed, int8-weight, BSR, N:M, conv) and their host builds;
- target: descriptor -> tvm.target.Target; errors: CodegenError, reraise_interrupt.
TVM itself is imported inside functions only: importing this package does not load it.
"""

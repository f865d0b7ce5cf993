"""Default pass pipelines shared by targets. Lossless only: lossy passes are opt-in."""

# Order matters: constants first (transposed weights become constants), no-ops out, layout
# shuffles merged, pads moved into convs before BatchNorm folding (BN -> Conv folds only
# without padding); then the op-recognition fusions, before bias folding would eat their
# constants (Conv -> +3 -> Clip(0, 6) / 6 is a HardSigmoid only while the +3 is there);
# constant chains merged before they are folded into weights; a last sweep for no-ops.
LOSSLESS = (
    "fold_constants",
    "eliminate_noops",
    "propagate_transposes",
    "fuse_transpose",
    "fuse_pad_into_conv",
    "fold_batchnorm",
    "fuse_layer_norm",
    "fuse_gelu",
    "fuse_hard_activations",
    "fuse_consecutive_elementwise",
    "fuse_bias_and_scale",
    "eliminate_noops",
    "cleanup",
)

# For deployments on onnxruntime: its fused Conv/Gemm+activation kernels (com.microsoft ops).
ONNXRUNTIME = LOSSLESS[:-1] + ("fuse_activation", "cleanup")

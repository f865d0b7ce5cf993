"""Built-in passes (installed as graphopt.passes). The registry reads PASSES by name."""

from graphopt.passes.cleanup import cleanup
from graphopt.passes.conv_transpose_to_conv import conv_transpose_to_conv
from graphopt.passes.convert_opset import convert_opset
from graphopt.passes.eliminate_noops import eliminate_noops
from graphopt.passes.factorize_lowrank import factorize_lowrank
from graphopt.passes.fold_batchnorm import fold_batchnorm
from graphopt.passes.fold_constants import fold_constants
from graphopt.passes.fuse_activation import fuse_activation
from graphopt.passes.fuse_bias_and_scale import fuse_bias_and_scale
from graphopt.passes.fuse_consecutive_elementwise import fuse_consecutive_elementwise
from graphopt.passes.fuse_gelu import fuse_gelu
from graphopt.passes.fuse_hard_activations import fuse_hard_activations
from graphopt.passes.fuse_layer_norm import fuse_layer_norm
from graphopt.passes.fuse_pad_into_conv import fuse_pad_into_conv
from graphopt.passes.fuse_transpose import fuse_transpose
from graphopt.passes.propagate_transposes import propagate_transposes
from graphopt.passes.prune_channels import prune_channels
from graphopt.passes.quantize_per_channel import quantize_per_channel
from graphopt.passes.sparsify_block import sparsify_block
from graphopt.passes.sparsify_n_m import sparsify_n_m
from graphopt.passes.unroll_recurrent import unroll_recurrent

PASSES = [
    fold_constants, eliminate_noops, propagate_transposes, fuse_transpose, fuse_pad_into_conv,
    fold_batchnorm, fuse_layer_norm, fuse_gelu, fuse_hard_activations, fuse_consecutive_elementwise,
    fuse_bias_and_scale, fuse_activation, convert_opset, factorize_lowrank,
    sparsify_n_m, sparsify_block, prune_channels, quantize_per_channel, unroll_recurrent,
    conv_transpose_to_conv, cleanup,
]

__all__ = ["PASSES"] + [p.name for p in PASSES]

"""Built-in passes (installed as graphopt.passes). The registry reads PASSES by name."""

from graphopt.passes.cleanup import cleanup
from graphopt.passes.eliminate_noops import eliminate_noops
from graphopt.passes.fold_constants import fold_constants

PASSES = [fold_constants, eliminate_noops, cleanup]

__all__ = ["PASSES", "cleanup", "eliminate_noops", "fold_constants"]

"""A plugin pass: Relu(Relu(x)) ==> Relu(x)  (Relu is idempotent)."""

from graphopt.pattern import P, pattern_pass

DOUBLE_RELU = P("Relu", P("Relu", P.var("x"), name="inner"))


def _keep_inner(m, ctx):
    return [m.node("inner").outputs[0]]


remove_double_relu = pattern_pass(
    "remove_double_relu", [(DOUBLE_RELU, _keep_inner)], lossless=True,
    description="Relu(Relu(x)) -> Relu(x)",
)

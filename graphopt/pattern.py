"""Patterns as data, for local rewrites.

    CONV_BN = P("BatchNormalization",
                P("Conv", P.var("x"), P.const("w"), P.const("b", optional=True),
                  name="conv", single_use=True),
                P.const("scale"), P.const("bias"), P.const("mean"), P.const("var"), name="bn")

A pattern names what it captures: node patterns capture the `gs.Node`, `P.var` captures any
tensor and `P.const` a constant one. Guards live in the pattern: `single_use` (the node's
outputs feed only the node above it), `optional` inputs (absent or empty), `commutative`
(two inputs matched in either order), `attrs` (required attribute values, or predicates), and
`where` (a predicate on a captured constant's value). A name used twice must bind the same
tensor. Every rejection of a node whose op type matched is logged at debug level with its reason.

`pattern_pass` turns (pattern, rewrite) rules into a Pass. A rewrite gets the Match and the
PassContext and returns the tensors that replace the matched root's outputs, or None ("not
here", after logging why). It never deletes: dead nodes go in the cleanup after each sweep.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.pipeline import Option, Pass, PassContext

log = logging.getLogger("graphopt.pattern")

AttrSpec = Any  # a required value, or a predicate on the attribute value (None = absent)


class P:
    """A node pattern (`P("Conv", ...)`), or a tensor pattern (`P.var`, `P.const`)."""

    __slots__ = ("ops", "inputs", "name", "kind", "optional", "single_use", "commutative",
                 "attrs", "where", "domain")

    def __init__(
        self,
        op: str | tuple[str, ...],
        *inputs: P,
        name: str | None = None,
        single_use: bool = False,
        commutative: bool = False,
        attrs: Mapping[str, AttrSpec] | None = None,
        domain: str = "",
        optional: bool = False,
    ) -> None:
        if commutative and len(inputs) != 2:
            raise ValueError("commutative patterns take exactly two inputs")
        self.ops = (op,) if isinstance(op, str) else tuple(op)
        self.inputs = tuple(inputs)
        self.name = name
        self.kind = "node"
        self.optional = optional
        self.single_use = single_use
        self.commutative = commutative
        self.attrs = dict(attrs or {})
        self.where: Callable[[np.ndarray], bool] | None = None
        self.domain = domain

    @classmethod
    def var(cls, name: str | None = None, optional: bool = False) -> P:
        """Any tensor: a graph input, a computed value or a constant."""
        return cls._tensor("var", name, optional, None)

    @classmethod
    def const(
        cls,
        name: str | None = None,
        optional: bool = False,
        where: Callable[[np.ndarray], bool] | None = None,
    ) -> P:
        """A constant tensor (initializer or Constant node), optionally with a value check."""
        return cls._tensor("const", name, optional, where)

    @classmethod
    def _tensor(cls, kind: str, name: str | None, optional: bool, where) -> P:
        pattern = cls.__new__(cls)
        pattern.ops, pattern.inputs, pattern.name, pattern.kind = (), (), name, kind
        pattern.optional, pattern.single_use, pattern.commutative = optional, False, False
        pattern.attrs, pattern.where, pattern.domain = {}, where, ""
        return pattern

    def __repr__(self) -> str:
        if self.kind != "node":
            return f"P.{self.kind}({self.name!r})"
        return f"P({'|'.join(self.ops)}, {len(self.inputs)} inputs, name={self.name!r})"


@dataclass
class Match:
    """What a pattern bound: names to nodes (node patterns) or tensors (var/const)."""

    graph: gs.Graph
    root: gs.Node
    captures: dict[str, gs.Node | gs.Tensor | None] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.captures[name]

    def get(self, name: str) -> Any:
        return self.captures.get(name)

    def node(self, name: str) -> gs.Node:
        node = self.captures[name]
        assert isinstance(node, gs.Node), f"{name} captured a tensor, not a node"
        return node

    def value(self, name: str) -> np.ndarray | None:
        """The array of a captured constant; None for an absent optional input."""
        tensor = self.captures.get(name)
        return ir.constant_value(tensor) if isinstance(tensor, gs.Tensor) else None


class Reject(Exception):
    """Raised inside matching with the reason a candidate does not fit."""


def _present(tensor: gs.Tensor | None) -> bool:
    return tensor is not None and not (isinstance(tensor, gs.Variable) and tensor.name == "")


def match(pattern: P, node: gs.Node, graph: gs.Graph) -> Match | None:
    """Match `pattern` rooted at `node`; None if it does not fit (reason logged at debug)."""
    if pattern.kind != "node" or node.op not in pattern.ops:
        return None
    m = Match(graph, node)
    try:
        captures = _match_node(pattern, node, graph, {})
    except Reject as why:
        log.debug("pattern %r rejected node '%s' (%s): %s", pattern, node.name, node.op, why)
        return None
    m.captures = captures
    return m


def _bind(captures: dict, name: str | None, obj: Any) -> dict:
    if name is None:
        return captures
    if name in captures and captures[name] is not obj:
        raise Reject(f"'{name}' must be the same tensor in both places")
    return {**captures, name: obj}


def _match_node(pattern: P, node: gs.Node, graph: gs.Graph, captures: dict) -> dict:
    if node.op not in pattern.ops:
        raise Reject(f"expected {'|'.join(pattern.ops)}, found {node.op} '{node.name}'")
    domain = "" if node.domain in (None, "ai.onnx") else node.domain
    if domain != pattern.domain:
        raise Reject(f"node '{node.name}' is in domain '{node.domain}'")
    for key, spec in pattern.attrs.items():
        value = node.attrs.get(key)
        ok = spec(value) if callable(spec) else value == spec
        if not ok:
            raise Reject(f"attribute {key}={value!r} of '{node.name}' is not supported")
    captures = _bind(captures, pattern.name, node)
    actual = list(node.inputs)
    if len(actual) > len(pattern.inputs):
        raise Reject(
            f"'{node.name}' has {len(actual)} inputs, pattern allows {len(pattern.inputs)}")
    orders = [pattern.inputs]
    if pattern.commutative:
        orders.append(pattern.inputs[::-1])
    first: Reject | None = None  # the written order's reason reads best in the log
    for order in orders:
        try:
            bound = captures
            for i, sub in enumerate(order):
                tensor = actual[i] if i < len(actual) else None
                bound = _match_input(sub, tensor, graph, bound)
            return bound
        except Reject as why:
            first = first or why
    assert first is not None
    raise first


def _match_input(pattern: P, tensor: gs.Tensor | None, graph: gs.Graph, captures: dict) -> dict:
    if not _present(tensor):
        if pattern.optional:
            return _bind(captures, pattern.name, None)
        raise Reject(f"required input for {pattern!r} is absent")
    assert tensor is not None
    if pattern.kind == "var":
        return _bind(captures, pattern.name, tensor)
    if pattern.kind == "const":
        value = ir.constant_value(tensor)
        if value is None:
            raise Reject(f"'{tensor.name}' is not a constant")
        if pattern.where is not None and not pattern.where(value):
            raise Reject(f"constant '{tensor.name}' fails the value check of {pattern!r}")
        return _bind(captures, pattern.name, tensor)
    node = ir.producer(tensor)
    if node is None:
        raise Reject(f"'{tensor.name}' is not produced by a node")
    if pattern.single_use:
        for out in node.outputs:
            if len(ir.consumers(out)) > 1 or ir.is_graph_output(graph, out):
                raise Reject(f"'{node.name}' ({node.op}) has other consumers")
    return _match_node(pattern, node, graph, captures)


# --------------------------------------------------------------------------- pattern passes
Rewrite = Callable[[Match, PassContext], Sequence[gs.Tensor] | None]

MAX_SWEEPS = 20  # rewrites that expose new matches converge in a few sweeps


def apply_rules(graph: gs.Graph, rules: Sequence[tuple[P, Rewrite]], ctx: PassContext) -> int:
    """Apply rules over the graph and its subgraphs until nothing matches; return the count."""
    total = 0
    for _ in range(MAX_SWEEPS):
        changed = 0
        for g in list(ir.walk_graphs(graph)):
            changed += _sweep(g, rules, ctx)
        total += changed
        ir.cleanup(graph)
        if not changed:
            return total
    log.warning("%s: still rewriting after %d sweeps; stopping", ctx.pass_name, MAX_SWEEPS)
    return total


def _sweep(graph: gs.Graph, rules: Sequence[tuple[P, Rewrite]], ctx: PassContext) -> int:
    changed = 0
    for node in list(graph.nodes):
        if not _alive(graph, node):
            continue
        for pattern, rewrite in rules:
            m = match(pattern, node, graph)
            if m is None:
                continue
            replacement = rewrite(m, ctx)
            if replacement is None:
                continue
            if _replace_outputs(graph, node, list(replacement)):
                ir.detach_dead(graph, node)
                changed += 1
                ctx.count(f"rewrote {node.op}")
                break
    return changed


def _alive(graph: gs.Graph, node: gs.Node) -> bool:
    return any(out.outputs or ir.is_graph_output(graph, out) for out in node.outputs)


def _replace_outputs(graph: gs.Graph, node: gs.Node, new: list[gs.Tensor]) -> bool:
    if len(new) != len(node.outputs):
        raise ValueError(f"rewrite of '{node.name}' returned {len(new)} tensors for "
                         f"{len(node.outputs)} outputs")
    done = True
    for old, replacement in zip(list(node.outputs), new):
        if not ir.replace_all_uses(graph, old, replacement):
            log.debug("cannot replace graph output '%s' of '%s'; node kept", old.name, node.name)
            done = False
    return done


def pattern_pass(
    name: str,
    rules: Sequence[tuple[P, Rewrite]],
    *,
    lossless: bool,
    description: str,
    requires: Sequence[str] = (),
    produces: Sequence[str] = (),
    options: Mapping[str, Option] | None = None,
    max_error: float | None = None,
    infer_shapes: bool = False,
    min_opset: int | None = None,
) -> Pass:
    """A Pass that applies local rewrites until none matches.

    infer_shapes: fill in tensor shapes first (for rules that read them).
    min_opset: the default-domain opset the replacement ops need; below it the pass notes
    why and changes nothing (`convert_opset` raises it).
    """
    rules = tuple(rules)

    def run(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
        if min_opset is not None and (graph.opset or 0) < min_opset:
            ctx.note(f"opset {graph.opset} < {min_opset}: the ops this pass emits are not "
                     "available (run convert_opset first to raise it)")
            return graph
        if infer_shapes:
            ir.infer_shapes(graph)
        apply_rules(graph, rules, ctx)
        return graph

    return Pass(name=name, description=description, fn=run, lossless=lossless,
                requires=tuple(requires), produces=tuple(produces),
                options=dict(options or {}), max_error=max_error)

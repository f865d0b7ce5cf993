"""Errors of code generation, shared by the build, the schedules and tuning."""

from __future__ import annotations


class CodegenError(Exception):
    """Code generation failed for a reason worth one line in the report."""


def reraise_interrupt(exc: BaseException) -> None:
    """Ctrl-C inside TVM (during a C++ call, or in a Python callback TVM called) can come
    back as a TVM error carrying the KeyboardInterrupt; catching "any error" must not
    swallow it."""
    text = f"{type(exc).__name__} {exc}"
    if isinstance(exc, KeyboardInterrupt) or "KeyboardInterrupt" in text:
        raise KeyboardInterrupt from exc

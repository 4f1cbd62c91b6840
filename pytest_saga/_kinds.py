"""The fault kinds, in a module of their own: the plugin's option parsing needs them at
pytest start-up, and must not import saga_core for that (a suite that never uses sagas
pays nothing)."""

from __future__ import annotations

__all__ = ["FAULT_KINDS"]

FAULT_KINDS: tuple[str, ...] = (
    "503", "500", "529", "429", "timeout", "connect", "partial", "lost-ack", "crash",
    "stream-cut", "comp-fail",
)

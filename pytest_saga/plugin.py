"""The pytest entry point of pytest-saga (options, fixtures and reports arrive with the
plugin issue; loading it must cost a suite that never uses sagas nothing)."""

from __future__ import annotations

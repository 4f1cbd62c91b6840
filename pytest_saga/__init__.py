"""pytest-saga: a pytest plugin that injects faults into saga_core workflows and proves
rollback leaves no orphans and retries never re-buy LLM work."""

__all__: list[str] = []

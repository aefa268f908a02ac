"""``balance: free_capacity``: the config's rule and the order of the nodes."""

from __future__ import annotations

from typing import Any

import pytest

from tierflow.core.config import ModelConfig, TierConfig
from tierflow.core.constants import Keys
from workers.balance import by_free_capacity


def node(name: str, cap: int | None) -> ModelConfig:
    limits = {"max_concurrency": cap} if cap else {}
    return ModelConfig(name=name, provider="vllm", model_id="m", limits=limits)


class _Pipe:
    def __init__(self, counts: dict[str, int]) -> None:
        self.counts, self.asked = counts, []

    def zcard(self, key: str) -> None:
        self.asked.append(key)

    def execute(self) -> list[int]:
        return [self.counts[k.rsplit(":", 1)[1]] for k in self.asked]


class _Limits:
    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts
        self.keys = Keys("t")

    @property
    def redis(self) -> Any:
        counts = self.counts

        class _R:
            def pipeline(self, transaction: bool = True) -> _Pipe:
                return _Pipe(counts)

        return _R()


def test_free_capacity_needs_every_node_capacity() -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        TierConfig(models=[node("a", 8), node("b", None)], balance="free_capacity")
    assert TierConfig(models=[node("a", None)]).balance == "order"


def test_the_freest_share_comes_first_and_ties_are_spread() -> None:
    nodes = [node("a", 100), node("b", 400), node("c", 100)]
    limits: Any = _Limits({"a": 50, "b": 100, "c": 90})
    assert [m.name for m in by_free_capacity(nodes, limits)] == ["b", "a", "c"]
    idle: Any = _Limits({"a": 0, "b": 0, "c": 0})
    firsts = {by_free_capacity(nodes, idle)[0].name for _ in range(200)}
    assert firsts == {"a", "b", "c"}

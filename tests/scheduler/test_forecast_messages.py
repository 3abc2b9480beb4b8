"""Forecast answers are built from a cache of messages by value: never stale, always complete."""

from __future__ import annotations

from ferry_scheduler import convert
from ferry_scheduler.model import Candidate, PlacementResult, RejectedHost, Rejection


def _result(free_mb: int, score: float) -> PlacementResult:
    return PlacementResult(
        candidates=(Candidate("h1", "host1", score, ("s1",)), Candidate("h2", "host2", 0.5, ())),
        rejected=(RejectedHost("h3", "host3", (
            Rejection("memory", "INSUFFICIENT_MEMORY", f"needs 4096 MiB, has {free_mb} MiB free"),
            Rejection("cpu_model", "CPU_MODEL_MISMATCH", "CPU model differs"))),),
        selected=None, reservation=None, stale_view=False)


def test_a_changed_figure_or_score_is_never_served_from_the_cache() -> None:
    first = convert.forecast_to_proto(_result(100, 0.9))
    again = convert.forecast_to_proto(_result(100, 0.9))
    assert first == again
    changed = convert.forecast_to_proto(_result(200, 0.7))
    assert changed.rejected[0].rejections[0].message == "needs 4096 MiB, has 200 MiB free"
    assert changed.candidates[0].score == 0.7
    assert [c.host_id for c in changed.candidates] == ["h1", "h2"]
    assert list(changed.candidates[0].storage_ids) == ["s1"]
    assert [r.filter for r in changed.rejected[0].rejections] == ["memory", "cpu_model"]
    assert changed.can_place and not changed.stale


def test_the_cache_is_bounded(monkeypatch) -> None:
    monkeypatch.setattr(convert, "_BUILT_MAX", 3)
    for free in range(10):
        convert.forecast_to_proto(_result(free, 0.1 * free))
    assert len(convert._REJECTED) <= 3 and len(convert._CANDIDATES) <= 3

"""The progress document admins see, made from the typed records (fedsec.state.progress)."""

from __future__ import annotations

from fedsec.state.progress import progress_document
from fedsec.state.records import Participation, Refusal, ResultMeta, ResultOutcome, RoundKind, RoundRecord


def test_the_document_of_a_job_with_rounds_a_final_evaluation_refusals_sites_left_and_a_result() -> None:
    rounds = [
        RoundRecord(1, RoundKind.TRAIN, frozenset({"a", "b", "c"}), frozenset({"a"}), {"b": "NaN"}, frozenset({"c"}),
                    {"loss": 2.0}),
        RoundRecord(2, RoundKind.EVALUATE, frozenset({"a"}), frozenset({"a"}), metrics={"accuracy": 0.5}),
        RoundRecord(0, RoundKind.TRAIN, frozenset({"a", "b"}), frozenset({"b", "a"}), metrics={"loss": 3.0, "acc": 1}),
    ]  # fmt: skip
    left = {"c": "out of memory"}
    doc = progress_document(
        rounds,
        [Refusal(1, "b", "update has NaN")],
        Participation(frozenset({"a", "b", "c"}), {"c": 1, "b": 2}, left),
        ResultMeta(ResultOutcome.COMPLETED, "", "jobs/x/workspace/result/global_model.fsa", 1, b"d" * 32, 10),
    )
    assert doc == {
        "rounds": [
            {"round": 0, "metrics": {"acc": 1.0, "loss": 3.0}, "sites": ["a", "b"], "rejected": []},
            {"round": 1, "metrics": {"loss": 2.0}, "sites": ["a"], "rejected": ["b"], "failed": ["c"]},
        ],
        "final": {"metrics": {"accuracy": 0.5}, "sites": ["a"]},
        "refused": [{"round": 1, "site": "b", "reason": "update has NaN"}],
        "sites_left": [{"site": "c", "reason": "out of memory"}],
        "site_restarts": {"b": 2},
        "result": {"model": "global_model.fsa", "round": 1, "completed_rounds": 2},
    }


def test_the_document_of_a_job_before_its_first_round() -> None:
    assert progress_document([], [], Participation(), ResultMeta(ResultOutcome.FAILED, "no site")) == {
        "rounds": [],
        "final": None,
    }

"""Which nodes a run has left out of its job, from its ledger (core/exclusions.py), as a table."""

from __future__ import annotations

import pytest

from justrl_hpc.core.exclusions import active, applied, readmission

NOW = 1_000_000.0


def out(nodes: str, until: float, exclude: str | None = None) -> dict:
    return {"event": "excluded", "nodes": nodes, "until": until, "exclude": exclude or nodes}


def back(nodes: str, exclude: str) -> dict:
    return {"event": "readmitted", "nodes": nodes, "exclude": exclude}


CASES = [
    ("none", [], {}, None, None),
    ("one in force", [out("n3", NOW + 60)], {"n3": NOW + 60}, "n3", None),
    ("expired: readmitted at the next release", [out("n3", NOW - 1)], {}, "n3", (["n3"], "")),
    ("two, one expired", [out("n1", NOW - 1), out("n3", NOW + 60, "n1,n3")], {"n3": NOW + 60}, "n1,n3",
     (["n1"], "n3")),
    ("readmitted already", [out("n3", NOW - 1), back("n3", "")], {}, "", None),
    ("left out again after a readmission", [out("n3", NOW - 1), back("n3", ""), out("n3", NOW + 9)],
     {"n3": NOW + 9}, "n3", None),
    ("an event without `until` counts for nothing", [{"event": "excluded", "nodes": "n3"}], {}, None, None),
    ("the person's own (launch --exclude) stay out", [{"event": "submitted", "exclude": "n4"},
                                                      out("n3", NOW - 1, "n3,n4")], {}, "n3,n4", (["n3"], "n4")),
]


@pytest.mark.parametrize(("what", "events", "in_force", "last", "readmit"), CASES, ids=[c[0] for c in CASES])
def test_exclusions(what, events, in_force, last, readmit) -> None:
    assert active(events, NOW) == in_force
    assert applied(events) == last
    assert readmission(events, NOW) == readmit


def test_the_jobs_list_keeps_the_persons_nodes() -> None:
    from justrl_hpc.core.exclusions import job_list

    events = [{"event": "submitted", "exclude": "n4"}, out("n1", NOW + 5)]
    assert job_list(events, NOW, ["n2"]) == "n1,n2,n4"
    assert job_list(events, NOW + 6) == "n4"


@pytest.mark.parametrize(
    ("what", "person", "events", "want"),
    [
        ("the soak's resume: n2 left out minutes before", None,
         [{"event": "excluded", "nodes": "n2", "exclude": "n2", "until": 2_000.0}], "n2"),
        ("and the person's own", "n4", [{"event": "excluded", "nodes": "n2", "exclude": "n2", "until": 2_000.0}],
         "n2,n4"),
        ("expired: back in", None, [{"event": "excluded", "nodes": "n2", "exclude": "n2", "until": 900.0}], None),
        ("readmitted: back in", "n4", [{"event": "excluded", "nodes": "n2", "exclude": "n2", "until": 2_000.0},
                                       {"event": "readmitted", "nodes": "n2", "exclude": ""}], "n4"),
        ("an earlier submission's --exclude is the person's to give again", None,
         [{"event": "submitted", "exclude": "n1"}], None),
    ],
)
def test_a_resubmission_keeps_the_nodes_still_left_out(what, person, events, want):
    from justrl_hpc.core.exclusions import for_resubmission

    assert for_resubmission(events, 1_000.0, person) == want, what

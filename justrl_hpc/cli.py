"""`justrl-hpc VERB …`: the suite's verbs besides launch. Each verb's module is imported only when used."""

from __future__ import annotations

import importlib
import sys

from justrl_hpc.core.errors import UserError, cli_entry

VERBS: dict[str, tuple[str, str]] = {
    "launch": (
        "justrl_hpc.launch",
        "submit the run as resumable chunks (same as python -m justrl_hpc.launch)",
    ),
    "rehearse": (
        "justrl_hpc.dev.rehearse",
        "the whole lifecycle on this machine: dev cluster + rehearsal recipe + the monitor daemon",
    ),
    "devcluster": ("justrl_hpc.dev.devcluster.cli", "a real Slurm on this machine: up | down | status"),
    "prepare-data": (
        "justrl_hpc.jobs.prepare_data.job",
        "DAPO-Math-17k and validation sets -> verl parquet (or --eval-from JUSTRL_CHECKOUT, --rehearsal)",
    ),
    "save-now": ("justrl_hpc.launcher.control", "ask a running chunk to save at the next step and requeue"),
    "status": ("justrl_hpc.launcher.control", "one screen of where a run stands (ledger + Slurm)"),
    "monitor-job": (
        "justrl_hpc.launcher.monitor_job",
        "the monitor daemon as a chain of 1-CPU Slurm jobs until the run ends (strict login nodes)",
    ),
    "report": ("justrl_hpc.launcher.report", "goodput: where a run's allocated time went, per chunk (--json)"),
    "recipe": ("justrl_hpc.launcher.recipe_show", "show a recipe beside the published values (the fidelity table)"),
}


# A verb whose flag hands it to other code: the rehearsal's toy data is of this machine only, not a job of the
# real run; the authors' evaluation sets are checked by the evaluation's own loader and protocol.
FLAGGED: dict[tuple[str, str], str] = {
    ("prepare-data", "--rehearsal"): "justrl_hpc.dev.toy.prepare_cli",
    ("prepare-data", "--eval-from"): "justrl_hpc.jobs.evaluate.eval_sets",
}


def usage() -> str:
    lines = ["usage: justrl-hpc VERB [options]", "", "verbs:"]
    lines += [f"  {verb:<13} {text}" for verb, (_, text) in VERBS.items()]
    lines += ["", "`justrl-hpc VERB --help` for a verb's options."]
    return "\n".join(lines)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        raise UserError(f"unknown verb {verb!r}; one of: {', '.join(VERBS)}", "justrl-hpc")
    target = next((m for (v, flag), m in FLAGGED.items() if v == verb and flag in rest), VERBS[verb][0])
    module = importlib.import_module(target)
    entry = getattr(module, "verb_main", None)
    if entry is not None:
        return int(entry(verb, rest) or 0)
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""`justrl-hpc VERB …`: the suite's verbs besides launch. Each verb's module is imported only when used."""

from __future__ import annotations

import importlib
import sys

from justrl_hpc.errors import UserError, cli_entry

VERBS: dict[str, tuple[str, str]] = {
    "launch": (
        "justrl_hpc.launch",
        "submit the run as resumable chunks (same as python -m justrl_hpc.launch)",
    ),
    "rehearse": (
        "justrl_hpc.rehearse",
        "the whole lifecycle on this machine: dev cluster + rehearsal recipe",
    ),
    "devcluster": ("justrl_hpc.devcluster", "a real Slurm on this machine: up | down | status"),
    "prepare-data": (
        "justrl_hpc.prepare_cli",
        "DAPO-Math-17k and validation sets -> verl parquet (or --rehearsal)",
    ),
    "save-now": ("justrl_hpc.control", "ask a running chunk to save at the next step and requeue"),
    "status": ("justrl_hpc.control", "one screen of where a run stands (ledger + Slurm)"),
    "report": ("justrl_hpc.report", "goodput: where a run's allocated time went, per chunk (--json)"),
    "recipe": ("justrl_hpc.recipe_cli", "show a recipe beside the published values (the fidelity table)"),
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
    module = importlib.import_module(VERBS[verb][0])
    entry = getattr(module, "verb_main", None)
    if entry is not None:
        return int(entry(verb, rest) or 0)
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())

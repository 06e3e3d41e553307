"""`justrl-hpc recipe show NAME`: a recipe beside the published JustRL values, key by key."""

from __future__ import annotations

import argparse

from justrl_hpc.core import config_files
from justrl_hpc.core.recipe import fidelity_rows


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="justrl-hpc recipe", description="Recipes and the fidelity table.")
    sub = p.add_subparsers(dest="cmd", required=True)
    show = sub.add_parser("show", help="a recipe's verl values beside the published ones")
    show.add_argument("recipe", nargs="?", default="justrl-deepseek-1.5b")
    sub.add_parser("list", help="the recipes and clusters that ship with the suite")
    args = p.parse_args(argv)
    if args.cmd == "list":
        print("recipes:  " + ", ".join(config_files.available("recipes")))
        print("clusters: " + ", ".join(config_files.available("clusters")))
        return 0
    from rich.console import Console
    from rich.table import Table

    recipe = config_files.resolve(args.recipe, "a800-4x8").recipe
    table = Table(title=f"{recipe.name} vs the published JustRL recipe", show_lines=False)
    for col in ("verl key", "published", "this recipe", "note"):
        table.add_column(col, overflow="fold")
    for key, published, mine, note in fidelity_rows(recipe):
        style = "yellow" if note.startswith("DIFFERS") else None
        table.add_row(key, published, mine, note, style=style)
    Console().print(table)
    print(
        f"total_training_steps {recipe.total_training_steps} (published: DeepSeek 4380, Nemotron 3440), "
        f"save_freq {recipe.save_freq}, test_freq {recipe.test_freq}"
    )
    return 0

"""`python -m justrl_hpc.launch`: the command the design card and every doc name; the launcher lives in
`justrl_hpc/launcher/launch.py`. Kept as a module of its own so the command stays short."""

from __future__ import annotations

import sys

from justrl_hpc.launcher.launch import main

if __name__ == "__main__":
    sys.exit(main())

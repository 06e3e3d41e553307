"""Imported by verl (entry point `justrl_hpc_cpu` in group `verl.plugins`, or
`VERL_USE_EXTERNAL_MODULES=justrl_hpc.dev.verl_cpu.plugin`): registering happens on import, as verl only
imports an entry point and never calls it; and only with JUSTRL_VERL_CPU=1 (see justrl_hpc.dev.verl_cpu).

verl swallows an entry point's import error at debug level; a backend that silently isn't there shows up
much later as "No engine registered for device='cpu'", so the error is printed here first.
"""

from __future__ import annotations

import sys

from justrl_hpc.dev.verl_cpu import register

try:
    REGISTERED = register()
except Exception as exc:
    print(f"justrl-hpc: the verl CPU backend failed to load: {type(exc).__name__}: {exc}", file=sys.stderr)
    raise

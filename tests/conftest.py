"""Shared fixtures."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from helpers import Hook

from justrl_hpc.dev.devcluster import cluster as _devcluster


@pytest.fixture(scope="session")
def devcluster() -> Iterator[_devcluster.ClusterStatus]:
    """A real Slurm on this machine (partition dev, nodes n1..n4), up once per test session.

    Taken down at the end only if a test session started it and no other live session still holds it; a
    cluster someone started with `justrl-hpc devcluster up` stays up. SLURM_CONF points at it meanwhile, so
    plain `sbatch` (submitit) reaches it even where /etc/slurm/slurm.conf belongs to something else.
    """
    with _devcluster.lease() as status:
        before = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = str(status.conf)
        try:
            yield status
        finally:
            if before is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = before


@pytest.fixture(scope="session")
def rehearsal_data(tmp_path_factory):
    """The rehearsal's toy data and tiny base model, made once per session (~12 s)."""
    from justrl_hpc.dev.toy.prepare import prepare

    out = tmp_path_factory.mktemp("rehearsal-data")
    prepare(out)
    return out


@pytest.fixture(scope="session")
def verl_run(rehearsal_data, tmp_path_factory):
    """A run folder trained by verl's own main_ppo on the CPU backend: 2 steps, both saved by verl's
    checkpoint manager. Made once per session (~60 s) and shared by the tests that only read its results
    (export, evaluate). The trainer command is the suite's own for the rehearsal recipe; only Ray differs:
    main_ppo starts a local one (fake GPU count) where a chunk would attach to its job's."""
    import subprocess
    import sys
    from pathlib import Path

    from justrl_hpc.core import checkpoints
    from justrl_hpc.core.recipe import CPU_BACKEND_ENV, ChunkContext, trainer_command
    from justrl_hpc.core.run_folder import load

    repo = Path(__file__).resolve().parents[1]
    base = tmp_path_factory.mktemp("verl-run")
    run_dir = base / "run"
    data = rehearsal_data
    sets = [f"recipe.model_path={data / 'model'}", f"recipe.train_files=[{data / 'train.parquet'}]",
            f"recipe.val_files=[{data / 'val.parquet'}]", "recipe.total_training_steps=2", "recipe.save_freq=1",
            "recipe.test_freq=0"]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SLURM_JOB_ID", "JUSTRL_CONTROL_DIR")}
    # CPU_BACKEND_ENV: what a CPU recipe's chunk sets (submission.chunk_env) for verl to load the CPU backend.
    env.update({"PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "RAY_AUTH_MODE": "disabled",
                "TOKENIZERS_PARALLELISM": "false", CPU_BACKEND_ENV: "1"})
    args = [sys.executable, "-m", "justrl_hpc.launch", "--recipe", "rehearsal", "--cluster", "dev",
            "--name", "verl-run", "--run-dir", str(run_dir), "--create-only"]
    args += [a for s in sets for a in ("--set", s)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env, cwd=base)
    assert out.returncode == 0, out.stderr
    cmd = trainer_command(load(run_dir), run_dir, ChunkContext(first_chunk=False))
    cmd[0] = sys.executable
    cmd += ["ray_kwargs.ray_init.num_cpus=16", "+ray_kwargs.ray_init.num_gpus=2",
            "+ray_kwargs.ray_init.include_dashboard=False"]
    log = run_dir / "logs" / "trainer.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        trained = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=400, env=env, cwd=run_dir)
    assert trained.returncode == 0, log.read_text()[-3000:]
    assert (run_dir / "checkpoints" / "latest_checkpointed_iteration.txt").read_text() == "2"
    assert checkpoints.verified_steps(run_dir / "checkpoints", 2) == [1, 2]
    return run_dir


@pytest.fixture
def http() -> Iterator[tuple[str, Hook]]:
    hook = Hook()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            hook.requests.append((self.command, self.path, body))
            if hook.blocking:
                hook.entered.set()
                hook.block.wait(10)
            status = hook.statuses.pop(0) if hook.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        do_POST = _answer
        do_GET = _answer

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hook
    finally:
        hook.block.set()
        server.shutdown()
        server.server_close()

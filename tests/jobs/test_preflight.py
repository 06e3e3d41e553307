"""The preflight every node runs before Ray: real checks on this machine's host and Python stack, GPUs read
through the node agent's own replay backend (recorded NVML data; this machine has no GPU), failures planted
for real (a process holding the replayed GPU, a full small tmpfs, a module that does not import)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from justrl_hpc.core.config_files import resolve
from justrl_hpc.core.ledger import Ledger
from justrl_hpc.jobs.train import preflight
from justrl_hpc.jobs.train.kernel_log import KernelXids
from justrl_hpc.monitor.agent.replay import ReplayBackend

REPO = Path(__file__).resolve().parents[2]
RECORDING = REPO / "tests" / "data" / "nvml_a800_8gpu.jsonl"


def rehearsal():
    return resolve("rehearsal", "dev")


def a800(**sets: object):
    return resolve("justrl-deepseek-1.5b", "a800-4x8", [f"cluster.{k}={v}" for k, v in sets.items()])


def run_dir(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    for sub in ("control", "checkpoints"):
        (d / sub).mkdir(parents=True)
    return d


def recording(tmp_path: Path, inventory: dict | None = None, **gpu0: object) -> Path:
    """The recorded A800 node, with an inventory header (who held each GPU) and GPU 0's fields changed."""
    lines = RECORDING.read_text().splitlines()
    header = json.loads(lines[0])
    if inventory is not None:
        header["inventory"] = inventory
    first = json.loads(lines[1])
    first["gpus"][0].update(gpu0)
    out = tmp_path / "node.jsonl"
    out.write_text("\n".join([json.dumps(header), json.dumps(first), *lines[2:]]) + "\n")
    return out


def failed(checks: list[preflight.Check]) -> dict[str, str]:
    return {k.name: k.detail for k in checks if not k.ok}


NO_XIDS = KernelXids()  # the kernel log judged elsewhere (tests/jobs/test_kernel_log.py), not this machine's


def test_a_healthy_cpu_node_passes_every_check_in_seconds(tmp_path: Path) -> None:
    checks = preflight.run_checks(rehearsal(), run_dir(tmp_path), preflight.backend_for("none"))
    assert not failed(checks), failed(checks)
    names = {k.name for k in checks if k.ok}
    assert {"shm", "run-folder", "imports"} <= names
    imports = next(k for k in checks if k.name == "imports").detail
    assert "verl 0.9.1" in imports and "justrl_hpc.dev.verl_cpu" in imports
    result = preflight.summary(checks, 1.0)
    assert result["ok"] and result["failed"] == [] and preflight.verdict([result], tmp_path) is None


def test_the_replayed_a800_node_passes_and_reports_its_gpus(tmp_path: Path) -> None:
    inv = {"driver": "550.54.15", "cuda": "12.4", "gpus": [
        {"index": i, "name": "NVIDIA A800-SXM4-80GB", "processes": [], "recovery_action": 0} for i in range(8)]}
    checks = preflight.check_gpus(a800(), ReplayBackend(recording(tmp_path, inv)), NO_XIDS)
    assert not failed(checks), failed(checks)
    by = {k.name: k.detail for k in checks}
    assert by["gpu-count"] == "8 × NVIDIA A800-SXM4-80GB (cluster file: 8 × A800)"
    assert by["driver"] == "driver 550.54.15, CUDA 12.4"


def test_a_process_holding_a_gpu_is_named_with_its_pid_and_command(tmp_path: Path) -> None:
    holder = subprocess.Popen(["sleep", "300"])
    try:
        inv = {"driver": "550.54.15", "cuda": "12.4", "gpus": [
            {"index": i, "name": "NVIDIA A800-SXM4-80GB", "recovery_action": 0,
             "processes": [{"pid": holder.pid, "used_mib": 30000}] if i == 3 else []} for i in range(8)]}
        got = failed(preflight.check_gpus(a800(), ReplayBackend(recording(tmp_path, inv)), NO_XIDS))
        assert got == {"gpu-free": f"GPU 3 is held by pid {holder.pid} (sleep 300, 30000 MiB)"}
    finally:
        holder.kill()
        holder.wait()


def test_wrong_count_or_model_ecc_remap_and_recovery_fail(tmp_path: Path) -> None:
    inv = {"driver": "550", "cuda": "12.4", "gpus": [
        {"index": i, "name": "NVIDIA A800-SXM4-80GB", "processes": [], "recovery_action": 2 if i == 5 else 0}
        for i in range(8)]}
    rec = recording(tmp_path, inv, DCGM_FI_DEV_ECC_DBE_VOL_TOTAL=2, DCGM_FI_DEV_ROW_REMAP_PENDING=1)
    got = failed(preflight.check_gpus(a800(gpus_per_node=4), ReplayBackend(rec), NO_XIDS))
    assert got["gpu-count"].startswith("8 × NVIDIA A800-SXM4-80GB (cluster file: 4 × A800)")
    assert got["gpu-ecc"].startswith("GPU 0: 2 uncorrectable ECC errors")
    assert got["gpu-remap"].startswith("GPU 0: a row remap is pending")
    assert got["gpu-recovery"].startswith("GPU 5: the driver asks for recovery action 2")
    assert "gpu-count" in failed(preflight.check_gpus(a800(gpu_model="H100"), ReplayBackend(rec), NO_XIDS))


def test_nvml_missing_on_a_gpu_cluster_fails_and_on_a_cpu_cluster_does_not() -> None:
    none = preflight.backend_for("none")
    assert failed(preflight.check_gpus(a800(), none))["gpu-count"].startswith("0 × no GPU")
    assert preflight.check_gpus(rehearsal(), preflight.backend_for("none")) == []


def test_kernel_and_nvml_spell_a_gpus_bus_alike() -> None:
    assert preflight._bus("0000:07:00") == preflight._bus("00000000:07:00.0") == "07:00"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a tmpfs needs root")
def test_a_full_small_shm_fails_the_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shm = tmp_path / "shm"
    shm.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(shm)], check=True)
    try:
        try:
            (shm / "fill").write_bytes(b"\0" * (4 << 20))  # more than it holds: filled to the last page
        except OSError:
            pass
        monkeypatch.setenv(preflight.SHM_ENV, str(shm))
        got = failed(preflight.check_host(rehearsal(), run_dir(tmp_path)))
        assert got["shm"].startswith(f"{shm} has 0.00") and "cluster.min_shm_gb: 0.05" in got["shm"]
    finally:
        subprocess.run(["umount", str(shm)], check=True)


def test_an_unwritable_run_folder_fails_the_node(tmp_path: Path) -> None:
    d = run_dir(tmp_path)
    shutil.rmtree(d / "control")
    (d / "control").write_text("not a folder")
    got = failed(preflight.check_host(rehearsal(), d))
    assert got["run-folder"].startswith(f"{d} is not writable from this node")


def test_a_module_that_does_not_import_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shadow = tmp_path / "shadow" / "transformers"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('planted: a broken install')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", "")]))
    got = failed(preflight.check_stack(rehearsal(), cache=tmp_path / "cache"))
    assert list(got) == ["imports"]
    # verl imports transformers too: both are named, the broken one first
    assert got["imports"].startswith("cannot import transformers (ImportError: planted: a broken install); verl")


def test_a_passed_probe_is_kept_per_install_and_a_changed_install_is_probed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first = preflight.check_stack(rehearsal(), cache=cache)
    assert all(k.ok for k in first) and len(list(cache.iterdir())) == 1
    # The second chunk on this node reads the cached answer instead of importing verl again.
    (entry,) = cache.iterdir()
    entry.write_text(entry.read_text().replace(first[0].detail, "the cached answer"))
    assert preflight.check_stack(rehearsal(), cache=cache)[0].detail == "the cached answer"
    # A module that now resolves elsewhere (shadowed first on the path) is a different install: probed, and
    # its failure is not cached.
    shadow = tmp_path / "shadow" / "transformers"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('planted')\n")
    monkeypatch.syspath_prepend(str(shadow.parent))
    monkeypatch.setenv("PYTHONPATH", str(shadow.parent))
    assert "imports" in failed(preflight.check_stack(rehearsal(), cache=cache))
    assert len(list(cache.iterdir())) == 1


def test_the_gpu_recipes_ask_for_cuda_vllm_and_flash_attention() -> None:
    mods, cuda = preflight.stack_modules(a800())
    assert cuda and {"torch", "vllm", "flash_attn", "verl"} <= set(mods)
    mods, cuda = preflight.stack_modules(rehearsal())
    assert not cuda and "vllm" not in mods and "justrl_hpc.dev.verl_cpu" in mods


def test_the_driver_gathers_every_rank_and_names_the_bad_nodes(tmp_path: Path) -> None:
    control = tmp_path / "control"
    control.mkdir()
    good = {"node": "n1", "ok": True, "failed": []}
    bad = {"node": "n3", "ok": False, "failed": ["gpu-free: GPU 3 is held by pid 7 (python x.py)"]}
    preflight.publish(control, "42", 0, 1, {**good, "node": "n2"})
    preflight.publish(control, "42", 0, 2, bad)
    got = preflight.gather(control, "42", 0, nodes=3, timeout_s=5)
    assert [r["node"] for r in got] == ["n2", "n3"]
    reason = preflight.verdict([good, *got], tmp_path / "run")
    assert reason == (f"preflight failed on n3: gpu-free: GPU 3 is held by pid 7 (python x.py); fix it or leave "
                      f"the node out: python -m justrl_hpc.launch --resume {tmp_path / 'run'} --exclude n3")
    assert preflight.gather(control, "43", 0, nodes=2, timeout_s=0.5) == []
    everywhere = preflight.verdict([bad, {**bad, "node": "n4"}], tmp_path / "run")
    assert everywhere == (f"preflight failed on every node (n3,n4): {bad['failed'][0]}; fix it, then resubmit: "
                          f"python -m justrl_hpc.launch --resume {tmp_path / 'run'}")


def test_the_timing_warning_is_said_by_the_preflight_too(tmp_path: Path) -> None:
    checks = preflight.run_checks(a800(preemption="signal", preempt_grace_s=60), run_dir(tmp_path),
                                  preflight.backend_for("none"))
    warnings = [k.detail for k in checks if k.warning]
    assert any(w.startswith("preemption grace 60 s is shorter than a step + a save") for w in warnings)


OK = {"node": "n1", "ok": True, "failed": [], "transient": False}
SLOW = {"node": "n2", "ok": False, "failed": ["imports: importing torch took over 600 s"], "transient": True}
BAD = {"node": "n3", "ok": False, "failed": ["gpu-free: GPU 3 is held by pid 7 (python x.py)"], "transient": False}
OLD = {"node": "n4", "ok": False, "failed": ["imports: importing torch took over 120 s"]}  # before `transient`


@pytest.mark.parametrize(
    ("results", "transient", "reason"),
    [
        ([OK], False, None),
        ([OK, SLOW], True, "preflight on n2 may pass on another try: imports: importing torch took over 600 s"),
        ([SLOW, {**SLOW, "node": "n5"}], True, "preflight on n2,n5 may pass on another try: imports: importing "
                                               "torch took over 600 s"),
        # a node that was only slow is not one to leave out; the bad one decides
        ([SLOW, BAD], False, "preflight failed on n3: gpu-free: GPU 3 is held by pid 7 (python x.py); fix it or "
                             "leave the node out: python -m justrl_hpc.launch --resume RUN --exclude n3"),
        ([OK, OLD], False, "preflight failed on n4: imports: importing torch took over 120 s; fix it or leave the "
                           "node out: python -m justrl_hpc.launch --resume RUN --exclude n4"),
    ],
)
def test_a_failure_another_try_may_pass_requeues_instead_of_failing(
    results: list[dict], transient: bool, reason: str | None
) -> None:
    assert preflight.transient(results) is transient
    assert preflight.verdict(results, Path("RUN")) == reason


@pytest.mark.parametrize(
    ("checks", "transient"),
    [
        ([preflight.Check("imports", True, "torch 2.11.0")], False),
        ([preflight.Check("imports", False, "slow", transient=True),
          preflight.Check("timing", True, "a warning", warning=True)], True),
        ([preflight.Check("imports", False, "slow", transient=True), preflight.Check("shm", False, "full")], False),
    ],
)
def test_a_node_is_transient_only_when_every_failure_is(checks: list[preflight.Check], transient: bool) -> None:
    assert preflight.summary(checks, 0.1)["transient"] is transient


@pytest.mark.parametrize(
    ("have", "want", "ok", "detail"),
    [
        (96, 96, True, "this node task may use 96 CPUs (cluster.cpus_per_node: 96)"),
        (1, 96, False, "this node task may use 1 CPU, the cluster file asks 96 (cluster.cpus_per_node): srun did "
                       "not pass --cpus-per-task; export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK in the job script "
                       "(Slurm 22.05–23.02)"),
    ],
)
def test_the_cpus_a_node_task_may_use_are_what_the_cluster_file_asks(have: int, want: int, ok: bool,
                                                                     detail: str) -> None:
    assert preflight.cpus_check(have, want) == preflight.Check("cpus", ok, detail)


CHILD = """
import json, os, sys
from pathlib import Path
from justrl_hpc.core.config_files import resolve
from justrl_hpc.jobs.train import preflight
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # what srun without --cpus-per-task leaves a task
checks = preflight.check_host(resolve("rehearsal", "dev"), Path(sys.argv[1]))
print(json.dumps({k.name: k.detail for k in checks if not k.ok}))
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to take one away")
def test_a_node_task_pinned_to_one_cpu_fails_naming_srun_cpus_per_task(tmp_path: Path) -> None:
    d = run_dir(tmp_path)
    out = subprocess.run([sys.executable, "-c", CHILD, str(d)], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {"cpus": preflight.cpus_check(1, 2).detail}
    assert "cpus" not in failed(preflight.check_host(rehearsal(), d))  # this process may use both


def test_the_preflight_event_records_the_cpus_the_node_task_may_use(tmp_path: Path) -> None:
    d = run_dir(tmp_path)
    ledger = Ledger(d)
    assert preflight.on_this_node(rehearsal(), d, ledger, "42", 0, 0)["ok"]
    (event,) = [e for e in ledger.read() if e["event"] == "preflight"]
    assert event["cpus"] == len(os.sched_getaffinity(0)) and "transient" not in event


def _result(node: str, *failed: str, hard: tuple[str, ...] = (), passed: str = "shm,imports",
            transient: bool = False) -> dict:
    return {"node": node, "ok": not failed, "failed": list(failed), "hard": list(hard), "passed": passed,
            "transient": transient}


@pytest.mark.parametrize(("results", "evidence"), [
    ([_result("n1"), _result("n2", "gpu-remap: GPU 1: a row remap failed", hard=("gpu-remap: GPU 1: a row remap failed",))],
     {"n2": "gpu-remap: GPU 1: a row remap failed"}),
    ([_result("n1"), _result("n2", "shm: /dev/shm has 0.1 GB free")], {}),  # soft: no evidence against n2
    ([_result("n1"), _result("n2", "imports: cannot import vllm", passed="shm")],
     {"n2": "imports: cannot import vllm"}),  # broken on that node only
    ([_result("n1", "imports: cannot import vllm", passed="shm"),
      _result("n2", "imports: cannot import vllm", passed="shm")], {}),  # broken everywhere: the install
    ([_result("n1"), _result("n2", "imports: importing took over 600 s", passed="shm", transient=True)], {}),
])
def test_hard_evidence_is_against_the_node_itself(results: list[dict], evidence: dict) -> None:
    assert preflight.hard_evidence(results) == evidence


def test_hard_gpu_failures_are_marked_hard(tmp_path: Path) -> None:
    checks = preflight.check_gpus(a800(), ReplayBackend(recording(tmp_path, DCGM_FI_DEV_ROW_REMAP_FAILURE=1,
                                                                  DCGM_FI_DEV_ECC_DBE_VOL_TOTAL=2)), NO_XIDS)
    bad = {k.name: k.hard for k in checks if not k.ok}
    assert bad == {"gpu-ecc": True, "gpu-remap": True}
    result = preflight.summary(checks, 1.0)
    assert [h.split(":")[0] for h in result["hard"]] == ["gpu-ecc", "gpu-remap"]


def test_the_job_scripts_hand_the_jobs_cpus_to_srun(tmp_path: Path) -> None:
    """Slurm 22.05–23.02's srun does not inherit --cpus-per-task: the train chunk's setup lines (what submitit's
    script and sbatch/train.sbatch run) and the evaluate job's export SRUN_CPUS_PER_TASK, run by bash here."""
    import subprocess

    from justrl_hpc.core.config_files import resolve
    from justrl_hpc.core.slurm_resources import JOB_SETUP_LINES, RUN_MARK_ENV, SRUN_CPUS_LINE
    from justrl_hpc.jobs.train.submission import setup_lines

    repo = Path(__file__).resolve().parents[2]
    lines = setup_lines(resolve("rehearsal", "dev"), tmp_path)
    # A job submitted from inside a chunk arrives with the chunk's process mark: the setup drops it, or the
    # submitting chunk's sweep would take the new job's processes for its own.
    for script, env in (("\n".join(lines), {"SLURM_CPUS_PER_TASK": "2", RUN_MARK_ENV: "r/7/0/n1"}),
                        ("\n".join(lines), {})):
        out = subprocess.run(["bash", "-c", script + f'\necho "cpus=${{SRUN_CPUS_PER_TASK:-unset}} '
                              f'mark=${{{RUN_MARK_ENV}:-unset}}"'],
                             capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin", **env})
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().endswith(("cpus=2" if env else "cpus=unset") + " mark=unset"), out.stdout
    # The sbatch scripts print those same lines (evaluate.sbatch by the constant, train.sbatch by setup_lines);
    # tests/cluster/test_sbatch.py runs both on the dev cluster.
    assert "JOB_SETUP_LINES" in (repo / "sbatch" / "evaluate.sbatch").read_text()
    assert set(JOB_SETUP_LINES) <= set(lines) and SRUN_CPUS_LINE in JOB_SETUP_LINES
    assert "submission:setup_lines" in (repo / "sbatch" / "train.sbatch").read_text()

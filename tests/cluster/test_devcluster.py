"""The one-machine dev cluster: real munged, slurmctld and 4 slurmd; real jobs, signals, requeues.

Measurements (signal slack, requeue gap, cold up) are printed (`pytest -s`) and attached as junit properties;
the assertions are about behaviour, with bounds no tighter than Slurm's own 30 s controller tick.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from justrl_hpc.dev.devcluster import cluster as dc
from justrl_hpc.dev.devcluster.layout import DAEMONS, slurm_env
from justrl_hpc.dev.devcluster.procs import _alive
from justrl_hpc.dev.devcluster.status import status
from justrl_hpc.jobs.train import release

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slurm

# The options the suite's chunks are submitted with on the dev cluster (configs/clusters/dev.yaml).
SUITE_OPTIONS = ["--ntasks-per-node=1", "--cpus-per-task=2", "--requeue", "--signal=B:USR2@30", "--time=2"]


def wait_for(what: str, check: Callable[[], object], timeout_s: float, poll_s: float = 0.2) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s")


def slurm(*args: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(list(args), capture_output=True, text=True, timeout=30, env=env, check=False)
    assert out.returncode == 0, f"{' '.join(args)}: {out.stderr.strip()}"
    return out.stdout


def sbatch(script: Path, *options: str, env: dict[str, str] | None = None) -> str:
    script.chmod(0o755)
    return slurm("sbatch", "--parsable", f"--output={script}.out", *options, str(script), env=env).strip()


def job_fields(job_id: str, env: dict[str, str] | None = None) -> dict[str, str]:
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )
    fields: dict[str, str] = {}
    for token in out.stdout.split():
        key, sep, value = token.partition("=")
        if sep and key not in fields:
            fields[key] = value
    return fields


def epoch(slurm_time: str) -> float:
    return time.mktime(time.strptime(slurm_time, "%Y-%m-%dT%H:%M:%S"))


def note(record_property: Callable[[str, object], None], name: str, value: float) -> None:
    record_property(name, round(value, 2))
    print(f"measured {name} = {value:.2f}")


# ---------------------------------------------------------------- the shared cluster


def test_up_shows_four_usable_nodes_in_partition_dev(devcluster):
    st = status()
    assert st.up, st
    assert set(st.nodes) == {"n1", "n2", "n3", "n4"}
    assert all(st.daemons[d] for d in DAEMONS)
    part = slurm("scontrol", "show", "partition", "dev", "-o")
    assert "Default=YES" in part and "OverSubscribe=FORCE:4" in part and "MaxTime=UNLIMITED" in part
    conf = st.conf.read_text()
    assert "SelectTypeParameters=CR_Core" in conf and "JobRequeue=1" in conf
    assert slurm("sinfo", "-h", "-o", "%P").split() == ["dev*"]


def test_second_up_returns_at_once_with_the_same_daemons(devcluster):
    before = status()
    lines: list[str] = []
    st = dc.up(log=lines.append)
    assert not st.started_now
    assert st.daemons == before.daemons and st.keeper == before.keeper
    assert lines and lines[0].startswith("devcluster: already up")


def test_two_node_job_runs_one_task_per_fake_node(devcluster, tmp_path):
    script = tmp_path / "two.sh"
    script.write_text(
        "#!/bin/bash\n"
        'echo "nodelist=$SLURM_JOB_NODELIST conf=$SLURM_CONF"\n'
        # The chunk starts one node agent per node like this, beside the batch step.
        "srun --overlap bash -c 'echo \"task $SLURM_PROCID on $SLURMD_NODENAME\"'\n"
    )
    job = sbatch(script, "-N", "2", *SUITE_OPTIONS, "--wait")
    out = Path(f"{script}.out").read_text()
    assert job_fields(job).get("JobState") == "COMPLETED", out
    nodelist = out.split("nodelist=")[1].split()[0]
    nodes = slurm("scontrol", "show", "hostnames", nodelist).split()
    assert len(nodes) == 2 and set(nodes) <= {"n1", "n2", "n3", "n4"}, out
    tasks = sorted(line.split()[1:] for line in out.splitlines() if line.startswith("task "))
    assert tasks == [["0", "on", nodes[0]], ["1", "on", nodes[1]]], out
    # Inside a job, Slurm commands reach this cluster (slurmd hands the job its SLURM_CONF).
    assert f"conf={devcluster.conf}" in out


def test_four_full_width_jobs_run_at_the_same_time(devcluster, tmp_path):
    """OverSubscribe=FORCE:4: jobs asking for every CPU of all 4 nodes (no --mem, no --gres) share them."""
    jobs = []
    for i in range(4):
        script = tmp_path / f"wide{i}.sh"
        script.write_text(f"#!/bin/bash\ntouch {tmp_path}/started{i}\nsleep 60\n")
        cpus = "--cpus-per-task=1" if i % 2 else "--cpus-per-task=2"
        jobs.append(sbatch(script, "-N", "4", "--ntasks-per-node=1", cpus, "--requeue", "--time=2"))
    try:
        wait_for("all 4 jobs started", lambda: all((tmp_path / f"started{i}").exists() for i in range(4)), 30)
        assert {job_fields(j).get("JobState") for j in jobs} == {"RUNNING"}
    finally:
        slurm("scancel", *jobs)


def test_pre_timeout_signal_reaches_the_batch_shell(devcluster, tmp_path, record_property):
    lead = 50
    script = tmp_path / "sig.sh"
    log = tmp_path / "sig.log"
    script.write_text(
        "#!/bin/bash\n"
        f'echo "end $(date -d "$(squeue -h -j $SLURM_JOB_ID -o %e)" +%s)" >> {log}\n'
        f"trap 'echo \"usr2 $(date +%s.%N)\" >> {log}; exit 0' USR2\n"
        "sleep 120 & wait\n"
    )
    job = sbatch(script, "-N", "1", "--cpus-per-task=1", "--time=1", f"--signal=B:USR2@{lead}")
    try:
        # The controller checks time limits every 30 s, so the signal comes at a tick near end - lead.
        wait_for("USR2 in the job", lambda: "usr2" in (log.read_text() if log.exists() else ""), 75, 0.5)
    finally:
        subprocess.run(["scancel", job], capture_output=True, check=False)
    values = dict(line.split() for line in log.read_text().splitlines())
    before_end = float(values["end"]) - float(values["usr2"])
    note(record_property, "signal_s_before_end", before_end)
    note(record_property, "signal_slack_s", before_end - lead)  # > 0: early, < 0: late
    assert 10 < before_end <= lead + 35


def test_requeue_from_inside_a_job_then_start_time_now(devcluster, tmp_path, record_property):
    script = tmp_path / "rq.sh"
    log = tmp_path / "rq.log"
    script.write_text(
        "#!/bin/bash\n"
        f'echo "run ${{SLURM_RESTART_COUNT:-0}} $(date +%s.%N)" >> {log}\n'
        'if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then\n'
        # What a chunk may try: lift the hold from inside, in the SIGTERM grace the requeue gives it.
        f"  trap 'scontrol update JobId=$SLURM_JOB_ID StartTime=now; echo \"update $?\" >> {log}; exit 0' TERM\n"
        "  scontrol requeue $SLURM_JOB_ID\n"
        "  sleep 60 & wait\n"
        "fi\n"
    )
    job = sbatch(script, "-N", "2", *SUITE_OPTIONS)
    try:
        wait_for("first run", lambda: log.exists() and "run 0" in log.read_text(), 30)
        fields = wait_for(
            "held after requeue",
            lambda: (
                (f := job_fields(job))
                and f.get("JobState") == "PENDING"
                and f.get("Reason") == "BeginTime"
                and f
            ),
            30,
        )
        assert isinstance(fields, dict)
        hold_until = epoch(fields["StartTime"])
        # The update made inside the job did not stick: Slurm sets the hold when the requeue completes.
        assert hold_until - time.time() > 60, fields
        t0 = time.time()
        # The suite's releaser, not a bare update: a launch in the second of the requeue finds the job's
        # credential revoked and the job FAILS (seen here: backfill started one 0.3 s after a bare update).
        assert release.release_when_pending(job, timeout_s=30)
        wait_for("second run", lambda: "run 1" in log.read_text() or job_fields(job).get("JobState") == "FAILED", 60, 0.1)
        assert "run 1" in log.read_text(), job_fields(job)
        second = float(next(ln.split()[2] for ln in log.read_text().splitlines() if ln.startswith("run 1")))
    finally:
        subprocess.run(["scancel", job], capture_output=True, check=False)
    note(record_property, "requeue_release_to_running_s", second - t0)
    note(record_property, "requeue_hold_s", hold_until - t0)
    assert second < hold_until  # released well before Slurm's own hold ends
    assert job_fields(job).get("Restarts") == "1"


def test_cli_status_json_and_bad_input(devcluster, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = [sys.executable, "-m", "justrl_hpc.dev.devcluster.cli"]
    out = subprocess.run([*run, "status", "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads(out.stdout)
    assert data["up"] and data["partition"] == "dev" and data["conf"] == str(devcluster.conf)
    assert set(data["nodes"]) == {"n1", "n2", "n3", "n4"}

    out = subprocess.run([*run, "up"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and out.stderr.startswith("devcluster: already up"), out.stderr

    too_long = tmp_path / ("x" * 80)
    out = subprocess.run([*run, "up", "--scratch", str(too_long)], capture_output=True, text=True, env=env)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: --scratch:"), out.stderr
    assert not too_long.exists()
    out = subprocess.run([*run, "up", "--timeout", "0"], capture_output=True, text=True, env=env)
    assert out.returncode == 2 and out.stderr.startswith("error: --timeout:"), out.stderr
    out = subprocess.run([*run, "restart"], capture_output=True, text=True, env=env)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and out.stderr.startswith("error:"), out.stderr


# ---------------------------------------------------------------- a private second cluster (other ports)


@pytest.fixture
def private_scratch() -> Iterator[Path]:
    """A second cluster of its own, so bringing it down cannot disturb the shared one other sessions use."""
    root = Path(tempfile.mkdtemp(prefix="jdc-", dir="/tmp"))
    try:
        yield root
    finally:
        dc.down(root, log=lambda _line: None)
        shutil.rmtree(root, ignore_errors=True)


def processes_under(root: Path) -> list[str]:
    """Live processes whose command line or working folder lies in `root` (zombies are gone processes)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if state not in ("Z", "X") and (str(root) in cmd or cwd.startswith(str(root))):
            found.append(f"{entry} {cmd.strip()}")
    return found


def test_private_cluster_up_repair_down(devcluster, private_scratch, tmp_path, record_property):
    shared_before = status()
    t0 = time.monotonic()
    st = dc.up(private_scratch, log=lambda _line: None)
    note(record_property, "up_cold_s", time.monotonic() - t0)
    assert st.up and st.started_now
    assert st.ctld_port != shared_before.ctld_port  # the shared cluster holds the usual ports
    assert not st.etc_conf  # /etc/slurm/slurm.conf stays with the shared cluster
    env = slurm_env(private_scratch)

    t0 = time.monotonic()
    again = dc.up(private_scratch, log=lambda _line: None)
    note(record_property, "up_warm_s", time.monotonic() - t0)
    assert not again.started_now and again.daemons == st.daemons

    # Half up: one slurmd dies; up starts just that one again.
    os.kill(st.daemons["slurmd-n3"], signal.SIGKILL)
    wait_for("slurmd-n3 seen dead", lambda: not status(private_scratch).daemons["slurmd-n3"], 10)
    lines: list[str] = []
    repaired = dc.up(private_scratch, log=lines.append)
    assert repaired.up and not repaired.started_now
    assert repaired.daemons["slurmd-n3"] not in (None, st.daemons["slurmd-n3"])
    assert {d: p for d, p in repaired.daemons.items() if d != "slurmd-n3"} == {
        d: p for d, p in st.daemons.items() if d != "slurmd-n3"
    }
    assert any("restarting slurmd-n3" in line for line in lines)

    # A running job, plus a process that left the job's process tree (double fork), must not survive down.
    script = tmp_path / "busy.sh"
    script.write_text(
        f"#!/bin/bash\ncd {private_scratch}\n( setsid sleep 300 & )\nsrun --overlap sleep 300 &\n"
        f"touch {tmp_path}/busy\nwait\n"
    )
    job = sbatch(script, "-N", "2", *SUITE_OPTIONS, env=env)
    wait_for("busy job running", lambda: (tmp_path / "busy").exists(), 30)
    assert processes_under(private_scratch)

    pids = [p for p in repaired.daemons.values() if p] + [repaired.keeper]
    lines = []
    dc.down(private_scratch, log=lines.append)
    assert any(f"cancelled 1 jobs ({job})" in line for line in lines), lines
    assert not [p for p in pids if p and _alive(p)]
    assert processes_under(private_scratch) == []
    after = status(private_scratch)
    assert not any(after.daemons.values()) and after.keeper is None
    # The shared cluster was not touched.
    shared_after = status()
    assert shared_after.up and shared_after.daemons == shared_before.daemons, (shared_before, shared_after)


def test_lease_downs_only_for_the_last_holder(devcluster, private_scratch):
    quiet = lambda _line: None  # noqa: E731
    other = subprocess.Popen(["sleep", "120"])
    try:
        with dc.lease(private_scratch, log=quiet) as st:
            assert st.started_now
            start = Path(f"/proc/{other.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
            (private_scratch / "run" / "leases" / f"{other.pid}-{start}").touch()  # a second session
        assert status(private_scratch).up  # still held by the other session
    finally:
        other.kill()
        other.wait()
    with dc.lease(private_scratch, log=quiet) as st:
        assert not st.started_now
    # The last holder leaves, and a lease holder had started it: down.
    assert not any(status(private_scratch).daemons.values())

    dc.up(private_scratch, log=quiet)  # started by a person this time
    with dc.lease(private_scratch, log=quiet):
        pass
    assert status(private_scratch).up


CONFINED = r"""#!/bin/bash
# Where each node's task lives, what its job may use, and a process that leaves its parent (as Ray's agents do
# when their raylet dies): reparented to init, it is out of reach of tracking by descent. ($0 is Slurm's copy
# of the script in its spool: the files go beside the original, named by $1.)
set -- "$1"
srun bash -c '(echo "$SLURMD_NODENAME"; grep -E ":(memory|freezer|cpuset):" /proc/self/cgroup) > "$0.cg.$SLURM_PROCID"; \
  d=$(grep ":memory:" /proc/self/cgroup | cut -d: -f3 | sed "s|/step_.*||"); \
  cat "/sys/fs/cgroup/memory$d/memory.limit_in_bytes" > "$0.mem.$SLURM_PROCID"' "$1"
srun -N 1 -n 1 --mem=300M python3 -c "
x = bytearray(600 * 1024 ** 2)
for i in range(0, len(x), 4096): x[i] = 1
"
setsid sh -c 'sleep 600 >/dev/null 2>&1 & echo $! > "$0.orphan"' "$1"
sleep 600
"""


def test_jobs_are_confined_and_slurm_reaches_every_process(devcluster, tmp_path):
    """The strict dev cluster: each node's task in its job's cgroup, the job's --mem enforced by the cgroup
    OOM killer (in Slurm's own words), and a process reparented to init ended with the job at a cancel
    (under tracking by descent it outlived the job, as Ray's agents did on 2026-12-06)."""
    from justrl_hpc.jobs.train.trainer_process import classify_exit

    env = dict(os.environ, PYTHONPATH=str(REPO))
    data = json.loads(subprocess.run([sys.executable, "-m", "justrl_hpc.dev.devcluster.cli", "status", "--json"],
                                     capture_output=True, text=True, env=env, timeout=60, check=True).stdout)
    assert data["strict"] and data["confinement"]["line"].startswith("strict: proctrack/cgroup"), data
    script = tmp_path / "confined.sh"
    script.write_text(CONFINED)
    script.chmod(0o755)
    job = slurm("sbatch", "--parsable", f"--output={script}.out", "-N", "2", "--mem=1G", *SUITE_OPTIONS, str(script),
                str(script)).strip()
    try:
        orphan_file = Path(f"{script}.orphan")
        wait_for("the orphan's pid", orphan_file.exists, 90)
        time.sleep(0.2)
        orphan = int(orphan_file.read_text())
        assert Path(f"/proc/{orphan}/stat").read_text().split()[3] != str(os.getpid())
        nodes = set()
        for rank in (0, 1):
            node, *cg = Path(f"{script}.cg.{rank}").read_text().splitlines()
            nodes.add(node)
            for ctrl in ("memory", "freezer", "cpuset"):
                assert any(f":{ctrl}:/slurm_{node}/uid_0/job_{job}/step_0" in line for line in cg), cg
            assert int(Path(f"{script}.mem.{rank}").read_text()) == 1024 ** 3  # --mem=1G, per node
        assert len(nodes) == 2
        out = wait_for("Slurm's OOM line", lambda: "oom-kill" in Path(f"{script}.out").read_text()
                       and Path(f"{script}.out").read_text(), 60)
        assert classify_exit(1, False, "", str(out)) == "crashed-oom", out
        slurm("scancel", job)
        wait_for("the job to end", lambda: job_fields(job).get("JobState") in ("CANCELLED", "COMPLETED"), 60)
        wait_for("the orphan to be gone", lambda: not Path(f"/proc/{orphan}").exists()
                 or Path(f"/proc/{orphan}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z", 30)
    finally:
        subprocess.run(["scancel", job], capture_output=True, check=False)

"""Which XIDs in the kernel log the preflight judges: those after the NVIDIA driver's last load and after this
run's previous preflight on the node, so that a GPU reset since an XID 79 does not refuse the node until it
reboots.

The kernel log below is constructed (this machine has no NVIDIA driver), in /dev/kmsg's record format and with
the NVIDIA driver's own wording: an R535 driver loaded 14.5 s after boot, XID 79 on the GPU at 0000:4e:00 a day
later (GPU 3 in the A800 recording), an AER record with its continuation lines, an XID 13 (not one that needs a
reset), the driver reloaded two days after boot, then XID 119 on the GPU at 0000:87:00 (GPU 4); and XID 48 on
that GPU without a reload.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from justrl_hpc.core.config_files import resolve
from justrl_hpc.core.ledger import Ledger
from justrl_hpc.jobs.train import kernel_log, preflight
from justrl_hpc.jobs.train.kernel_log import Record

REPO = Path(__file__).resolve().parents[2]
RECORDING = REPO / "tests" / "data" / "nvml_a800_8gpu.jsonl"

BOOT = """\
5,0,0,-;Linux version 5.15.0-105-generic (buildd@lcy02-amd64-054) (gcc (Ubuntu 11.4.0-1ubuntu1~22.04) 11.4.0, GNU ld (GNU Binutils for Ubuntu) 2.38) #115-Ubuntu SMP Mon Apr 15 09:52:04 UTC 2024 (Ubuntu 5.15.0-105.115-generic 5.15.149)
4,1873,14203917,-;nvidia: loading out-of-tree module taints kernel.
6,1881,14312230,-;nvidia-nvlink: Nvlink Core is being initialized, major device number 508
6,1890,14534410,-;NVRM: loading NVIDIA UNIX x86_64 Kernel Module  535.183.01  Sun May 12 19:39:15 UTC 2024
"""
XID79 = """\
4,5120,86412553012,-;NVRM: Xid (PCI:0000:4e:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.
6,5121,86412553044,-;NVRM: GPU 0000:4e:00.0: GPU has fallen off the bus.
3,5122,86412600118,-;pcieport 0000:48:01.0: AER: Uncorrected (Fatal) error received: 0000:48:01.0
 SUBSYSTEM=pci
 DEVICE=+pci:0000:48:01.0
4,5204,90233101877,-;NVRM: Xid (PCI:0000:07:00): 13, pid=48213, name=python3, Graphics Exception: ESR 0x514648=0x1000e 0x514650=0x0 0x514644=0xd3eff2 0x51464c=0x17f
"""
RELOAD = """\
6,6001,172800412005,-;NVRM: loading NVIDIA UNIX x86_64 Kernel Module  535.183.01  Sun May 12 19:39:15 UTC 2024
4,6150,173000111222,-;NVRM: Xid (PCI:0000:87:00): 119, pid=91277, name=python3, Timeout after 6s of waiting for RPC response from GPU4 GSP! Expected function 76 (GSP_RM_CONTROL) (0x20800a4c 0x4).
"""
DBE = """\
4,5310,95000417332,-;NVRM: Xid (PCI:0000:87:00): 48, pid=91277, name=python3, An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer at partition 6, subpartition 0.
"""
# What is left after the ring buffer overwrote the records up to the driver's load line.
WRAPPED = "\n".join(line for line in XID79.splitlines() if not line.startswith("4,5204")) + "\n"

SINCE_LOAD = "since the driver loaded (15 s after boot)"
SINCE_MARK = "since this run's previous preflight on this node"


def test_records_keep_sequence_and_time_and_skip_continuation_lines() -> None:
    records = kernel_log.parse_records(BOOT + XID79)
    assert [r.seq for r in records] == [0, 1873, 1881, 1890, 5120, 5121, 5122, 5204]
    assert records[4] == Record(5120, 86412553012, "NVRM: Xid (PCI:0000:4e:00): 79, pid='<unknown>', "
                                "name=<unknown>, GPU has fallen off the bus.")
    assert kernel_log.parse_xids(records[-1].message) == [("0000:07:00", 13)]


@pytest.mark.parametrize(
    ("log", "mark", "xids", "since", "last"),
    [
        # no earlier preflight of this run on the node: everything since the driver loaded
        (BOOT + XID79, None, [("0000:4e:00", 79), ("0000:07:00", 13)], SINCE_LOAD, 5204),
        # the previous chunk's preflight read up to 5150: the XID 79 before it was judged then (and reset since)
        (BOOT + XID79, 5150, [("0000:07:00", 13)], SINCE_MARK, 5204),
        (BOOT + XID79, 5204, [], SINCE_MARK, 5204),
        # a driver reload after the mark starts the count again, whatever the mark says
        (BOOT + XID79 + RELOAD, None, [("0000:87:00", 119)], "since the driver loaded (172800 s after boot)", 6150),
        (BOOT + XID79 + RELOAD, 5150, [("0000:87:00", 119)], "since the driver loaded (172800 s after boot)", 6150),
        (BOOT + XID79 + RELOAD, 6100, [("0000:87:00", 119)], SINCE_MARK, 6150),
        # the load line has left the ring buffer: every XID still in it counts
        (WRAPPED, None, [("0000:4e:00", 79)], "since the kernel log's oldest record (86413 s after boot)", 5122),
        ("", None, [], "since boot", None),
        ("", 42, [], SINCE_MARK, 42),
    ],
)
def test_xids_are_counted_after_the_driver_load_and_the_previous_preflight(
    log: str, mark: int | None, xids: list[tuple[str, int]], since: str, last: int | None
) -> None:
    got = kernel_log.xids_since(kernel_log.parse_records(log), mark)
    assert (got.xids, got.since, got.last_seq) == (xids, since, last)


def test_the_log_is_read_through_the_same_reader_and_a_missing_one_says_why(tmp_path: Path) -> None:
    kmsg = tmp_path / "kmsg"
    kmsg.write_text(BOOT + XID79 * 300)  # longer than one read: records cut across reads are joined again
    got = kernel_log.kernel_xids(kmsg, mark=5150)
    assert got.error is None and got.xids == [("0000:07:00", 13)] * 300 and got.last_seq == 5204
    missing = kernel_log.kernel_xids(Path("/nonexistent/kmsg"), mark=7)
    assert missing.xids == [] and "No such file" in (missing.error or "") and missing.last_seq == 7


@pytest.mark.parametrize(
    ("events", "node", "boot", "mark"),
    [
        ([], "n1", "b1", None),
        ([{"event": "preflight", "node": "n1", "kmsg_boot": "b1", "kmsg_seq": 5150}], "n1", "b1", 5150),
        # another node's mark, or one from before the node rebooted, is not this node's
        ([{"event": "preflight", "node": "n2", "kmsg_boot": "b1", "kmsg_seq": 5150}], "n1", "b1", None),
        ([{"event": "preflight", "node": "n1", "kmsg_boot": "b0", "kmsg_seq": 9999}], "n1", "b1", None),
        # the latest that has one (a preflight that crashed wrote none)
        ([{"event": "preflight", "node": "n1", "kmsg_boot": "b1", "kmsg_seq": 10},
          {"event": "preflight", "node": "n1", "kmsg_boot": "b1", "kmsg_seq": 20},
          {"event": "preflight", "node": "n1", "ok": False}], "n1", "b1", 20),
        ([{"event": "preflight", "node": "n1", "kmsg_boot": "b1", "kmsg_seq": 20}], "n1", None, None),
    ],
)
def test_the_mark_is_this_nodes_last_in_this_boot(events: list[dict], node: str, boot: str | None,
                                                   mark: int | None) -> None:
    assert kernel_log.previous_mark(events, node, boot) == mark


def test_a_reset_gpu_is_refused_once_then_the_next_chunk_on_the_node_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node's real preflight, with the replayed A800 node and the constructed kernel log: the first chunk
    is refused for GPU 3's XID 79, the next one (the GPU reset in between) reads its mark from the ledger and
    passes. A preflight that saw no GPU (NVML none) judged no XID and keeps the mark where it was."""
    # Linux has a boot id (/proc/sys/kernel/random/boot_id); without one no mark could be kept.
    assert kernel_log.boot_id() is not None
    kmsg = tmp_path / "kmsg"
    kmsg.write_text(BOOT + XID79)
    monkeypatch.setattr(kernel_log, "KMSG", kmsg)
    monkeypatch.setenv("SLURMD_NODENAME", "gpu-a800-07")
    resolved = resolve("rehearsal", "dev", ["cluster.gpus_per_node=8", "cluster.gpu_model=A800",
                                            f"cluster.nvml_backend=replay:{RECORDING}"])
    run = tmp_path / "run"
    for sub in ("control", "checkpoints"):
        (run / sub).mkdir(parents=True)
    ledger = Ledger(run)
    first = preflight.on_this_node(resolved, run, ledger, "42", 0, 0)
    assert first["failed"] == ["gpu-xid: XIDs since the driver loaded (15 s after boot) that need a reset or "
                               "reboot: GPU 3 XID 79"]
    second = preflight.on_this_node(resolved, run, ledger, "42", 1, 0)
    assert second["ok"], second["failed"]
    kmsg.write_text(BOOT + XID79 + DBE)
    blind = resolve("rehearsal", "dev", ["cluster.nvml_backend=none"])
    assert preflight.on_this_node(blind, run, ledger, "42", 2, 0)["ok"]
    fourth = preflight.on_this_node(resolved, run, ledger, "42", 3, 0)
    assert fourth["failed"] == [f"gpu-xid: XIDs {SINCE_MARK} that need a reset or reboot: GPU 4 XID 48"]
    events = [e for e in ledger.read() if e["event"] == "preflight"]
    assert [e["kmsg_seq"] for e in events] == [5204, 5204, 5204, 5310]
    assert {e["kmsg_boot"] for e in events} == {kernel_log.boot_id()}

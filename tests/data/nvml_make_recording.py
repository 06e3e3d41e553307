"""Writes tests/data/nvml_a800_8gpu.jsonl: 24 minutes of 8 × A800-SXM4-80GB under a GRPO step cycle,
in the exact format `python -m justrl_hpc.monitor.agent --record FILE` writes (replay.Recorder).

Not a capture from a real node (this machine has no GPU): a deterministic synthesis of what NVML reports on
an A100/A800 SXM4 board during verl training, for tests and benchmarks. Replace it with a real recording
when one is made. Shape, per ~300 s step (all 8 GPUs in lock-step, as collectives force):
  rollout (vLLM)    0–190 s  util 96–100 %, 230–320 W, FB ≈ 71 GB (KV cache), SM 1410 MHz
  old-logprob/sync  190–215 s util 100 %, 300–380 W
  update (FSDP)     215–290 s util 100 %, 340–400 W (SW power cap at the 400 W limit), FB ≈ 60 GB
  between steps     290–300 s util 0–30 %, ~100 W, GpuIdle reason
Thresholds are what NVML reports for this board (shutdown 92, slowdown 89, GPU max 85, memory max 95 °C).
Events:
  minutes 12–22  GPU 5 runs hot (a failing cold plate): 86–88 °C, HW thermal slowdown (0x40), SM clock
                 ≈ 1000 MHz, thermal-violation counters growing;
  minute 22      XID 79 (fallen off the bus) on GPU 3; afterwards GPU 3 reads GPU_IS_LOST and the other
                 seven sit in NCCL at 100 % "utilisation" and ~90 W (the hang signature).
The first 12 minutes are healthy (the tests use them as the healthy recording).

With --driver535 it writes tests/data/nvml_a800_8gpu_driver535.jsonl instead: the same node's first two
healthy minutes, with the inventory header an R535 driver gives (535.183.01, CUDA 12.2: what NVML's
nvmlSystemGetCudaDriverVersion_v2 returns as 12020; no recovery-action field before R565), the A800 clusters'
common driver, too old for a CUDA 13 stack.

Run: python tests/data/nvml_make_recording.py [--driver535]  (rewrites the file next to this script)
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from justrl_hpc.monitor.agent.nvml import GPU_KEYS, Reading  # noqa: E402
from justrl_hpc.monitor.agent.replay import Recorder  # noqa: E402

INTERVAL = 15.0
READINGS = 96  # 24 minutes
HEALTHY_READINGS = 48  # the first 12 minutes
HOT_GPU, HOT_FROM, HOT_TO = 5, 48, 88
LOST_GPU, XID_AT = 3, 88
PCI = [
    "0000:07:00.0",
    "0000:0F:00.0",
    "0000:47:00.0",
    "0000:4E:00.0",
    "0000:87:00.0",
    "0000:90:00.0",
    "0000:B7:00.0",
    "0000:BD:00.0",
]
OUT = Path(__file__).with_name("nvml_a800_8gpu.jsonl")
DRIVER535 = Path(__file__).with_name("nvml_a800_8gpu_driver535.jsonl")
DRIVER535_READINGS = 8


def inventory_535() -> dict:
    """NvmlBackend.inventory() on this node under the R535 driver with nobody on the GPUs."""
    return {
        "driver": "535.183.01",
        "cuda": "12.2",
        "gpus": [
            {
                "index": i,
                "name": "NVIDIA A800-SXM4-80GB",
                "uuid": f"GPU-5d3c{i:x}a7e-1f2b-4c6d-9e0a-{0x3B71C9D20000 + i * 0x1111:012x}",
                "processes": [],
                "recovery_action": None,
            }
            for i in range(8)
        ],
    }


def phase(t: float) -> str:
    s = t % 300.0
    if s < 190:
        return "rollout"
    if s < 215:
        return "logprob"
    if s < 290:
        return "update"
    return "idle"


def main(out: Path = OUT, readings: int = READINGS, inventory: dict | None = None) -> None:
    rng = random.Random(20250105)
    offsets = [rng.uniform(-2.0, 4.0) for _ in range(8)]
    energy = [rng.randint(4_000_000_000, 6_000_000_000) for _ in range(8)]
    power_violation_us = [rng.randint(50_000_000, 90_000_000) for _ in range(8)]
    thermal_us = [0] * 8
    hw_therm_us = [0] * 8
    sbe_vol = [0, 0, 0, 0, 0, 0, 1, 0]
    pcie_replay = [0, 0, 1, 0, 0, 0, 0, 2]
    rec = Recorder(
        out,
        interval=INTERVAL,
        source="synthetic: tests/data/nvml_make_recording.py",
        host="gpu-a800-07",
        inventory=inventory,
    )
    for n in range(readings):
        t = n * INTERVAL
        p = phase(t)
        hang = n > XID_AT
        gpus = []
        for i in range(8):
            gpu = dict.fromkeys(GPU_KEYS)
            gpu.update(
                {
                    "index": i,
                    "uuid": f"GPU-5d3c{i:x}a7e-1f2b-4c6d-9e0a-{0x3B71C9D20000 + i * 0x1111:012x}",
                    "name": "NVIDIA A800-SXM4-80GB",
                    "pci_bus_id": PCI[i],
                    "DCGM_FI_DEV_SLOWDOWN_TEMP": 89,
                    "DCGM_FI_DEV_SHUTDOWN_TEMP": 92,
                    "DCGM_FI_DEV_GPU_MAX_OP_TEMP": 85,
                    "DCGM_FI_DEV_MEM_MAX_OP_TEMP": 95,
                    "DCGM_FI_DEV_PCIE_MAX_LINK_GEN": 4,
                    "DCGM_FI_DEV_PCIE_MAX_LINK_WIDTH": 16,
                    "DCGM_FI_DEV_PCIE_LINK_GEN": 4,
                    "DCGM_FI_DEV_PCIE_LINK_WIDTH": 16,
                    "nvlink_links_at_start": 12,
                    "nvlink_links_up": 12,
                    "DCGM_FI_DEV_FB_TOTAL": 81920,
                    "DCGM_FI_DEV_ENFORCED_POWER_LIMIT": 400.0,
                    "DCGM_FI_DEV_MEM_CLOCK": 1593,
                    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": 0,
                    "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL": 0,
                    "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL": [0, 3, 0, 0, 12, 0, 41, 0][i],
                    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": [0, 0, 1, 0, 0, 0, 2, 0][i],
                    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": 0,
                    "DCGM_FI_DEV_ROW_REMAP_PENDING": 0,
                    "DCGM_FI_DEV_ROW_REMAP_FAILURE": 0,
                    "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL": [0, 0, 0, 0, 0, 0, 0, 0][i],
                    "DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL": 0,
                    "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL": 0,
                    "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL": 0,
                    "NVML_FI_DEV_GET_GPU_RECOVERY_ACTION": 0,
                    "NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN": 0,
                    "NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN": 0,
                    "DCGM_FI_DEV_XID_ERRORS": 0,
                }
            )
            if n >= XID_AT and i == LOST_GPU:
                gpu["DCGM_FI_DEV_XID_ERRORS"] = 79
            if hang and i == LOST_GPU:
                # Every dynamic read fails with GPU_IS_LOST: the agent keeps the static part and marks it.
                gpu["nvml_error"] = "GPU_IS_LOST"
                gpus.append(gpu)
                continue
            hot = HOT_FROM <= n < HOT_TO and i == HOT_GPU
            if hang:
                util, power, fb, reasons = 100, rng.uniform(84, 96), 71_200 + 37 * i, 0
            elif p == "rollout":
                util, power, fb, reasons = rng.randint(96, 100), rng.uniform(230, 320), 71_200 + 37 * i, 0
            elif p == "logprob":
                util, power, fb, reasons = 100, rng.uniform(300, 380), 63_800 + 41 * i, 0
            elif p == "update":
                util, power = 100, min(400.0, rng.uniform(340, 412))
                fb = 59_400 + rng.randint(-600, 900)
                reasons = 0x4 if power >= 399.5 else 0
            else:
                util, power, fb, reasons = rng.randint(0, 30), rng.uniform(88, 120), 59_000 + 23 * i, 0x1
            sm = 1410
            if reasons & 0x4:
                sm = rng.choice([1275, 1305, 1335, 1350])
                power_violation_us[i] += int(rng.uniform(1.0, 4.0) * 1e6)
            temp = 38 + power * 0.085 + offsets[i] + rng.uniform(-0.8, 0.8)
            if hot:
                ramp = min(1.0, (n - HOT_FROM) / 6)
                temp = 70 + ramp * rng.uniform(15.5, 18.0)
                if ramp >= 0.5 and rng.random() < 0.85:
                    reasons |= 0x40
                    hw_therm_us[i] += int(rng.uniform(4.0, 12.0) * 1e6)
                    thermal_us[i] += int(rng.uniform(4.0, 12.0) * 1e6)
                    sm = rng.choice([975, 990, 1005, 1035, 1050])
                    power = min(power, rng.uniform(235, 265))
            if i == 6 and n in (31, 77):
                sbe_vol[i] += 1
            if i == 7 and n == 60:
                pcie_replay[i] += 1
            energy[i] += int(power * INTERVAL * 1000)
            gpu.update(
                {
                    "DCGM_FI_DEV_GPU_UTIL": util,
                    "DCGM_FI_DEV_MEM_COPY_UTIL": max(0, min(100, int(util * rng.uniform(0.25, 0.6)))),
                    "DCGM_FI_DEV_FB_USED": fb,
                    "DCGM_FI_DEV_GPU_TEMP": round(temp),
                    "DCGM_FI_DEV_MEMORY_TEMP": round(temp + 6 + rng.uniform(-1, 1)),
                    "DCGM_FI_DEV_POWER_USAGE": round(power, 1),
                    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": energy[i],
                    "DCGM_FI_DEV_SM_CLOCK": sm if util > 0 else 210,
                    "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": reasons,
                    "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": sbe_vol[i],
                    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": pcie_replay[i],
                    "DCGM_FI_DEV_POWER_VIOLATION": power_violation_us[i],
                    "DCGM_FI_DEV_THERMAL_VIOLATION": thermal_us[i],
                    "NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN": hw_therm_us[i],
                }
            )
            gpus.append(gpu)
        reading = Reading(gpus=gpus)
        if n == XID_AT:
            reading.xid_events = [
                {"time": 1_736_000_000.0 + t + 3.2, "gpu": LOST_GPU, "xid": 79, "event_type": 8}
            ]
        if hang:
            reading.nvml_error = {
                "code": 15,
                "name": "GPU_IS_LOST",
                "message": "GPU is lost",
                "where": "sample",
                "gpu": LOST_GPU,
            }
        rec.record(reading, 1_736_000_000.0 + t)
    rec.close()
    print(f"wrote {out} ({out.stat().st_size} bytes, {readings} readings)")


if __name__ == "__main__":
    if "--driver535" in sys.argv[1:]:
        main(DRIVER535, DRIVER535_READINGS, inventory_535())
    else:
        main()

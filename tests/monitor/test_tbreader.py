"""The TensorBoard tail reader against real event files: written by tensorboard's own EventFileWriter and by
torch's SummaryWriter (the class verl 0.9.1's tensorboard logger uses), then cut, corrupted, continued
and restarted the way a trainer on a shared filesystem does it. TensorBoard's EventAccumulator is the
reference for what the files hold."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from justrl_hpc.monitor.sources.tensorboard import ROOT_RUN, TBTail
from justrl_hpc.monitor.sources.tfrecord import crc32c_py, masked

T0 = 1_790_000_000.0


def writer(logdir: Path, stamp: int, created: float = T0) -> _Writer:
    """Events through tensorboard's own RecordWriter (what its EventFileWriter writes with), synchronously,
    in a file named for creation time `stamp` (files are ordered by it)."""
    logdir.mkdir(parents=True, exist_ok=True)
    return _Writer(logdir / f"events.out.tfevents.{stamp}.testhost.{stamp % 1000}.0", created)


class _Writer:
    def __init__(self, path: Path, created: float) -> None:
        from tensorboard.compat.proto import event_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._fh = open(path, "ab")
        self._w = RecordWriter(self._fh)
        self._w.write(event_pb2.Event(wall_time=created, file_version="brain.Event:2").SerializeToString())
        self._fh.flush()

    def scalars(self, step: int, values: dict[str, float], wall: float | None = None) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        for tag, v in values.items():
            summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=v)])
            ev = event_pb2.Event(
                wall_time=wall if wall is not None else T0 + step, step=step, summary=summary
            )
            self._w.write(ev.SerializeToString())

    def tensor_scalar(self, step: int, tag: str, value: float) -> None:
        from tensorboard.compat.proto import event_pb2
        from tensorboard.plugins.scalar import summary_v2

        ev = event_pb2.Event(wall_time=T0 + step, step=step, summary=summary_v2.scalar_pb(tag, value))
        self._w.write(ev.SerializeToString())

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def reference(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(logdir), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
    acc.Reload()
    out = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    from tensorboard.util import tensor_util

    for t in acc.Tags()["tensors"]:
        if acc.SummaryMetadata(t).plugin_data.plugin_name != "scalars":
            continue
        out[t] = [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(t)]
    return out


def same(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> bool:
    return [s for s, _ in got] == [s for s, _ in want] and [v for _, v in got] == pytest.approx(
        [v for _, v in want]
    )


def values(tail: TBTail, tag: str, run: str = ROOT_RUN) -> list[tuple[int, float]]:
    return [(s, v) for s, _, v in tail.series(tag, run)]


def only_file(logdir: Path) -> Path:
    (path,) = [p for p in logdir.iterdir() if "tfevents" in p.name]
    return path


def record_offsets(data: bytes) -> list[int]:
    offsets, pos = [], 0
    while pos + 12 <= len(data):
        offsets.append(pos)
        pos += 16 + struct.unpack_from("<Q", data, pos)[0]
    return offsets


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


# -- the writers ---------------------------------------------------------------------------------------------


def test_verl_writer_is_summarywriter_add_scalar():
    """What the reader's fast path is built for: verl 0.9.1 logs through SummaryWriter.add_scalar."""
    spec = importlib.util.find_spec("verl")  # the top level only: importing verl.utils costs ~20 s
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("verl is not installed (pip install -e '.[train]'): this test reads its tracking.py")
    source = (Path(spec.submodule_search_locations[0]) / "utils" / "tracking.py").read_text()
    adapter = source[source.index("class _TensorboardAdapter") :]
    adapter = adapter[: adapter.index("\nclass ")]
    assert "from torch.utils.tensorboard import SummaryWriter" in adapter
    assert "self.writer.add_scalar(key, data[key], step)" in adapter
    assert "purge_step" not in adapter  # so a resume re-logs replayed steps (the replacement rule)


def test_torch_summarywriter_file_matches_event_accumulator(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path))
    rnd = random.Random(1)
    for step in range(0, 300):  # step 0 has no step field on the wire: the protobuf path
        for tag in ("critic/score/mean", "actor/entropy", "timing_s/step", "val-core/aime24/acc/mean@32"):
            w.add_scalar(tag, rnd.uniform(-2, 2), step)
    w.add_scalar("tf2/new_style", 0.25, 7, new_style=True)
    w.add_scalar("tf2/double", 1.0 / 3.0, 8, new_style=True, double_precision=True)
    w.add_histogram("not/a/scalar", np.array([1.0, 2.0, 3.0]), 1)
    w.add_text("notes", "hello", 1)
    w.close()
    tail = TBTail(tmp_path)
    result = tail.poll()
    assert result.corrupt == []
    ref = reference(tmp_path)
    assert (
        set(tail.tags())
        == {t for t in ref if t != "notes/text_summary"}
        == {
            "critic/score/mean",
            "actor/entropy",
            "timing_s/step",
            "val-core/aime24/acc/mean@32",
            "tf2/new_style",
            "tf2/double",
        }
    )
    for tag in tail.tags():
        assert same(values(tail, tag), ref[tag]), tag
    assert tail.latest("tf2/double")[2] == pytest.approx(1.0 / 3.0, abs=1e-15)  # read as double
    assert result.count == 4 * 300 + 2


def test_tensorboard_writer_tf1_and_tf2_scalars(tmp_path):
    w = writer(tmp_path, 1000)
    for step in range(1, 51):
        w.scalars(step, {"a": step * 0.5, "b": -step})
        w.tensor_scalar(step, "tf2/loss", 1.0 / step)
    w.close()
    ref = reference(tmp_path)
    for fast in (True, False):
        tail = TBTail(tmp_path, fast_path=fast)
        assert tail.poll().corrupt == []
        assert tail.tags() == ["a", "b", "tf2/loss"]
        for tag in tail.tags():
            assert same(values(tail, tag), ref[tag]), (fast, tag)
        assert [w for _, w, _ in tail.series("a")] == [T0 + s for s in range(1, 51)]


# -- incremental reading ---------------------------------------------------------------------------------------


def test_incremental_polls_return_only_new_points(tmp_path):
    w = writer(tmp_path, 1000)
    tail = TBTail(tmp_path)
    assert tail.poll().count == 0  # only the file_version record so far
    w.scalars(1, {"x": 1.0, "y": 2.0})
    w.flush()
    r = tail.poll()
    assert r.new_counts == {(ROOT_RUN, "x"): 1, (ROOT_RUN, "y"): 1}
    size = only_file(tmp_path).stat().st_size
    idle = tail.poll()
    assert idle.count == 0 and idle.bytes_read == 0
    w.scalars(2, {"x": 3.0})
    w.scalars(3, {"x": 4.0})
    w.flush()
    r = tail.poll()
    assert r.points("x") == [(2, T0 + 2, 3.0), (3, T0 + 3, 4.0)]
    assert r.points("y") == [] and r.replaced_from == {}
    assert r.bytes_read == only_file(tmp_path).stat().st_size - size  # only the new bytes
    assert values(tail, "x") == [(1, 1.0), (2, 3.0), (3, 4.0)]
    w.close()


def test_record_cut_in_half_is_left_for_the_next_poll(tmp_path):
    src = tmp_path / "src"
    w = writer(src, 1000)
    for step in range(1, 21):
        w.scalars(step, {"x": float(step)})
    w.close()
    data = only_file(src).read_bytes()
    offsets = record_offsets(data)
    live = tmp_path / "live"
    live.mkdir()
    path = live / only_file(src).name
    for cut in (offsets[10] + 5, offsets[15] + 13, offsets[18] + 30):  # in the header, at data, in the data
        shutil.rmtree(live)
        live.mkdir()
        path.write_bytes(data[:cut])
        tail = TBTail(live)
        first = tail.poll()
        ends = offsets[2:] + [len(data)]  # where each scalar record ends
        assert first.corrupt == [] and len(tail.series("x")) == sum(1 for e in ends if e <= cut)
        with open(path, "ab") as fh:
            fh.write(data[cut:])
        second = tail.poll()
        assert second.corrupt == []
        assert values(tail, "x") == [(s, float(s)) for s in range(1, 21)]
        assert first.count + second.count == 20


def test_corrupt_records_are_reported_and_skipped(tmp_path):
    w = writer(tmp_path, 1000)
    for step in range(1, 41):
        w.scalars(step, {"x": float(step)})
    w.close()
    path = only_file(tmp_path)
    data = bytearray(path.read_bytes())
    offsets = record_offsets(bytes(data))
    data[offsets[10] + 20] ^= 0xFF  # a data byte of step 10: data CRC
    data[offsets[20] + 2] ^= 0x5A  # the length of step 20: the framing is lost there
    data[offsets[30] + 12 : offsets[30] + 14] = b"\xff\xff"  # step 30 undecodable, CRC made to match
    body = bytes(data[offsets[30] + 12 : offsets[31] - 4])
    data[offsets[31] - 4 : offsets[31]] = struct.pack("<I", masked(crc32c_py(body)))
    path.write_bytes(bytes(data))
    for fast in (True, False):
        tail = TBTail(tmp_path, fast_path=fast)
        r = tail.poll()
        got = {(c.offset, c.reason.split(":")[0]) for c in r.corrupt}
        assert got == {(offsets[10], "data crc"), (offsets[20], "length crc"), (offsets[30], "undecodable")}
        assert all(c.file == path.name for c in r.corrupt)
        skipped = next(c for c in r.corrupt if c.reason == "length crc")
        assert skipped.skipped == offsets[21] - offsets[20]  # resynchronised at the next record
        assert [s for s, _ in values(tail, "x")] == [s for s in range(1, 41) if s not in (10, 20, 30)]
        assert tail.poll().corrupt == []  # reported once


def test_garbage_and_zero_tail(tmp_path):
    w = writer(tmp_path, 1000)
    w.scalars(1, {"x": 1.0})
    w.flush()
    path = only_file(tmp_path)
    tail = TBTail(tmp_path)
    tail.poll()
    with open(path, "ab") as fh:
        fh.write(b"\x00" * 4096)  # pages whose bytes are not visible yet: not corrupt, just not there
    assert tail.poll().corrupt == []
    data = path.read_bytes()
    path.write_bytes(data[:-4096])  # the real bytes arrive (shrinks back; same inode, same head)
    w.scalars(2, {"x": 2.0})
    w.close()
    r = tail.poll()
    assert r.corrupt == [] and values(tail, "x") == [(1, 1.0), (2, 2.0)]
    with open(path, "ab") as fh:
        fh.write(os.urandom(5000))  # garbage at the end: reported, skipped, never an endless loop
    r = tail.poll()
    assert len(r.corrupt) >= 1 and r.corrupt[0].reason == "length crc"
    for _ in range(3):
        assert tail.poll().count == 0


# -- restarts of the trainer --------------------------------------------------------------------------------------


def test_trainer_restart_replayed_steps_replace_stored_ones(tmp_path):
    first = writer(tmp_path, 1000)
    for step in range(1, 31):
        first.scalars(step, {"loss": float(step), "lr": 0.1})
    first.close()
    tail = TBTail(tmp_path)
    assert tail.poll().count == 60
    # the chunk saved at step 20, died at 30; the next one resumes from 20 and re-logs 21.. (verl: no purge)
    second = writer(tmp_path, 2000)
    for step in range(21, 41):
        second.scalars(step, {"loss": 100.0 + step})
    second.close()
    r = tail.poll()
    assert r.replaced_from == {(ROOT_RUN, "loss"): 21}
    assert r.points("loss") == [(s, T0 + s, 100.0 + s) for s in range(21, 41)]
    assert values(tail, "loss") == [(s, float(s)) for s in range(1, 21)] + [
        (s, 100.0 + s) for s in range(21, 41)
    ]
    assert values(tail, "lr") == [(s, f32(0.1)) for s in range(1, 31)]  # another tag keeps its steps
    assert tail.files() == sorted(p.name for p in tmp_path.iterdir())
    # read cold, files in creation order (the stamp in the name), the same result
    cold = TBTail(tmp_path)
    r = cold.poll()
    assert r.files == ["events.out.tfevents.1000.testhost.0.0", "events.out.tfevents.2000.testhost.0.0"]
    assert r.replaced_from == {}  # nothing a consumer had seen was rewritten
    assert values(cold, "loss") == values(tail, "loss")


def test_truncated_tail_of_a_replaced_file_is_reported(tmp_path):
    first = writer(tmp_path, 1000)
    for step in range(1, 6):
        first.scalars(step, {"x": float(step)})
    first.close()
    path = only_file(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-7])  # the trainer died mid-record
    tail = TBTail(tmp_path)
    assert tail.poll().corrupt == []  # could still be a slow writer
    second = writer(tmp_path, 2000)
    second.scalars(5, {"x": 50.0})
    second.close()
    r = tail.poll()
    assert [(c.file, c.reason) for c in r.corrupt] == [(path.name, "truncated")]
    assert values(tail, "x") == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 50.0)]
    assert tail.poll().corrupt == []


# -- persistence ----------------------------------------------------------------------------------------------------


def test_state_round_trip_across_a_daemon_restart(tmp_path):
    w = writer(tmp_path, 1000)
    for step in range(1, 11):
        w.scalars(step, {"x": float(step), "y": 1.0})
    w.flush()
    tail = TBTail(tmp_path, tags=["x"])
    tail.poll()
    saved = json.loads(json.dumps(tail.state()))
    series = json.loads(json.dumps(tail.export_series()))
    for step in range(11, 14):
        w.scalars(step, {"x": float(step), "y": 1.0})
    w.close()
    for restored in (
        TBTail.from_state(tmp_path, saved, tags=["x"]),  # re-reads up to the saved offsets, silently
        TBTail.from_state(tmp_path, saved, tags=["x"], series=series),  # seeded
    ):
        assert restored.tags() == ["x"] and len(restored.series("x")) == 10
        r = restored.poll()
        assert r.points("x") == [(s, T0 + s, float(s)) for s in range(11, 14)]
        assert values(restored, "x") == [(s, float(s)) for s in range(1, 14)]
    # a state that does not fit (it lacks tag y) starts over: everything is new
    fresh = TBTail.from_state(tmp_path, saved, tags=["x", "y"])
    assert fresh.poll().new_counts == {(ROOT_RUN, "x"): 13, (ROOT_RUN, "y"): 13}
    assert TBTail.from_state(tmp_path, {"garbage": 1}).poll().count == 26


def test_replaced_file_is_read_again(tmp_path):
    w = writer(tmp_path, 1000)
    w.scalars(1, {"x": 1.0})
    w.close()
    tail = TBTail(tmp_path)
    tail.poll()
    saved = tail.state()
    path = only_file(tmp_path)
    path.unlink()
    w = writer(tmp_path, 1000, created=T0 + 5)  # same name, another file (the inode may be reused)
    w.scalars(1, {"x": 9.0})
    w.scalars(2, {"x": 10.0})
    w.close()
    r = tail.poll()
    assert r.reset == [path.name] and values(tail, "x") == [(1, 9.0), (2, 10.0)]
    restored = TBTail.from_state(tmp_path, saved)
    assert restored.poll().count == 2  # the saved cursor belongs to the old file: all of it is new


# -- what is read ----------------------------------------------------------------------------------------------------


def test_tags_filter_and_recursive_runs(tmp_path):
    root = writer(tmp_path, 1000)
    root.scalars(1, {"critic/score/mean": 0.5, "actor/entropy": 1.2, "perf/throughput": 9.0})
    root.close()
    mon = writer(tmp_path / "monitor", 1500)
    mon.scalars(1, {"gpu_temperature_c/n1/gpu0": 70.0, "critic/score/mean": -1.0})
    mon.close()
    flat = TBTail(tmp_path)
    flat.poll()
    assert flat.runs() == [ROOT_RUN]
    assert flat.tags() == ["actor/entropy", "critic/score/mean", "perf/throughput"]
    assert values(flat, "critic/score/mean") == [(1, 0.5)]  # the monitor's folder does not mix in
    some = TBTail(tmp_path, tags=["critic/score/mean", "missing/tag"])
    some.poll()
    assert some.tags() == ["critic/score/mean"] and some.series("missing/tag") == []
    deep = TBTail(tmp_path, recursive=True)
    r = deep.poll()
    assert deep.runs() == [ROOT_RUN, "monitor"]
    assert deep.tags("monitor") == ["critic/score/mean", "gpu_temperature_c/n1/gpu0"]
    assert values(deep, "critic/score/mean", "monitor") == [(1, -1.0)]
    assert values(deep, "critic/score/mean") == [(1, 0.5)]
    assert r.files == [only_file(tmp_path).name, f"monitor/{only_file(tmp_path / 'monitor').name}"]


def test_missing_then_empty_then_filled_folder(tmp_path):
    logdir = tmp_path / "tensorboard"
    tail = TBTail(logdir)
    r = tail.poll()
    assert r.files == [] and r.count == 0 and tail.tags() == [] and tail.latest("x") is None
    logdir.mkdir()
    (logdir / "README").write_text("not an event file")
    assert tail.poll().files == []
    w = writer(logdir, 1000)
    w.scalars(3, {"x": 1.5})
    w.close()
    assert tail.poll().points("x") == [(3, T0 + 3, 1.5)]
    assert tail.latest("x") == (3, T0 + 3, 1.5)


def test_crc32c_fallback_matches_google_crc32c():
    google_crc32c = pytest.importorskip("google_crc32c")
    rnd = random.Random(3)
    for size in (0, 1, 7, 8, 100, 1000):
        data = bytes(rnd.randrange(256) for _ in range(size))
        assert crc32c_py(data) == google_crc32c.value(data)


def test_without_fast_crc_data_crcs_can_still_be_checked(tmp_path):
    w = writer(tmp_path, 1000)
    for step in range(1, 6):
        w.scalars(step, {"x": float(step)})
    w.close()
    path = only_file(tmp_path)
    data = bytearray(path.read_bytes())
    offsets = record_offsets(bytes(data))
    data[offsets[3] + 20] ^= 0x01
    path.write_bytes(bytes(data))
    unchecked = TBTail(tmp_path, check_data_crc=False)
    unchecked.poll()
    assert len(unchecked.series("x")) == 5  # the flipped bit goes unnoticed: the documented trade-off
    checked = TBTail(tmp_path, check_data_crc=True)
    checked._data_crc = crc32c_py  # as on a machine without google-crc32c
    assert [c.offset for c in checked.poll().corrupt] == [offsets[3]]

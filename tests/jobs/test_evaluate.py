"""The evaluation job end to end on CPU: a rehearsal checkpoint (real FSDP-style rank shards written by the
rehearsal's own checkpoint code), the rehearsal's format-trained tiny model really generating with
transformers, real grading with verl's MATH grader and Math-Verify, real TensorBoard event files, and a real
subprocess killed mid-way and resumed.

Benchmarks are the rehearsal's toy task ("What is the largest of a, b and c?") written in the field names
the published copies use, so the tiny model answers in the graded format and about a third of its answers
are right: the grading is exercised both ways.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from justrl_hpc.core import config_files
from justrl_hpc.jobs.evaluate import benchmarks as bm
from justrl_hpc.jobs.evaluate.grade import grade
from justrl_hpc.jobs.evaluate.results import SampleLog, markdown, score
from justrl_hpc.launcher import launch

REPO = Path(__file__).resolve().parents[2]
STEP = 5
KILL_TIMEOUT_S = 120  # a hung child fails the test; not a speed check


# ---------------------------------------------------------------- fixtures


def _toy(i: int) -> tuple[str, str]:
    from justrl_hpc.dev.toy import task

    p = task.all_problems()[37 * i + 11]
    return p.question, p.answer


def write_benchmarks(folder: Path, per_bench: int = 2) -> Path:
    """One file per benchmark, each in a schema a published copy uses."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    for b_idx, bench in enumerate(bm.BENCHMARKS):
        items = [_toy(b_idx * per_bench + j) for j in range(per_bench)]
        kind = b_idx % 4
        if kind == 0:  # verl's RL parquet (what prepare-data writes): chat prompt + reward_model
            rows = [
                {
                    "data_source": bench.key,
                    "prompt": [{"role": "user", "content": q + bm.EVAL_SUFFIX}],
                    "reward_model": {"ground_truth": a, "style": "rule"},
                    "extra_info": {"index": j},
                }
                for j, (q, a) in enumerate(items)
            ]
            pq.write_table(pa.Table.from_pylist(rows), folder / f"{bench.key}.parquet")
        elif kind == 1:  # JSONL with problem/answer/unique_id (MATH-500, MathArena)
            text = "".join(
                json.dumps({"problem": q, "answer": a, "unique_id": f"u{j}"}) + "\n"
                for j, (q, a) in enumerate(items)
            )
            (folder / f"{bench.key}.jsonl").write_text(text)
        elif kind == 2:  # JSON list with question/final_answer list (OlympiadBench)
            rows = [{"question": q, "final_answer": [a], "id": 100 + j} for j, (q, a) in enumerate(items)]
            (folder / f"{bench.key}.json").write_text(json.dumps(rows))
        else:  # JustRL's own preprocessing input: prompt string + answer; or solution with a boxed answer
            rows = [{"prompt": q, "solution": f"So it is \\boxed{{{a}}}."} for q, a in items]
            (folder / f"{bench.key}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def make_run(
    root: Path, source_run: Path, recipe: str = "rehearsal", cluster: str = "dev", step: int = STEP
) -> Path:
    """A run folder (run.yaml via rundir.create) whose one checkpoint, at `step`, is the newest that verl
    wrote in the session's verl run (its files unchanged; only the step folder's number differs)."""
    import shutil

    from justrl_hpc.core import run_folder as rundir

    resolved = config_files.resolve(recipe, cluster, [f"run.run_dir={root}"], root.name)
    rundir.create(resolved, root)
    shutil.copytree(source_run / "checkpoints" / "global_step_2", root / "checkpoints" / f"global_step_{step}")
    (root / "checkpoints" / "latest_checkpointed_iteration.txt").write_text(str(step))
    return root


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_benchmarks(tmp_path_factory.mktemp("bench"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, verl_run: Path) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "eval-demo", verl_run)


def eval_args(run: Path, data: Path, *extra: str) -> list[str]:
    return [
        "--job",
        "evaluate",
        "--run",
        str(run),
        "--local",
        "--data",
        str(data),
        "--max-new-tokens",
        "12",
        *extra,
    ]


# ---------------------------------------------------------------- grading and loading


@pytest.mark.parametrize(
    ("response", "answer", "correct", "rule"),
    [
        ("The largest is 9, so \\boxed{9}", "9", True, "verl-math"),
        ("\\boxed{8}", "9", False, ""),
        ("the answer is 9", "9", False, ""),  # unboxed: rejected, the prompt asks for \boxed{}
        ("\\boxed{0.5}", "\\frac{1}{2}", True, "verl-math"),
        ("\\boxed{\\dfrac{3}{4}}", "0.75", True, "math-verify"),
        ("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt{2}}{2}", True, "math-verify"),
        ("first \\boxed{9} then \\boxed{7}", "9", False, ""),  # the last box counts
        ("\\boxed{}", "1", False, ""),
    ],
)
def test_grade_cases(response: str, answer: str, correct: bool, rule: str) -> None:
    g = grade(response, answer)
    assert (g.correct, g.rule) == (correct, rule)


def test_judge_hook_sees_the_question_and_only_rejections() -> None:
    seen: list[tuple[str, str, str]] = []

    def judge(question: str, response: str, answer: str) -> bool:
        seen.append((question, response, answer))
        return "nine" in response

    assert grade("\\boxed{9}", "9", "Q?", judge=judge).rule == "verl-math"
    assert grade("\\boxed{nine}", "9", "Q?", judge=judge).rule == "judge"
    assert seen == [("Q?", "\\boxed{nine}", "9")]


def test_benchmarks_load_every_schema(bench_dir: Path) -> None:
    for b_idx, bench in enumerate(bm.BENCHMARKS):
        problems = bm.load(bench_dir, bench)
        expected = [_toy(b_idx * 2 + j) for j in range(2)]
        assert [(p.question, p.answer) for p in problems] == expected, bench.key
        assert (
            problems[0]
            .prompt()
            .endswith(" Please reason step by step, and put your final answer within \\boxed{}.")
        )
        assert len({p.id for p in problems}) == 2
    assert [b.n for b in bm.BENCHMARKS] == [32, 32, 32, 4, 4, 4, 32, 32, 32]


def test_markdown_sits_beside_published_rows() -> None:
    from justrl_hpc.jobs.evaluate.results import SampleResult

    results = {
        (b, "0", k): SampleResult(b, "0", k, k, k == 0, "verl-math", "1", "1", 10 + k, False, "")
        for b in ("aime24", "math500")
        for k in range(2)
    }
    table = score(results, {"aime24": (["0"], 2), "math500": (["0"], 2)}, "step_7", 7, "m")
    assert [s.avg_at_n for s in table.scores] == [50.0, 50.0] and table.mean_tokens == 10.5
    text = markdown(table, "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B")
    assert "published: JustRL-DeepSeek-1.5B (step 4380) | 52.60 | 91.65 | 72.12" in text
    assert "Not the published protocol" in text


# ---------------------------------------------------------------- end to end


def test_end_to_end_on_a_rehearsal_checkpoint(
    run_dir: Path, bench_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rc = launch.main(eval_args(run_dir, bench_dir, "--step", str(STEP), "--samples-scale", "0.125"))
    out = capsys.readouterr().out
    assert rc == 0, out
    folder = run_dir / "eval" / f"step_{STEP}"
    samples = SampleLog(folder).read()
    # N: 32 × 0.125 = 4 for the AIME-like six, 4 × 0.125 → at least 1 for MATH-500/Minerva/Olympiad; 2 problems each
    assert len(samples) == 2 * (6 * 4 + 3 * 1)
    assert all(1 <= r.tokens <= 12 for r in samples.values())
    assert len({r.seed for r in samples.values()}) == len(samples)  # a distinct seed per sample
    # The format-trained model boxes one of the three numbers: some right, most wrong, all graded for real.
    n_right = sum(r.correct for r in samples.values())
    assert 0 < n_right < len(samples)
    assert all(r.correct == grade(r.tail, r.answer).correct for r in samples.values() if len(r.tail) < 300)
    summary = json.loads((folder / "summary.json").read_text())
    assert [s["benchmark"] for s in summary["scores"]] == [b.key for b in bm.BENCHMARKS]
    per_bench = {s["benchmark"]: s for s in summary["scores"]}
    for s in summary["scores"]:
        got = [r for r in samples.values() if r.benchmark == s["benchmark"]]
        assert s["samples"] == len(got)
        assert s["mean_tokens"] == pytest.approx(sum(r.tokens for r in got) / len(got))
    assert summary["average"] == pytest.approx(sum(s["avg_at_n"] for s in summary["scores"]) / 9)
    csv_lines = (folder / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("benchmark,n,") and len(csv_lines) == 11
    md = (folder / "results.md").read_text()
    assert md.startswith("| model | AIME24@4 |") and f"this run: step_{STEP}" in md
    assert "No published rows for base model" in md  # the rehearsal's base model is not in the paper
    assert md in out  # printed as well
    acc = EventAccumulator(str(run_dir / "tensorboard" / "eval"))
    acc.Reload()
    events = acc.Scalars("eval/average")
    assert [e.step for e in events] == [STEP] and events[0].value == pytest.approx(summary["average"])
    assert acc.Scalars("eval/aime24/avg@4")[0].value == pytest.approx(per_bench["aime24"]["avg_at_n"])


def test_killed_evaluation_resumes_without_redoing_samples(run_dir: Path, bench_dir: Path) -> None:
    from justrl_hpc.jobs.evaluate import job
    from justrl_hpc.jobs.evaluate.generate import make_generator
    from justrl_hpc.jobs.evaluate.model_source import resolve

    extra = [
        "--benchmarks",
        "aime24,amc23",
        "--samples",
        "aime24=30",
        "--samples",
        "amc23=30",
        "--batch-size",
        "3",
    ]
    extra += ["--step", str(STEP)]
    samples = run_dir / "eval" / f"step_{STEP}" / "samples.jsonl"
    before = SampleLog(samples.parent).read()
    cmd = [sys.executable, "-m", "justrl_hpc.launch", *eval_args(run_dir, bench_dir, *extra)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + KILL_TIMEOUT_S
    try:
        while len(SampleLog(samples.parent).read()) - len(before) < 6:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "no samples written in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    args = job.build_parser().parse_args(
        ["--run", str(run_dir), "--local", "--data", str(bench_dir), "--max-new-tokens", "12", *extra]
    )
    settings = job.settings_from_args(args, job.load_settings())
    plan = job.plan_requests(settings, job.load_problems(settings))
    plan_keys = {(r.benchmark, r.problem.id, r.sample) for r in plan}
    assert len(plan) == len(plan_keys) == 2 * 2 * 30
    done = SampleLog(samples.parent).read()
    # The end-to-end test already drew samples 0-3 of these problems: they count as done here too.
    done_in_plan = {k for k in done if k in plan_keys}
    assert len(done_in_plan) - len(set(before) & plan_keys) >= 6
    assert len(done_in_plan) < len(plan), "the child finished before it was killed: raise the sample count"

    generated: list[int] = []

    def counting(backend: str, path: str):  # the real generator, its calls counted
        gen = make_generator(backend, path)
        real = gen.generate

        def generate(messages, params, seeds):  # type: ignore[no-untyped-def]
            generated.append(len(messages))
            return real(messages, params, seeds)

        gen.generate = generate  # type: ignore[method-assign]
        return gen

    table = job.evaluate(settings, resolve(str(run_dir), STEP, None), generator_factory=counting)
    assert sum(generated) == len(plan) - len(done_in_plan)  # only what the killed run had not finished
    lines = [
        json.loads(line)
        for line in samples.read_text().splitlines()
        if line.strip().startswith("{") and line.strip().endswith("}")
    ]
    keys = [k for d in lines if (k := (d["benchmark"], d["problem"], d["sample"])) in plan_keys]
    assert len(keys) == len(set(keys)) == len(plan)  # every sample once, none redone
    assert {s.benchmark: s.samples for s in table.scores} == {"aime24": 60, "amc23": 60}
    # Each sample's seed derives from its key, whichever run generated it.
    final = SampleLog(samples.parent).read()
    assert [final[(r.benchmark, r.problem.id, r.sample)].seed for r in plan] == [
        job.sample_seed(0, r.benchmark, r.problem.id, r.sample) for r in plan
    ]


# ---------------------------------------------------------------- bad input


def _bad(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    rc = launch.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_inputs_write_nothing(
    tmp_path: Path, run_dir: Path, bench_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    eval_before = sorted(p.name for p in (run_dir / "eval").iterdir()) if (run_dir / "eval").exists() else []
    assert "--step" in _bad(eval_args(run_dir, bench_dir, "--step", "99"), capsys)
    assert "--run" in _bad(eval_args(tmp_path / "nope", bench_dir), capsys)
    assert "--model" in _bad(eval_args(run_dir, bench_dir, "--model", str(tmp_path)), capsys)
    assert "--data" in _bad(eval_args(run_dir, tmp_path / "no-data"), capsys)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "aime24.jsonl").write_text(json.dumps({"problem": "x", "answer": "1"}) + "\n")
    assert "amc23" in _bad(eval_args(run_dir, partial, "--benchmarks", "aime24,amc23"), capsys)
    (partial / "amc23.jsonl").write_text(json.dumps({"problem": "x"}) + "\n")
    assert "row 0 needs" in _bad(eval_args(run_dir, partial, "--benchmarks", "aime24,amc23"), capsys)
    assert "--benchmarks" in _bad(eval_args(run_dir, bench_dir, "--benchmarks", "aime24,gsm8k"), capsys)
    assert "--samples" in _bad(eval_args(run_dir, bench_dir, "--samples", "aime24=0"), capsys)
    assert "--samples-scale" in _bad(eval_args(run_dir, bench_dir, "--samples-scale", "-1"), capsys)
    assert "--backend" in _bad(eval_args(run_dir, bench_dir, "--backend", "tpu"), capsys)
    assert "--nodes" in _bad(eval_args(run_dir, bench_dir, "--nodes", "2"), capsys)
    # Samples already in step_5 were drawn with seed 0 and 12 tokens: a restart may not mix in others.
    assert "--seed" in _bad(eval_args(run_dir, bench_dir, "--step", str(STEP), "--seed", "7"), capsys)
    assert "--job evaluate" in _bad(["--run", str(run_dir), "--dry-run"], capsys)
    after = sorted(p.name for p in (run_dir / "eval").iterdir()) if (run_dir / "eval").exists() else []
    assert after == eval_before
    # A real subprocess: one line, no traceback.
    proc = subprocess.run(
        [sys.executable, "-m", "justrl_hpc.launch", *eval_args(run_dir, bench_dir, "--step", "99")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        proc.returncode == 2
        and proc.stderr.strip().count("\n") == 0
        and proc.stderr.startswith("error: --step")
    )


def test_verl_shards_need_an_export_first(
    tmp_path: Path, rehearsal_data: Path, bench_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A verl run's checkpoint holds only rank shards + config: the job says to export, and writes nothing."""
    run = tmp_path / "verl-run"
    from justrl_hpc.core import run_folder as rundir

    resolved = config_files.resolve("justrl-deepseek-1.5b", "a800-4x8", [f"run.run_dir={run}"], run.name)
    rundir.create(resolved, run)
    actor = run / "checkpoints" / "global_step_50" / "actor"
    (actor / "huggingface").mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (actor / "huggingface" / name).write_bytes((rehearsal_data / "model" / name).read_bytes())
    err = _bad(eval_args(run, bench_dir, "--step", "50"), capsys)
    assert "export it first" in err and "--job export" in err
    assert not (run / "eval").exists()
    # Evaluating the exported folder under that step's label is the way on.
    rc = launch.main(
        eval_args(
            run,
            bench_dir,
            "--step",
            "50",
            "--model",
            str(rehearsal_data / "model"),
            "--benchmarks",
            "aime24",
            "--samples",
            "aime24=2",
        )
    )
    out = capsys.readouterr().out
    assert rc == 0
    md = (run / "eval" / "step_50" / "results.md").read_text()
    assert "published: DeepSeek-R1-Distill-Qwen-1.5B | 29.90 |" in md and md in out
    # An export at the export job's default place (RUN/export/global_step_N/hf) is picked up for --step N.
    import shutil

    shutil.copytree(rehearsal_data / "model", run / "export" / "global_step_50" / "hf")
    rc = launch.main(
        eval_args(run, bench_dir, "--step", "50", "--benchmarks", "amc23", "--samples", "amc23=2")
    )
    assert rc == 0 and "export/global_step_50/hf" in capsys.readouterr().out
    summary = json.loads((run / "eval" / "step_50" / "summary.json").read_text())
    assert [s["benchmark"] for s in summary["scores"]] == ["amc23"]


def test_submission_is_one_node_with_the_checkout_on_the_path(run_dir: Path) -> None:
    """What submitit would submit (its own sbatch renderer); the submission itself is not run here."""
    from submitit.slurm.slurm import _make_sbatch_string

    from justrl_hpc.core import run_folder as rundir
    from justrl_hpc.jobs.evaluate import job
    from justrl_hpc.jobs.evaluate.model_source import resolve

    settings = job.EvalSettings(time_limit_min=30)
    source = resolve(str(run_dir), STEP, None)
    params = job.slurm_parameters(rundir.load(run_dir), source, settings)
    script = _make_sbatch_string(
        command="python -u -m submitit.core._submit x", folder=str(run_dir / "logs"), **params
    )
    assert "#SBATCH --nodes=1" in script and "#SBATCH --time=30" in script
    assert f"#SBATCH --job-name=justrl-eval-{run_dir.name}-step_{STEP}" in script
    assert f"export PYTHONPATH={REPO}" in script and "--exclusive" not in script
    assert "#SBATCH --requeue" in script  # a timeout requeues; the restart resumes from samples.jsonl


@pytest.mark.slurm
@pytest.mark.timeout(420)
def test_evaluate_job_submitted_to_the_dev_cluster(
    devcluster: object, verl_run: Path, bench_dir: Path, tmp_path: Path
) -> None:
    """`launch --job evaluate` without --local: submitit puts it on a dev-cluster node, which generates with
    the tiny model and grades; the table lands in the run folder."""
    from justrl_hpc.core import slurm

    run = make_run(tmp_path / "runs" / "eval-slurm", verl_run)
    argv = [sys.executable, "-m", "justrl_hpc.launch", "--job", "evaluate", "--run", str(run), "--step", str(STEP),
            "--data", str(bench_dir), "--benchmarks", "aime24,math500", "--samples-scale", "0.125",
            "--max-new-tokens", "12"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])))
    assert out.returncode == 0, out.stderr[-2000:]
    job_id = out.stdout.split("submitted evaluate job ")[1].split()[0]
    done = slurm.wait_for_state(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}, 360)
    assert done is not None and done.state == "COMPLETED", (done, list((run / "logs").rglob("*")))
    folder = run / "eval" / f"step_{STEP}"
    samples = SampleLog(folder).read()
    assert len(samples) == 2 * 4 + 2 * 1  # 2 problems each: AIME24 at 32 × 0.125, MATH-500 at 4 × 0.125 → 1
    md = (folder / "results.md").read_text()
    assert md.startswith("| model | AIME24@4 | MATH500@1 |") and f"this run: step_{STEP}" in md


@pytest.mark.parametrize(
    ("visible", "gpus", "want"),
    [
        (None, 8, ["0", "1", "2", "3", "4", "5", "6", "7"]),  # the whole node, nothing said
        ("", 2, ["0", "1"]),
        ("4,5,6,7", 4, ["4", "5", "6", "7"]),  # a job given half a shared node
        ("4,5,6,7", 2, ["4", "5"]),
        ("GPU-1a2b,GPU-3c4d", 2, ["GPU-1a2b", "GPU-3c4d"]),  # UUIDs, as some sites set them
    ],
)
def test_each_vllm_engine_gets_one_of_the_jobs_devices(visible: str | None, gpus: int, want: list[str]) -> None:
    from justrl_hpc.jobs.evaluate.generate import worker_devices

    assert worker_devices(visible, gpus) == want


def test_more_engines_than_the_jobs_devices_is_refused() -> None:
    from justrl_hpc.jobs.evaluate.generate import worker_devices

    with pytest.raises(ValueError, match="job sees only CUDA devices 4,5"):
        worker_devices("4,5", 4)

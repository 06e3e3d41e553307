"""The judge pass of the authors' grading: a verifier model asked about every response the rules reject.

What the authors' `evals/grade.py` (thunlp/JustRL) does, and so what this does by default:
- only responses the rule-based grader rejects are asked about;
- the judge is CompassVerifier-3B, its prompt holding the question, the gold answer and the whole response,
  wrapped in the judge's chat template, decoded greedily up to 2,048 new tokens;
- a judgement whose text, stripped, starts with "A" (CORRECT) counts as correct; anything else ("B"
  INCORRECT, "C" INVALID, an empty or cut-off answer) does not.
- The question they pass is empty: their records never hold the key their lookup reads. We pass an empty one
  too, so the figures are theirs; `--judge-question` passes the real question (then the figures are not).

The prompt is the judge's (open-compass/CompassVerifier `src/prompts.py`, copied into the authors' grade.py as
`CV_PROMPT`): it is read from a file the user has, never kept here. `justrl-hpc prepare-data --eval-from` takes
it from the authors' `evals/grade.py` into `<data>/judge_prompt.txt`; `--judge-prompt FILE` names another (a
text file, or a Python file whose `CV_PROMPT` is read without running it).

It runs after generation, on the same node and through the same generator backend: the policy's engines are
closed first, so on GPUs the 3B judge (~6 GiB of bf16 weights) gets one engine per GPU and the whole memory; its
prompts are long (a response of up to 31,744 tokens) but its answers are short, so the pass is prefill-bound.
Verdicts are appended to `judged.jsonl` as they finish, so a requeued job asks only what is left.
"""

from __future__ import annotations

import ast
import hashlib
import json
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from justrl_hpc.core.errors import UserError
from justrl_hpc.jobs.evaluate.generate import Generator, SamplingParams
from justrl_hpc.jobs.evaluate.results import Key, SampleResult, append_jsonl

DEFAULT_JUDGE = "opencompass/CompassVerifier-3B"
PROMPT_FILE = "judge_prompt.txt"  # in the evaluation data folder, written by prepare-data --eval-from
PROMPT_VARIABLE = "CV_PROMPT"  # its name in the authors' evals/grade.py
PLACEHOLDERS = ("question", "gold_answer", "llm_response")
JUDGED = "judged.jsonl"
# The authors': greedy, up to 2,048 new tokens.
SAMPLING = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=2048)


@dataclass(frozen=True)
class JudgeSpec:
    model: str  # as named (a hub id or a folder)
    path: Path  # the local folder loaded
    prompt: str
    prompt_source: str
    real_question: bool = False

    @property
    def prompt_sha256(self) -> str:
        return hashlib.sha256(self.prompt.encode()).hexdigest()

    def record(self, asked: int, accepted: int) -> dict[str, Any]:
        return {
            "model": self.model,
            "path": str(self.path),
            "prompt": self.prompt_source,
            "prompt_sha256": self.prompt_sha256,
            "question": "real" if self.real_question else "empty (as the authors' grade.py)",
            "decision": 'a judgement starting with "A" is correct',
            "asked": asked,
            "accepted": accepted,
        }


def accepted(judgement: str) -> bool:
    """The authors' decision rule."""
    return judgement.strip().startswith("A")


def _check_template(text: str, where: str, field: str) -> str:
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as exc:
        raise UserError(f"{where} is not a format template ({exc})", field) from None
    missing = [p for p in PLACEHOLDERS if p not in names]
    if missing or names - set(PLACEHOLDERS):
        raise UserError(
            f"{where} must hold the placeholders {{question}}, {{gold_answer}} and {{llm_response}} and no "
            f"other (missing {', '.join(missing) or 'none'}; other {', '.join(sorted(names - set(PLACEHOLDERS))) or 'none'})",
            field,
        )
    return text


def prompt_from_python(source: str, where: str, field: str) -> str:
    """The string assigned to CV_PROMPT at module level, read from the syntax tree (the file is not run)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise UserError(f"{where} is not Python ({exc.msg}, line {exc.lineno})", field) from None
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == PROMPT_VARIABLE for t in node.targets)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return _check_template(node.value.value, where, field)
    raise UserError(f"{where} assigns no string to {PROMPT_VARIABLE}", field)


def read_prompt(path: Path, field: str = "--judge-prompt") -> str:
    if not path.is_file():
        raise UserError(f"no such file {path}", field)
    text = path.read_text()
    if path.suffix == ".py":
        return prompt_from_python(text, str(path), field)
    return _check_template(text, str(path), field)


def model_folder(name: str) -> Path:
    """A local folder or a hub id in this machine's cache (model_source.hf_folder), whose config and tokenizer
    load: a judge that cannot be used is said here, before any generation."""
    from justrl_hpc.jobs.evaluate.model_source import hf_folder

    return _loadable(hf_folder(name, "--judge"), name)


def _loadable(folder: Path, name: str) -> Path:
    """Its config and tokenizer read as the generator will read them (the weights load later, on the node)."""
    try:
        from transformers import AutoConfig, AutoTokenizer

        AutoConfig.from_pretrained(folder)
        AutoTokenizer.from_pretrained(folder)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"the judge {name} does not load ({first})", "--judge") from None
    return folder


def resolve(judge: str, prompt_file: str, data_dir: str, real_question: bool,
            folder: str | None = None) -> JudgeSpec | None:
    """The judge to use, or None for rule-only grading; every problem is one error before anything runs.
    `folder`: the judge's folder as the login node resolved it (a submitted job loads that one)."""
    if judge.strip().lower() == "none":
        return None
    path = Path(prompt_file) if prompt_file else Path(data_dir) / PROMPT_FILE
    if not path.is_file():
        raise UserError(
            f"no judge prompt at {path}: run justrl-hpc prepare-data --eval-from <a thunlp/JustRL checkout> (it "
            f"takes {PROMPT_VARIABLE} from evals/grade.py), or give --judge-prompt FILE, or --judge none",
            "--judge-prompt",
        )
    prompt = read_prompt(path)
    return JudgeSpec(judge, model_folder(folder or judge), prompt, str(path.resolve()), real_question)


def message(spec: JudgeSpec, question: str, answer: str, response: str) -> str:
    return spec.prompt.format(
        question=question if spec.real_question else "", gold_answer=answer, llm_response=response
    )


class JudgeLog:
    """judged.jsonl: one line per asked response, appended and flushed per batch (a torn line is ignored)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / JUDGED

    def read(self) -> dict[Key, dict[str, Any]]:
        out: dict[Key, dict[str, Any]] = {}
        if not self.path.is_file():
            return out
        with open(self.path) as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                    key = (row["benchmark"], row["problem"], int(row["sample"]))
                except (ValueError, KeyError, TypeError):
                    continue
                out.setdefault(key, row)
        return out

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        append_jsonl(self.path, rows)


def to_ask(samples: dict[Key, SampleResult], judged: dict[Key, dict[str, Any]]) -> list[SampleResult]:
    """The rule-rejected samples not yet judged, in a stable order."""
    return [r for k, r in sorted(samples.items()) if not r.correct and k not in judged]


def unaskable(samples: dict[Key, SampleResult], judged: dict[Key, dict[str, Any]]) -> list[SampleResult]:
    """Rejected samples whose full response was not kept (graded rule-only before): the judge cannot see them."""
    return [r for r in to_ask(samples, judged) if r.text is None]


def run(
    spec: JudgeSpec,
    samples: dict[Key, SampleResult],
    questions: dict[tuple[str, str], str],
    folder: Path,
    make: Callable[[str, str], Generator],
    backend: str,
    batch_size: int,
    log: Callable[[str], None],
) -> None:
    """Ask the judge about every rejected sample not yet in judged.jsonl."""
    judge_log = JudgeLog(folder)
    todo = to_ask(samples, judge_log.read())
    if not todo:
        return
    gen = make(backend, str(spec.path))
    try:
        for lo in range(0, len(todo), batch_size):
            batch = todo[lo : lo + batch_size]
            msgs = [message(spec, questions.get((r.benchmark, r.problem), ""), r.answer, r.text or "") for r in batch]
            outs = gen.generate(msgs, SAMPLING, [0] * len(batch))  # greedy: the seed is not used
            judge_log.append(
                {"benchmark": r.benchmark, "problem": r.problem, "sample": r.sample,
                 "judgement": g.text[:200], "accepted": accepted(g.text)}
                for r, g in zip(batch, outs, strict=True)
            )
            log(f"judge batch model={spec.model} generator={gen.name} asked={len(batch)} "
                f"done={lo + len(batch)}/{len(todo)}")
    finally:
        gen.close()


def apply(samples: dict[Key, SampleResult], judged: dict[Key, dict[str, Any]]) -> dict[Key, SampleResult]:
    """The samples with the judge's acceptances applied (rule "judge"); the rules' verdicts otherwise."""
    out = dict(samples)
    for key, row in judged.items():
        r = out.get(key)
        if r is not None and not r.correct and row.get("accepted") is True:
            out[key] = replace(r, correct=True, rule="judge")
    return out


def counts(samples: dict[Key, SampleResult], judged: dict[Key, dict[str, Any]]) -> tuple[int, int]:
    """(asked, accepted) over the samples of this plan."""
    asked = [judged[k] for k, r in samples.items() if not r.correct and k in judged]
    return len(asked), sum(1 for row in asked if row.get("accepted") is True)

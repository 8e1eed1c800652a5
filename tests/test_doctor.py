"""srft doctor: each check on the shipped built-in base model or a tiny model, and the command line."""

from __future__ import annotations

import json
import textwrap

import pytest

from srft import doctor
from srft.cli import main
from srft.config import load_config
from srft.doctor import (
    OK,
    PROBLEM,
    WARN,
    Options,
    check_demonstrations,
    check_keys,
    check_presets,
    check_prompts,
    check_sampling,
    check_verifier,
    prepare,
)
from srft.scoring import Score
from srft.tasks.addition import AdditionTask, score_final_answer
from srft.tasks.base import answer_response
from srft.tasks.files import FileTask

SMALL = ["data.train_size=200"]


@pytest.fixture
def cache(base_cache_dir):
    """model.base_cache_dir of the session: the shipped base model is installed there (no build)."""
    return f"model.base_cache_dir={base_cache_dir}"


def _ctx(overrides, preset="srft", **options):
    return prepare(load_config(preset, None, overrides), Options(**options), progress=False)


def _levels(findings, level):
    return [f.message for f in findings if f.level == level]


def _chat_model(tmp_path, template):
    """The tiny Llama with a chat template of our own (the character tokenizer encodes any ASCII)."""
    from transformers import AutoTokenizer

    from conftest import write_tiny_llama

    path = write_tiny_llama(tmp_path / "chat_model")
    tok = AutoTokenizer.from_pretrained(str(path))
    tok.chat_template = template
    tok.save_pretrained(str(path))
    return path


TURNS = "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
GEN_PROMPT = "{% if add_generation_prompt %}<assistant>{% endif %}"


# --------------------------------------------------------------------------- the whole command


def test_default_config_passes(cache, capsys):
    assert main(["doctor", cache]) == 0
    out, err = capsys.readouterr()
    for check in ("[prompts]", "[sampling]", "[demonstrations]", "[verifier]", "[presets]"):
        assert check in out
    assert "summary: 0 problem(s)" in out and "problem:" not in err
    assert 'prompt 1 (' in out and "all score 1" in out
    assert "objective.sft_weight = exp" in out  # the srft preset's paper/script difference, as information


def test_zero_reward_everywhere_exits_1_with_the_reason(cache, capsys, monkeypatch):
    # a verifier that never finds its format in what the model writes (as a wrong template or
    # system prompt would make it)
    monkeypatch.setattr(AdditionTask, "verify", lambda self, c, a: Score(0.0, None, False, False, {"reason": "no_answer"}))
    assert main(["doctor", cache, *SMALL, "--only", "sampling,verifier"]) == 1
    out, err = capsys.readouterr()
    assert "mean reward 0.000, expected format 0%" in out
    reasons = [line for line in err.splitlines() if line.startswith("problem: ")]
    assert any(line.startswith("problem: sampling: every reward is 0 and no response has the expected format: check "
                               "the chat template / system prompt / data.template") for line in reasons), err
    assert any(line.startswith("problem: verifier: 200 of 200 gold answers (100%) do not score 1") for line in reasons)
    assert "Traceback" not in err


def test_plugin_task_whose_verifier_rejects_its_gold_answers(tmp_path, tiny_model_dir, capsys):
    plugin = tmp_path / "bad_task.py"
    plugin.write_text(textwrap.dedent("""
        from srft.tasks.addition import AdditionTask, score_final_answer

        class OffByOne(AdditionTask):
            name = "off-by-one"

            def verify(self, completion, answer):
                return score_final_answer(completion, str(int(answer) + 1))
    """))
    rc = main(["doctor", f"data.task={plugin}:OffByOne", f"model.path={tiny_model_dir}", *SMALL,
               "--only", "verifier", "--gold", "50"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "problem: verifier: 50 of 50 gold answers (100%) do not score 1 when stated as the task expects" in err
    assert "-> extracted" in err  # examples of the failures
    assert "50 of 50 demonstrations (100%) do not score 1" in out


def test_bad_input_gives_train_s_one_line_errors(capsys, tmp_path):
    assert main(["doctor", f"model.path={tmp_path}/nowhere"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"error: model.path '{tmp_path}/nowhere' does not exist; give a local Hugging "
                                        f"Face model directory, or model.path=null for the built-in base model"]
    assert main(["doctor", "run.stepz=3"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "unknown key 'run.stepz'" in err and "'steps'" in err
    assert main(["doctor", "--only", "prompt"]) == 2
    assert "unknown check(s) prompt" in capsys.readouterr().err
    assert main(["doctor", "--samples", "0"]) == 2
    assert "doctor --samples must be > 0" in capsys.readouterr().err


# --------------------------------------------------------------------------- 1. prompts


def test_prompts_are_shown_as_encoded(cache):
    ctx = _ctx([cache, *SMALL])
    findings = check_prompts(ctx)
    assert not _levels(findings, PROBLEM) and not _levels(findings, WARN)
    shown = [m for m in _levels(findings, OK) if m.startswith("prompt ")]
    assert len(shown) == 3
    first = ctx.examples[0]
    assert shown[0] == f'prompt 1 ({len(first.prompt_ids)} tokens, as encoded): "{first.prompt}"'
    assert "EOS '<eos>' (id 2), pad '<pad>' (id 0)" in _levels(findings, OK)


def test_chat_template_without_generation_prompt_is_a_problem(tmp_path):
    path = _chat_model(tmp_path, TURNS)
    findings = check_prompts(_ctx([f"model.path={path}", "data.template=chat", *SMALL]))
    problems = _levels(findings, PROBLEM)
    assert len(problems) == 1 and problems[0].startswith("the chat template adds no generation prompt")
    # special tokens are decoded, not skipped
    assert any(m.startswith('prompt 1 (') and '"<bos><user>' in m for m in _levels(findings, OK))


def test_chat_template_with_generation_prompt_and_end_of_turn(tmp_path):
    path = _chat_model(tmp_path, TURNS + GEN_PROMPT)
    ctx = _ctx([f"model.path={path}", "data.template=chat", *SMALL], prompts=1)
    findings = check_prompts(ctx)
    assert not _levels(findings, PROBLEM)
    assert "chat template (data.template=chat), generation prompt '<assistant>'" in _levels(findings, OK)
    shown = [m for m in _levels(findings, OK) if m.startswith("prompt ")]
    assert len(shown) == 1 and shown[0].endswith(f'"<bos><user>{ctx.examples[0].prompt}\\n<assistant>"')
    # an assistant turn of this template ends with a newline, not with EOS: rollouts would not stop
    assert any(m.startswith("the chat template ends an assistant turn with '\\n', but EOS is '<eos>'")
               for m in _levels(findings, WARN))
    # auto: string prompts skip the template, which a chat model should not
    findings = check_prompts(_ctx([f"model.path={path}", *SMALL], prompts=1))
    assert any(m.startswith("the tokenizer has a chat template but the prompts are plain strings")
               for m in _levels(findings, WARN))


def test_template_chat_without_a_chat_template_and_special_ids(cache):
    findings = check_prompts(_ctx([cache, "data.template=chat", *SMALL]))
    assert _levels(findings, PROBLEM) == ["the prompts cannot be encoded: data.template=chat but the tokenizer has no "
                                          "chat template; use plain or auto"]
    ctx = _ctx([cache, *SMALL])
    ctx.model.generation_config.eos_token_id = 5
    ctx.tokenizer.pad_token = ctx.tokenizer.eos_token
    findings = check_prompts(ctx)
    assert any("pad = EOS is fine here" in m for m in _levels(findings, OK))
    assert any(m.startswith("the model's generation_config stops at") for m in _levels(findings, WARN))


def test_prompts_longer_than_the_context_window(cache):
    # the reasoning system prompt, joined as plain text, is longer than the built-in model's window
    findings = check_prompts(_ctx([cache, "data.template=reasoning", *SMALL], prompts=1))
    problems = _levels(findings, PROBLEM)
    assert len(problems) == 1 and "more than the model's context window of 256" in problems[0]
    assert '"max_position_embeddings": 16384' in problems[0]  # the config edit a 4k-context model needs


def test_gpqa_questions_are_never_printed(tmp_path, tiny_model_dir):
    question = "Which of the following secret molecules is chiral under the stated conditions?"
    rows = [{"prompt": [{"role": "user", "content": f"{question} ({i})"}], "answer": "C",
             "demonstration": "I am not sure. Answer: Q", "data_source": "gpqa_diamond"} for i in range(4)]
    train = tmp_path / "gpqa.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ctx = _ctx([f"model.path={tiny_model_dir}", "data.task=file", f"data.train_file={train}",
                "data.max_prompt_tokens=200", "data.verifier_workers=1"])
    try:
        findings = check_prompts(ctx) + check_verifier(ctx)
    finally:
        ctx.task.close()
    text = "\n".join(f.message for f in findings)
    assert "secret molecules" not in text and "<question text hidden" in text
    assert "4 of 4 demonstrations (100%) do not score 1" in text


# --------------------------------------------------------------------------- 2. sampling


def test_sampling_reports_rates(cache):
    findings = check_sampling(_ctx([cache, *SMALL], samples=4, k=2))
    assert not _levels(findings, PROBLEM)
    assert _levels(findings, OK)[0].startswith("4 prompts x 2 rollouts (HF engine) at temperature 1, up to 96 tokens")


def test_sampling_warns_on_truncation_and_equal_groups(cache, monkeypatch):
    findings = check_sampling(_ctx([cache, *SMALL, "data.max_response_tokens=8", "data.too_long=truncate"],
                                   samples=4, k=2))
    warns = _levels(findings, WARN)
    assert any(m.startswith("100% of the responses hit data.max_response_tokens=8 without EOS '<eos>': raise "
                            "data.max_response_tokens") for m in warns), warns
    monkeypatch.setattr(AdditionTask, "verify", lambda self, c, a: Score(1.0, a, True, True))
    findings = check_sampling(_ctx([cache, *SMALL], samples=4, k=2))
    assert not _levels(findings, PROBLEM)
    assert any(m.startswith("100% of the groups have all 2 rollouts with the same reward") and "too easy" in m
               for m in _levels(findings, WARN))


# --------------------------------------------------------------------------- 3. demonstrations


def test_overlong_demonstrations_are_flagged(cache):
    # the built-in task's demonstrations are 27-48 tokens with EOS
    findings = check_demonstrations(_ctx([cache, *SMALL, "data.max_response_tokens=40"]))
    problems = _levels(findings, PROBLEM)
    assert len(problems) == 1 and "of 200 demonstrations" in problems[0]
    assert "are longer than data.max_response_tokens=40 and their rows are dropped: raise " \
           "data.max_response_tokens to at least 48 (the 95th percentile), or set data.too_long=truncate" in problems[0]
    assert any(m.startswith("200 demonstrations: length min 27, median") for m in _levels(findings, OK))

    findings = check_demonstrations(_ctx([cache, *SMALL, "data.max_response_tokens=40", "data.too_long=truncate"]))
    assert not _levels(findings, PROBLEM)
    assert any("are cut to 40 tokens (data.too_long=truncate)" in m for m in _levels(findings, WARN))

    # nothing left at all: srft train would stop; the doctor says why and goes on
    ctx = _ctx([cache, *SMALL, "data.max_response_tokens=20"])
    assert ctx.data_error and ctx.examples
    problems = _levels(check_demonstrations(ctx), PROBLEM)
    assert problems == [ctx.data_error] and "no rows left after filtering 200 rows" in problems[0]
    assert _levels(check_prompts(ctx), OK)  # the other checks still look at the rows


def test_data_without_demonstrations(tmp_path, tiny_model_dir):
    train = tmp_path / "no_demos.jsonl"
    train.write_text("".join(json.dumps({"prompt": f"{a}+7=", "answer": str(a + 7)}) + "\n" for a in range(10, 30)))
    for preset, level in (("srft", PROBLEM), ("grpo", OK)):
        ctx = _ctx([f"model.path={tiny_model_dir}", "data.task=file", f"data.train_file={train}",
                    "data.verifier_workers=1"], preset=preset)
        try:
            findings = check_demonstrations(ctx)
        finally:
            ctx.task.close()
        assert [f.level for f in findings][0] == level and "no training row has a demonstration" in findings[0].message
        assert not any(f.level == PROBLEM for f in findings[1:])


def test_grpo_does_not_need_demonstrations(cache):
    findings = check_demonstrations(_ctx([cache, *SMALL, "data.max_response_tokens=40"], preset="grpo"))
    assert any("method 'grpo' does not train on them" in m for m in _levels(findings, OK))


# --------------------------------------------------------------------------- 4. verifier


def test_builtin_tasks_state_their_answers_in_their_own_format():
    from srft.tasks import get_task

    for name in ("addition", "expression"):
        task = get_task(name)
        for row in task.generate("train", 20, 0):
            assert task.verify(answer_response(task, row["answer"]), row["answer"]).reward == 1
    assert score_final_answer(answer_response(AdditionTask(), "12"), "12").reward == 1
    from srft.rewards.math import score_choice, score_math

    assert score_math(FileTask.answer_response("\\frac{1}{2}"), "\\frac{1}{2}").reward == 1
    assert score_choice(FileTask.answer_response("B"), "B").reward == 1
    assert answer_response(object(), "1") is None


def test_verifier_on_the_data_s_answers(cache, monkeypatch):
    findings = check_verifier(_ctx([cache, *SMALL]))
    assert [f.level for f in findings] == [OK, OK]
    assert findings[0].message.startswith('200 gold answers, stated as "#### ') and \
        findings[0].message.endswith('": all score 1')
    assert findings[1].message == "200 demonstrations: all score 1"
    # a verifier that rejects the answers ending in 7 (about a tenth): a problem for the gold
    # answers (over 5%), a warning for the demonstrations (up to 20%)
    real = AdditionTask.verify
    monkeypatch.setattr(AdditionTask, "verify",
                        lambda self, c, a: Score(0.0, a, True, False) if a.endswith("7") else real(self, c, a))
    findings = check_verifier(_ctx([cache, *SMALL]))
    assert [f.level for f in findings] == [PROBLEM, WARN]
    assert "gold answers" in findings[0].message and "answer '" in findings[0].message
    assert "demonstrations" in findings[1].message


def test_task_without_answer_response_is_skipped(tmp_path, tiny_model_dir):
    plugin = tmp_path / "plain_task.py"
    plugin.write_text(textwrap.dedent("""
        from srft.tasks.addition import AdditionTask, score_final_answer

        class Plain:
            name = "plain"

            def generate(self, split, n, seed):
                return AdditionTask().generate(split, n, seed)

            def verify(self, completion, answer):
                return score_final_answer(completion, answer)
    """))
    findings = check_verifier(_ctx([f"data.task={plugin}:Plain", f"model.path={tiny_model_dir}", *SMALL]))
    assert any(m.startswith("skipped the gold answers: task 'plain' has no answer_response(answer) method")
               for m in _levels(findings, WARN))


# --------------------------------------------------------------------------- 5. presets


def test_preset_notes(cache):
    from srft.config import Config, list_presets

    for method, notes in doctor.PRESET_NOTES.items():
        assert method in list_presets()
        for key, *_ in notes:
            if not key.startswith("["):
                section, _, name = key.partition(".")
                assert hasattr(getattr(Config(), section), name), key
    ctx = _ctx([cache, *SMALL, "objective.sft_weight=constant"])
    findings = check_presets(ctx)
    assert all(f.level == WARN for f in findings)
    assert findings[0].message.startswith("objective.sft_weight = constant (the preset has exp): paper w_SFT = "
                                          "0.5*sg(exp(-H)); reference scripts exp(+H)")
    ctx.cfg.run.method = "my-method"
    assert [f.level for f in check_presets(ctx)] == [OK]


# --------------------------------------------------------------------------- 6. keys


def test_keys_warns_about_a_key_that_nothing_reads():
    from srft.doctor import Context

    ctx = Context(load_config("srft", None, ["objective.clip_eps_high=0.28"]), Options())
    assert [(f.check, f.level) for f in check_keys(ctx)] == [("keys", WARN)]
    assert check_keys(ctx)[0].message.startswith("objective.clip_eps_high=0.28 is set but nothing reads it here: "
                                                 "it feeds the grpo term, which is off (objective.self_rollout=srft)")
    ctx.cfg = load_config("dapo")
    assert [f.level for f in check_keys(ctx)] == [OK]


def test_keys_alone_loads_no_model(capsys, monkeypatch):
    """--only keys,presets reads the config alone: prepare (model and data) is not called."""
    def no_prepare(*a, **k):
        raise AssertionError("prepare was called")

    monkeypatch.setattr(doctor, "prepare", no_prepare)
    assert main(["doctor", "--preset", "sft", "--only", "keys", "objective.clip_eps=0.3"]) == 0
    out = capsys.readouterr().out
    assert "[keys]" in out and "objective.clip_eps=0.3 is set but nothing reads it here" in out
    assert "summary: 0 problem(s), 1 warning(s) in 1 checks" in out

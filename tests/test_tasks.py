import textwrap

import pytest

from srft.tasks import DEFAULT_TASK, TASKS, TaskError, get_task
from srft.tasks.addition import AdditionTask, score_final_answer
from srft.tasks.base import SPLITS, Score, Task
from srft.tasks.expression import ExpressionTask

BUILTIN = sorted(TASKS)


def test_registry_contents():
    assert DEFAULT_TASK in TASKS
    assert {"addition", "expression"} <= set(TASKS)
    for name in BUILTIN:
        task = get_task(name)
        assert task.name == name
        assert isinstance(task, Task)


@pytest.mark.parametrize("name", BUILTIN)
@pytest.mark.parametrize("split", SPLITS)
def test_generate_is_deterministic(name, split):
    task = get_task(name)
    a = task.generate(split, 50, seed=3)
    b = get_task(name).generate(split, 50, seed=3)
    assert a == b
    assert len(a) == 50
    assert a != task.generate(split, 50, seed=4)
    for row in a:
        assert set(row) >= {"prompt", "answer", "demonstration"}
        assert all(isinstance(row[k], str) and row[k] for k in ("prompt", "answer", "demonstration"))
    # distinct problems within a call
    assert len({r["prompt"] for r in a}) == len(a)


@pytest.mark.parametrize("name", BUILTIN)
def test_splits_are_disjoint(name):
    task = get_task(name)
    train = {r["prompt"] for seed in range(3) for r in task.generate("train", 1000, seed)}
    test_id = {r["prompt"] for seed in range(3) for r in task.generate("test_id", 300, seed)}
    test_ood = {r["prompt"] for r in task.generate("test_ood", 300, 0)}
    assert not train & test_id
    assert not train & test_ood


@pytest.mark.parametrize("name", BUILTIN)
def test_pretraining_text_avoids_heldout_problems(name):
    task = get_task(name)
    held = {r["prompt"] for r in task.generate("test_id", 300, 0)}
    docs = task.pretraining_documents(2000, seed=0)
    assert len(docs) == 2000
    prompts = {d.replace(" ", "").split("=")[0] + "=" for d in docs}
    assert len(prompts) > 500
    assert not prompts & held


@pytest.mark.parametrize("name", BUILTIN)
@pytest.mark.parametrize("split", SPLITS)
def test_expert_demonstrations_verify(name, split):
    task = get_task(name)
    for row in task.generate(split, 400, seed=11):
        s = task.verify(row["demonstration"], row["answer"])
        assert s == Score(1.0, row["answer"], True, True, {"reason": "ok"}), (row, s)
        assert len(row["demonstration"]) < 100


def test_ood_is_a_shift():
    add = AdditionTask()
    assert all(len(r["prompt"].split("+")[0]) == 4 for r in add.generate("test_ood", 50, 0))
    assert all(max(len(x) for x in r["prompt"][:-1].split("+")) <= 3 for r in add.generate("train", 200, 0))
    ex = ExpressionTask()
    n_ops = lambda p: sum(p.count(o) for o in "+-*")  # noqa: E731
    assert min(n_ops(r["prompt"]) for r in ex.generate("test_ood", 100, 0)) >= 4
    assert max(n_ops(r["prompt"]) for r in ex.generate("train", 200, 0)) <= 3


def test_addition_solution_format():
    task = AdditionTask()
    assert task.solve(347, 285) == "7+5=12 >2 4+8+1=13 >32 3+2+1=6 >632 #### 632"
    assert task.solve(347, 285, style="terse") == "7+5=12 4+8+1=13 3+2+1=6 #### 632"
    assert task.solve(95, 7) == "5+7=12 >2 9+0+1=10 >102 #### 102"


def test_expression_solution_format():
    task = ExpressionTask()
    assert task.solve([3, "+", 4, "*", 2, "-", 5]) == "3+8-5=11-5=6 #### 6"
    assert task.solve(["(", 3, "+", 4, ")", "*", 2, "-", 5]) == "7*2-5=14-5=9 #### 9"
    assert task.solve(["(", 2, "*", 3, "+", 1, ")", "*", 2]) == "(6+1)*2=7*2=14 #### 14"


@pytest.mark.parametrize(
    "completion,extracted,format_ok,correct,reason",
    [
        ("7+5=12 #### 632", "632", True, True, "ok"),
        ("#### 632\n", "632", True, True, "ok"),
        ("stuff #### 0632", "0632", True, True, "ok"),
        ("7+5=12 #### 631", "631", True, False, "wrong_answer"),
        ("the answer is 632", None, False, False, "no_answer"),
        ("", None, False, False, "no_answer"),
        ("#### 632 and more", "632", False, True, "answer_not_at_end"),
        ("#### 1 #### 632", "632", True, True, "ok"),
        ("#### 632 #### 1", "1", True, False, "wrong_answer"),
        ("####", None, False, False, "no_answer"),
    ],
)
def test_verify_parts(completion, extracted, format_ok, correct, reason):
    s = AdditionTask().verify(completion, "632")
    assert s.extracted == extracted
    assert s.format_ok is format_ok
    assert s.correct is correct
    assert s.reward == (1.0 if format_ok and correct else 0.0)
    assert s.info["reason"] == reason
    assert score_final_answer(completion, "632") == s


def test_verify_none_completion():
    assert ExpressionTask().verify(None, "3").reward == 0.0


def test_bad_split():
    with pytest.raises(ValueError, match="unknown split"):
        AdditionTask().generate("validation", 3, 0)


def test_task_kwargs():
    task = get_task("addition", digits=(1, 1), ood_digits=(2, 2))
    assert all(len(r["prompt"]) == 4 for r in task.generate("train", 20, 0))
    # a space too small for the requested number of distinct problems
    with pytest.raises(ValueError, match="distinct"):
        task.generate("test_id", 200, 0)


# --------------------------------------------------------------------------- registry errors
def test_unknown_name_lists_valid_names():
    with pytest.raises(TaskError, match="unknown task 'additon'.*addition.*expression"):
        get_task("additon")
    assert issubclass(TaskError, ValueError)


def test_module_spec():
    task = get_task("srft.tasks.addition:AdditionTask", digits=(1, 2))
    assert isinstance(task, AdditionTask) and task.digits == (1, 2)


def test_module_spec_errors():
    with pytest.raises(TaskError, match="'srft.tasks.nope' failed to import: ModuleNotFoundError"):
        get_task("srft.tasks.nope:X")
    with pytest.raises(TaskError, match="has no attribute 'Nope'"):
        get_task("srft.tasks.addition:Nope")
    with pytest.raises(TaskError, match="could not construct .*is_heldout.*TypeError"):
        get_task("srft.tasks.addition:is_heldout")  # a function, called with no args
    with pytest.raises(TaskError, match="not a task: missing method.*generate, verify"):
        get_task("srft.tasks.addition:ANSWER_RE")
    with pytest.raises(TaskError, match="missing method.*generate, verify"):
        get_task("srft.tasks.base:SPLITS")


PLUGIN = '''
from srft.tasks.base import Score

class Echo:
    name = "echo"
    def __init__(self, k=1):
        self.k = k
    def generate(self, split, n, seed):
        return [{"prompt": f"{i}:", "answer": str(i * self.k), "demonstration": f"#### {i * self.k}"} for i in range(n)]
    def verify(self, completion, answer):
        ok = completion.strip() == f"#### {answer}"
        return Score(float(ok), answer if ok else None, ok, ok)

class NoVerify:
    def generate(self, split, n, seed):
        return []

echo_instance = Echo(3)
'''


def test_file_spec(tmp_path):
    f = tmp_path / "my_task.py"
    f.write_text(PLUGIN)
    task = get_task(f"{f}:Echo", k=2)
    assert task.name == "echo"
    assert task.generate("train", 2, 0)[1]["answer"] == "2"
    assert task.verify("#### 2", "2").reward == 1.0
    assert get_task(f"{f}:echo_instance").k == 3
    with pytest.raises(TaskError, match="instance, it cannot take arguments"):
        get_task(f"{f}:echo_instance", k=1)
    with pytest.raises(TaskError, match="not a task: missing method.*verify"):
        get_task(f"{f}:NoVerify")
    with pytest.raises(TaskError, match="could not construct.*TypeError"):
        get_task(f"{f}:Echo", nope=1)


def test_file_spec_errors(tmp_path):
    with pytest.raises(TaskError, match="file not found"):
        get_task(f"{tmp_path}/missing.py:Task")
    bad = tmp_path / "bad_task.py"
    bad.write_text(textwrap.dedent("""
        import definitely_not_a_module_xyz
    """))
    with pytest.raises(TaskError, match="bad_task.py' failed to import: ModuleNotFoundError.*definitely_not_a_module_xyz"):
        get_task(f"{bad}:Task")
    syn = tmp_path / "syntax_task.py"
    syn.write_text("def broken(:\n")
    with pytest.raises(TaskError, match="failed to import: SyntaxError"):
        get_task(f"{syn}:Task")


def test_bad_specs():
    for spec in ("", "   ", ":Class", "module:"):
        with pytest.raises(TaskError):
            get_task(spec)


def test_hinted_prompt_defaults_and_a_plugins_own():
    from srft.tasks.base import hinted_prompt

    class Plain:
        name = "plain"

    assert hinted_prompt(Plain(), "What is 2+3? ", "5") == "What is 2+3? The answer is 5."
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"}]
    hinted = hinted_prompt(Plain(), chat, "5")
    assert hinted[1]["content"] == "2+3?\n\nThe answer is 5." and chat[1]["content"] == "2+3?"  # a copy
    assert hinted_prompt(Plain(), [{"role": "system", "content": "x"}], 5)[-1] == {
        "role": "user", "content": "The answer is 5."}

    class Own(Plain):
        def hinted_prompt(self, prompt, answer):
            return f"[hint: {answer}] {prompt}"

    assert hinted_prompt(Own(), "2+3?", "5") == "[hint: 5] 2+3?"


# --------------------------------------------------------------------------- carry-chain regime
@pytest.mark.parametrize("a, b, chained", [
    (47, 56, True),    # 7+6=13 carries; the tens get it and pass one on: 4+5+1=10
    (99, 1, True),     # 9+1=10, then 9+0+1=10
    (19, 1, False),    # 9+1=10 carries, but 1+0+1=2 passes nothing on
    (15, 15, False),   # 5+5=10, 1+1+1=3
    (58, 71, False),   # 8+1=9, no carry in; 5+7=12 carries out only
    (123, 456, False),  # no carry at all
])
def test_carry_chain_by_hand(a, b, chained):
    from srft.tasks.carry import has_carry_chain

    assert has_carry_chain(a, b) is chained


def _operands(prompt: str) -> tuple[int, int]:
    a, b = prompt.replace(" ", "").rstrip("=").split("+")
    return int(a), int(b)


def test_carry_task_shifts_in_kind_not_length():
    from srft.tasks.carry import CarryChainTask, has_carry_chain

    task = CarryChainTask()
    for split, want in (("train", False), ("test_id", False), ("test_ood", True)):
        rows = task.generate(split, 300, 0)
        pairs = [_operands(r["prompt"]) for r in rows]
        assert all(has_carry_chain(a, b) is want for a, b in pairs), split
        assert {len(str(x)) for a, b in pairs for x in (a, b)} <= {1, 2, 3}, split  # the same lengths everywhere
    # the pre-training text is drawn from the chain-free side only
    docs = task.pretraining_documents(1000, seed=0)
    assert not any(has_carry_chain(*_operands(d.split("=")[0] + "=")) for d in docs)


def test_taught_carry_task_shows_chains_in_training_only():
    from srft.tasks import base_model_task
    from srft.tasks.carry import CarryChainTask, TaughtCarryTask, has_carry_chain

    task, plain = TaughtCarryTask(), CarryChainTask()
    train = task.generate("train", 1000, 0)
    chained = [has_carry_chain(*_operands(r["prompt"])) for r in train]
    assert 0.15 < sum(chained) / len(chained) < 0.25  # chain_fraction 0.2
    # a chained training problem carries the missing step in its demonstration: a column x+y+1=1d
    r = next(r for r, c in zip(train, chained) if c)
    assert any("+1=1" in step for step in r["demonstration"].split(" "))
    # the test splits are addition-carry's, problem for problem, and never among the training ones
    for split in ("test_id", "test_ood"):
        assert task.generate(split, 64, 0) == plain.generate(split, 64, 0)
    held = {r["prompt"] for split in ("test_id", "test_ood") for r in task.generate(split, 300, 0)}
    assert not held & {r["prompt"] for r in train}
    # no chain at all with chain_fraction 0; its base model is addition-carry's
    assert not any(has_carry_chain(*_operands(r["prompt"]))
                   for r in TaughtCarryTask(chain_fraction=0.0).generate("train", 300, 0))
    assert base_model_task("addition-carry-taught") == "addition-carry"
    assert base_model_task("addition-carry-taught", "addition") == "addition"
    with pytest.raises(ValueError, match="chain_fraction"):
        TaughtCarryTask(chain_fraction=1.5)


def test_addition_pretraining_text_unchanged():
    # The pre-training hook the carry task overrides must not move the addition task's random
    # stream: the shipped base model is named by a recipe that assumes this exact text.
    import hashlib

    docs = get_task("addition").pretraining_documents(300, seed=0)
    digest = hashlib.sha256("\n".join(docs).encode()).hexdigest()
    assert digest == "cf47ca3bda8392482f8b8a8f64a0bb38d66a6f71482edad01aa38214eb5a0031"

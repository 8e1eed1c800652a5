"""The one evaluation function (srft.evaluation.sampling.evaluate_splits) and the modules split out of the loop."""

import torch

from srft.evaluation.sampling import EvalPrompt, evaluate_prompts, evaluate_splits
from srft.models.tokenizer import build_char_tokenizer
from srft.tasks import get_task


class RandomEngine:
    """Samples each response from the global torch generator: the draws show which stream was used."""

    def __init__(self, tok, answers):
        self.tok, self.answers = tok, answers

    def generate(self, prompt_ids, n, max_new_tokens, temperature, top_p=1.0):
        out = []
        for ids in prompt_ids:
            answer = self.answers[self.tok.decode(ids)]
            # right or wrong by a coin from the global generator
            out.append([self.tok(f"#### {answer if torch.rand(()) < 0.5 else 'x'}", add_special_tokens=False).input_ids
                        for _ in range(n)])
        return out


def _setup(n=6):
    tok = build_char_tokenizer()
    task = get_task("addition")
    tests = {s: task.generate(s, n, 0) for s in ("test_id", "test_ood")}
    answers = {r["prompt"]: r["answer"] for rows in tests.values() for r in rows}
    prompts = {s: [EvalPrompt(tok(r["prompt"], add_special_tokens=False).input_ids, r["answer"]) for r in rows]
               for s, rows in tests.items()}
    return tok, task, RandomEngine(tok, answers), prompts


def test_seeded_evaluation_is_reproducible_and_leaves_the_callers_rng_alone():
    tok, task, engine, prompts = _setup()
    torch.manual_seed(123)
    first = evaluate_splits(engine, tok, task, prompts, 4, 1.0, 16, seed=7)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after)  # the evaluation drew nothing from the caller's stream
    torch.manual_seed(999)
    assert evaluate_splits(engine, tok, task, prompts, 4, 1.0, 16, seed=7) == first
    assert list(first) == ["test_id", "test_ood"]
    assert all(r["acc"] == r["avg@4"] and r["n_prompts"] == 6 for r in first.values())


def test_splits_share_one_stream_in_order():
    tok, task, engine, prompts = _setup()
    torch.manual_seed(7)
    expected = {s: evaluate_prompts(engine, tok, [p.prompt_ids for p in ps], [p.answer for p in ps], task,
                                    k=4, temperature=1.0, max_new_tokens=16, keep_completions=True)
                for s, ps in prompts.items()}
    got = evaluate_splits(engine, tok, task, prompts, 4, 1.0, 16, seed=7, keep_completions=True)
    for s in prompts:
        assert got[s].pop("acc") == expected[s]["avg@4"]
    assert got == expected


def test_unseeded_evaluation_continues_the_global_stream():
    tok, task, engine, prompts = _setup()
    torch.manual_seed(5)
    a = evaluate_splits(engine, tok, task, prompts, 4, 1.0, 16, keep_completions=True)
    b = evaluate_splits(engine, tok, task, prompts, 4, 1.0, 16, keep_completions=True)
    torch.manual_seed(5)
    assert evaluate_splits(engine, tok, task, prompts, 4, 1.0, 16, keep_completions=True) == a
    assert a != b  # the second call drew further along the stream


def test_moved_names_stay_importable_from_their_old_homes():
    import srft.scoring
    import srft.tasks
    import srft.tasks.base
    import srft.training.batching
    import srft.training.loop as loop

    assert srft.tasks.base.Score is srft.tasks.Score is srft.scoring.Score
    assert loop.make_task is srft.tasks.make_task
    for name in ("pad_batch", "response_logits", "response_logprobs"):
        assert getattr(loop, name) is getattr(srft.training.batching, name)
    assert loop.verify_all is srft.tasks.base.verify_all

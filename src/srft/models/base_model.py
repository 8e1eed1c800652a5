"""The built-in base model: a tiny Llama pre-trained on noisy task text.

``build_base_model`` pre-trains a small decoder-only model (standard
``LlamaForCausalLM``, character-level tokenizer) on "web-like" text that srft
generates for a task (``task.pretraining_documents``): worked solutions in the
task's step-by-step format where a fraction of the steps are wrong, mixed
with answer-only lines. The model learns the format and the procedure but
makes mistakes at roughly the rate of its training text, so it starts with
*partial* competence that supervised and reinforcement fine-tuning can raise.

The result is a plain Hugging Face checkpoint directory (safetensors weights,
``config.json``, tokenizer files) plus ``srft_base.json`` with the build
parameters, the build time and the measured accuracy. Building is
deterministic given the seed (same data, same initialisation, same order).

``ensure_base_model`` returns a cached build, else installs the build that ships with the
package (``srft/models/shipped/``), else makes one. Shipping matters: the recipe is
deterministic on one machine, but tiny numerical differences between CPUs (kernels,
instruction sets) move 1000 steps of pre-training to visibly different models (one 2-core
machine of the same kind gave test_id avg@8 0.227 and greedy 0.63 instead of 0.355 and 0.97).
The shipped weights make the default run start from the same model everywhere; a rebuild
(``srft build-base --rebuild``) may land elsewhere within that band.

Measured with the default recipe (addition, seed 0, 1000 steps of 32 documents, 1.06M
parameters; the figures are in the build's ``srft_base.json``): test_id avg@8 at T=1 is
0.355 (greedy 0.97), test_ood (4-digit operands) 0. Fewer pre-training steps give a weaker
model (``model.base_steps``, also ``srft build-base model.base_steps=N``): 600 steps give test_id avg@8
0.06 (greedy 0.20), 400 steps 0.02, 200 steps 0.01.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from srft.evaluation.sampling import EvalPrompt, evaluate_splits
from srft.models.tokenizer import build_char_tokenizer
from srft.rollout.engine import HFEngine

BUILD_FORMAT = 2  # bump when the build recipe changes so caches are rebuilt


@dataclass
class BaseModelConfig:
    # architecture (Llama)
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    intermediate_size: int = 512
    max_position_embeddings: int = 256
    # pre-training
    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # the noisy pre-training text (passed to task.pretraining_documents)
    corpus: dict = field(default_factory=dict)
    # accuracy measured after the build
    eval_prompts: int = 64
    eval_k: int = 8
    eval_temperature: float = 1.0


# Per-task corpus settings for the built-in tasks (tuned for partial competence).
DEFAULT_CORPUS = {
    "addition": {},
    "expression": {},
    "addition-carry": {},
}


def _count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def make_model(cfg: BaseModelConfig, tokenizer, seed: int):
    # Llama rather than Qwen2: next to a qwen2 config.json, transformers 5 forces its Qwen2
    # tokenizer class onto AutoTokenizer, which mangles the character tokenizer.
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=True,
    )
    model = LlamaForCausalLM(config)
    gc = model.generation_config
    gc.pad_token_id, gc.eos_token_id, gc.bos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id
    gc.do_sample, gc.temperature, gc.top_k, gc.top_p = True, 1.0, 0, 1.0
    return model


def _documents(task, n: int, seed: int, corpus: dict) -> list[str]:
    if hasattr(task, "pretraining_documents"):
        return task.pretraining_documents(n, seed, **corpus)
    # A plugin task without its own pre-training text: use its demonstrations
    # (train split), with the final answer line corrupted now and then.
    rng = random.Random(f"pretrain/{seed}")
    rows = task.generate("train", n, seed + 7919)
    docs = []
    for r in rows:
        demo = r.get("demonstration") or f"#### {r['answer']}"
        if rng.random() < corpus.get("final_error", 0.3) and "####" in demo:
            demo = demo[: demo.rindex("####")] + f"#### {rng.randint(0, 999)}"
        docs.append(r["prompt"] + demo)
    return docs


def _batches(docs: list[str], tokenizer, batch_size: int, max_len: int):
    """Right-padded batches of single documents followed by <eos>."""
    ids = tokenizer(docs, add_special_tokens=False).input_ids
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    for i in range(0, len(ids) - batch_size + 1, batch_size):
        chunk = [x[: max_len - 1] + [eos] for x in ids[i : i + batch_size]]
        width = max(len(x) for x in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, x in enumerate(chunk):
            input_ids[j, : len(x)] = torch.tensor(x)
            mask[j, : len(x)] = 1
        labels = input_ids.masked_fill(mask == 0, -100)
        yield input_ids, mask, labels


def _lr_lambda(cfg: BaseModelConfig):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def pretrain(model, tokenizer, docs: list[str], cfg: BaseModelConfig, seed: int, progress: bool = True) -> list[float]:
    """Plain causal-LM pre-training (AdamW, warmup + cosine, loss on all tokens)."""
    from tqdm.auto import tqdm

    rng = random.Random(f"order/{seed}")
    docs = list(docs)
    rng.shuffle(docs)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    model.train()
    losses: list[float] = []
    batches = _batches(docs, tokenizer, cfg.batch_size, cfg.max_position_embeddings)
    bar = tqdm(total=cfg.steps, desc="pre-training base model", disable=not progress, unit="step")
    for step in range(cfg.steps):
        input_ids, mask, labels = next(batches)
        out = model(input_ids=input_ids, attention_mask=mask, labels=labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        losses.append(out.loss.item())
        bar.update(1)
        if step % 20 == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    bar.close()
    model.eval()
    return losses


def _sampling_engine(model, tokenizer, seed: int, batch_size: int):
    # Seeds the global generator, as these functions always have: the callers (build, SFT
    # check) own their process's random state.
    torch.manual_seed(seed)
    return HFEngine(model, tokenizer.pad_token_id, tokenizer.eos_token_id, max_batch=batch_size)


def _raw_prompt_ids(tokenizer, prompt: str) -> list[int]:
    # the prompt text as is: the base model was pre-trained on plain text, no chat template
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def sample_completions(model, tokenizer, prompts: list[str], k: int, temperature: float, seed: int,
                       max_new_tokens: int = 96, batch_size: int = 256) -> list[list[str]]:
    """k sampled responses per prompt (the rollout engine; temperature <= 0 is greedy)."""
    engine = _sampling_engine(model, tokenizer, seed, batch_size)
    responses = engine.generate([_raw_prompt_ids(tokenizer, p) for p in prompts], k, max_new_tokens, temperature)
    return [[tokenizer.decode(r, skip_special_tokens=True) for r in resp_k] for resp_k in responses]


@torch.no_grad()
def measure_accuracy(model, tokenizer, task, split: str = "test_id", n_prompts: int = 64, k: int = 8,
                     temperature: float = 1.0, seed: int = 0, max_new_tokens: int | None = None,
                     return_details: bool = False):
    """avg@k accuracy: the mean reward over k samples for each of n_prompts problems.

    ``srft.evaluation.sampling.evaluate_splits`` samples and scores, on the raw prompt text,
    from the global generator seeded with ``seed``.
    """
    rows = task.generate(split, n_prompts, seed)
    if max_new_tokens is None:
        longest = max(len(r.get("demonstration") or "") for r in rows)
        max_new_tokens = min(256, int(1.5 * longest) + 16)
    engine = _sampling_engine(model, tokenizer, seed, 256)
    prompts = [EvalPrompt(_raw_prompt_ids(tokenizer, r["prompt"]), r["answer"]) for r in rows]
    res = evaluate_splits(engine, tokenizer, task, {split: prompts}, k, temperature, max_new_tokens,
                          keep_completions=return_details)[split]
    if return_details:
        comps = [s["completions"] for s in res["samples"]]
        rewards = [s["rewards"] for s in res["samples"]]
        return res["acc"], {"rows": rows, "completions": comps, "rewards": rewards,
                            "pass_at_k": sum(max(x) for x in rewards) / len(rows)}
    return res["acc"]


def _config_hash(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def build_base_model(out_dir, task_name: str = "addition", seed: int = 0, steps: int | None = None,
                     progress: bool = True, config: BaseModelConfig | None = None, measure: bool = True,
                     num_threads: int | None = None) -> Path:
    """Pre-train the base model for ``task_name`` and save it to ``out_dir``.

    Writes into a temporary sibling directory and renames it into place, so a
    crash never leaves a half-written ``out_dir``. Returns ``out_dir``.
    """
    from srft.tasks import get_task

    cfg = config or BaseModelConfig()
    if not cfg.corpus:
        cfg.corpus = dict(DEFAULT_CORPUS.get(task_name, {}))
    if steps is not None:
        cfg.steps = steps
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    # Two threads on the 2-core reference machine. When other processes compete
    # for the cores, one thread is much faster (OpenMP barriers stall), hence
    # the SRFT_NUM_THREADS override.
    torch.set_num_threads(num_threads or int(os.environ.get("SRFT_NUM_THREADS", 0)) or min(2, os.cpu_count() or 1))
    task = get_task(task_name)
    tokenizer = build_char_tokenizer(model_max_length=cfg.max_position_embeddings)
    model = make_model(cfg, tokenizer, seed)
    docs = _documents(task, cfg.steps * cfg.batch_size, seed, cfg.corpus)
    losses = pretrain(model, tokenizer, docs, cfg, seed, progress)
    train_time = time.time() - t0
    metrics = {}
    if measure:
        for split in ("test_id", "test_ood"):
            metrics[f"{split}_avg@{cfg.eval_k}"] = measure_accuracy(
                model, tokenizer, task, split, cfg.eval_prompts, cfg.eval_k, cfg.eval_temperature, seed=seed
            )
            metrics[f"{split}_greedy"] = measure_accuracy(model, tokenizer, task, split, cfg.eval_prompts, 1, 0.0, seed=seed)
    info = {
        "format": BUILD_FORMAT,
        "task": task_name,
        "seed": seed,
        "config": asdict(cfg),
        "n_params": _count_params(model),
        "final_loss": sum(losses[-50:]) / max(1, len(losses[-50:])),
        "pretrain_seconds": round(train_time, 1),
        "build_seconds": round(time.time() - t0, 1),
        "accuracy": metrics,
        "accuracy_note": f"avg@{cfg.eval_k}, temperature {cfg.eval_temperature}, {cfg.eval_prompts} prompts, seed {seed}",
        "torch": torch.__version__,
    }
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "srft_base.json").write_text(json.dumps(info, indent=2) + "\n")
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)
    return out_dir


def base_model_dirname(task_name: str, seed: int, config: BaseModelConfig | None = None) -> str:
    cfg = config or BaseModelConfig()
    d = asdict(cfg)
    if not d["corpus"]:
        d["corpus"] = dict(DEFAULT_CORPUS.get(task_name, {}))
    d["format"] = BUILD_FORMAT
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in task_name)
    return f"{safe}-seed{seed}-{_config_hash(d)}"


# Builds that ship with the package, one directory each, named as in the cache.
SHIPPED_DIR = Path(__file__).parent / "shipped"


def _is_complete(path: Path) -> bool:
    return (path / "srft_base.json").is_file() and (path / "config.json").is_file()


def shipped_base_model(name: str) -> Path | None:
    """The shipped build called ``name`` (see ``base_model_dirname``), if the package has one."""
    path = SHIPPED_DIR / name
    return path if _is_complete(path) else None


def _install(src: Path, dest: Path) -> Path:
    """Copy a build into the cache through a temporary sibling, so a crash leaves no half copy."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


def ensure_base_model(cache_dir, task_name: str = "addition", seed: int = 0, progress: bool = True,
                      config: BaseModelConfig | None = None, rebuild: bool = False) -> Path:
    """Path of the cached base model for (task, seed, recipe).

    When the cache lacks it, the shipped build of that recipe is copied in; failing that
    (other tasks, seeds or step counts), it is built. ``rebuild`` always builds anew.
    """
    name = base_model_dirname(task_name, seed, config)
    path = Path(cache_dir).expanduser() / name
    if not rebuild:
        if _is_complete(path):
            return path
        shipped = shipped_base_model(name)
        if shipped is not None:
            return _install(shipped, path)
    return build_base_model(path, task_name, seed, progress=progress, config=config)


def load_base_model(path):
    """(model, tokenizer) from a base-model directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


# The recipes that ship (task, pre-training steps; seed 0): the default base model, the weak
# one of the comparison suites (model.base_steps=600) and the carry suite's.
SHIPPED = (("addition", 1000), ("addition", 600), ("addition-carry", 1000), ("expression", 1000))


def weights_digest(path: Path) -> str:
    return hashlib.sha256((Path(path) / "model.safetensors").read_bytes()).hexdigest()


def ship_base_model(steps: int, built: Path | None = None, task: str = "addition") -> Path:
    """Put the ``task``/seed-0 build of ``steps`` pre-training steps into ``SHIPPED_DIR``.

    ``built`` is a finished build of that recipe (``srft build-base data.task=T
    model.base_steps=N --out DIR``); without it the recipe is built here. The digest of the
    weights goes into srft_base.json so that a test can tell that the shipped files are the
    ones described.
    """
    config = BaseModelConfig(steps=steps)
    dest = SHIPPED_DIR / base_model_dirname(task, 0, config)
    if built is None:
        built = build_base_model(Path(f"{dest}.build"), task, 0, config=config)
    info = json.loads((Path(built) / "srft_base.json").read_text())
    if (info["task"], info["seed"], info["config"]["steps"], info["format"]) != (task, 0, steps, BUILD_FORMAT):
        raise ValueError(f"{built} is not the {task}/seed-0 build of {steps} steps (format {BUILD_FORMAT})")
    _install(Path(built), dest)
    shutil.rmtree(f"{dest}.build", ignore_errors=True)
    info["weights_sha256"] = weights_digest(dest)
    (dest / "srft_base.json").write_text(json.dumps(info, indent=2) + "\n")
    return dest


# --------------------------------------------------------------------------- learnability check
def sft_check(model_dir, task_name: str = "addition", steps: int = 300, batch_size: int = 16, lr: float = 1e-3,
              seed: int = 0, eval_prompts: int = 64, k: int = 8, progress: bool = True) -> dict:
    """Fine-tune a base model with plain SFT on the expert demonstrations of the
    train split (loss on response tokens only) and report avg@k accuracy at
    temperature 1 before and after, on test_id and test_ood. A quick check that
    the base model's partial competence can be raised in a few hundred steps."""
    from tqdm.auto import tqdm

    from srft.tasks import get_task

    torch.manual_seed(seed)
    model, tok = load_base_model(model_dir)
    task = get_task(task_name)

    def evaluate():
        return {s: measure_accuracy(model, tok, task, s, eval_prompts, k, 1.0, seed=seed) for s in ("test_id", "test_ood")}

    result = {"before": evaluate()}
    rows = task.generate("train", steps * batch_size, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    model.train()
    t0 = time.time()
    for step in tqdm(range(steps), desc="SFT on demonstrations", disable=not progress):
        batch = rows[step * batch_size : (step + 1) * batch_size]
        seqs, labels = [], []
        for r in batch:
            p = tok(r["prompt"], add_special_tokens=False).input_ids
            d = tok(r["demonstration"], add_special_tokens=False).input_ids + [tok.eos_token_id]
            seqs.append(p + d)
            labels.append([-100] * len(p) + d)
        width = max(map(len, seqs))
        ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])
        lab = torch.tensor([s + [-100] * (width - len(s)) for s in labels])
        mask = (torch.arange(width)[None, :] < torch.tensor([len(s) for s in seqs])[:, None]).long()
        loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    model.eval()
    result["sft_seconds"] = round(time.time() - t0, 1)
    result["after"] = evaluate()
    result["settings"] = dict(task=task_name, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                              eval=f"avg@{k}, T=1.0, {eval_prompts} prompts")
    return result


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m srft.models.base_model", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="pre-train a base model into OUT")
    b.add_argument("out")
    b.add_argument("--task", default="addition")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--steps", type=int, default=None)
    s = sub.add_parser("ship", help="build the recipes that ship with the package into srft/models/shipped/")
    s.add_argument("--task", default="addition", help="the task of the recipes to ship")
    s.add_argument("--steps", type=int, nargs="+", default=None,
                   help="pre-training steps of each recipe (default: the task's shipped ones)")
    s.add_argument("--from-dir", nargs="+", default=None,
                   help="ship these finished builds (one per --steps value) instead of building")
    c = sub.add_parser("sft-check", help="SFT a base model on demonstrations and report accuracy before/after")
    c.add_argument("model_dir")
    c.add_argument("--task", default="addition")
    c.add_argument("--steps", type=int, default=300)
    c.add_argument("--batch-size", type=int, default=16)
    c.add_argument("--lr", type=float, default=1e-3)
    c.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.cmd == "ship":
        steps_list = args.steps or [n for t, n in SHIPPED if t == args.task]
        for i, steps in enumerate(steps_list):
            built = Path(args.from_dir[i]) if args.from_dir else None
            print(ship_base_model(steps, built, task=args.task))
    elif args.cmd == "build":
        out = build_base_model(args.out, args.task, args.seed, steps=args.steps)
        print(json.dumps(json.loads((Path(out) / "srft_base.json").read_text())["accuracy"], indent=2))
    else:
        torch.set_num_threads(int(os.environ.get("SRFT_NUM_THREADS", 0)) or min(2, os.cpu_count() or 1))
        print(json.dumps(sft_check(args.model_dir, args.task, args.steps, args.batch_size, args.lr, args.seed), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

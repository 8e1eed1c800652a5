"""``srft doctor``: check a training config for the silent setup errors that cost long runs.

Each check is a function of a :class:`Context` (the config, task, model, tokenizer and
training rows, loaded once as ``srft train`` loads them) and returns a list of
:class:`Finding` (check, level ``ok``/``warn``/``problem``, one line with the fix):

- ``prompts``: a few training prompts exactly as encoded (chat template, system prompt,
  special tokens), the generation prompt, EOS/pad/BOS, unknown tokens, encoded length;
- ``sampling``: the model sampled at the rollout temperature: mean reward, answers in the
  expected format, truncated responses, groups whose rollouts all score the same;
- ``demonstrations``: demonstration lengths against ``data.max_response_tokens`` and the
  rows that ``encode_rows`` drops or cuts;
- ``verifier``: the data's own gold answers, stated as the task expects
  (``answer_response``), must all score 1; so should the demonstrations;
- ``keys``: config keys set away from their defaults that nothing reads under this config
  (every term or method they feed is off: :mod:`srft.objective.features`);
- ``presets``: values of the method's preset known to differ between the paper and the
  reference scripts, or documented departures (information only).

``keys`` and ``presets`` read the config alone: ``--only keys,presets`` loads no model.

A ``problem`` makes ``srft doctor`` exit 1; ``warn`` is information.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from srft.models.loading import CONTEXT_FIX
from srft.objective.features import dead_key_message, dead_keys

OK, WARN, PROBLEM = "ok", "warn", "problem"

# thresholds
ZERO_ADV_WARN = 0.9  # share of groups whose rollouts all score the same
TRUNCATION_WARN = 0.5  # share of responses that hit max_response_tokens without EOS
DROP_PROBLEM = 0.2  # share of rows dropped (demonstration or prompt too long)
GOLD_FAIL_PROBLEM = 0.05  # share of gold answers the verifier rejects (any at all: warn)
DEMO_FAIL_PROBLEM = 0.2  # share of demonstrations the verifier rejects (any at all: warn)
LENGTH_SAMPLE = 2000  # demonstrations measured for the length statistics


@dataclass(frozen=True)
class Finding:
    check: str
    level: str  # ok | warn | problem
    message: str


@dataclass
class Options:
    prompts: int = 3  # prompts rendered by the prompts check
    samples: int = 8  # prompts sampled by the sampling check
    k: int = 4  # rollouts per sampled prompt
    gold: int = 200  # gold answers (and demonstrations) verified by the verifier check


@dataclass
class Context:
    """What the checks share: loaded once, as ``srft train`` loads it."""

    cfg: object
    options: Options
    task: object = None
    model: object = None
    tokenizer: object = None
    model_path: object = None
    rows: list = field(default_factory=list)  # the training rows as the task gave them
    examples: list = field(default_factory=list)  # encoded (filtered) training examples
    report: object = None  # encode_rows' FilterReport, None when it failed
    data_error: str | None = None  # encode_rows' DataError, when nothing was left


# --------------------------------------------------------------------------- helpers


def _show(text: str, head: int = 160, tail: int = 240) -> str:
    """Text on one line (newlines escaped), its middle elided when long: the end of a prompt matters most."""
    flat = text.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    if len(flat) > head + tail + 20:
        flat = f"{flat[:head]} [... {len(flat) - head - tail} chars ...] {flat[-tail:]}"
    return f'"{flat}"'


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _hidden(example) -> bool:
    """GPQA asks that its questions stay out of logs and web pages: never print them."""
    return "gpqa" in str(getattr(example, "source", "")).lower()


def _redact(text: str, prompt) -> str:
    contents = [prompt] if isinstance(prompt, str) else [m["content"] for m in prompt]
    for c in contents:
        if len(c) > 10:
            text = text.replace(c, f"<question text hidden: {len(c)} chars>")
    return text


def _sample(items: list, n: int, seed: int) -> list:
    if len(items) <= n:
        return list(items)
    idx = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in idx]


def _uses_chat_template(tokenizer, prompt, template: str) -> bool:
    """Whether ``encode_prompt`` puts this prompt through the tokenizer's chat template."""
    has_chat = getattr(tokenizer, "chat_template", None) is not None
    if not has_chat or template == "plain":
        return False
    return not (template == "auto" and isinstance(prompt, str))


def _messages(prompt, template: str) -> list[dict]:
    """The messages ``encode_prompt`` hands to the chat template."""
    from srft.models.loading import REASONING_SYSTEM_PROMPT

    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if template == "reasoning" and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": REASONING_SYSTEM_PROMPT}] + messages
    return messages


def _reason(score) -> str:
    info = score.info or {}
    for key in ("error", "reason", "how"):
        if info.get(key):
            return f"{key} {str(info[key])[:80]}"
    if info.get("timeout"):
        return "timeout"
    return "no reason given"


# --------------------------------------------------------------------------- loading


def prepare(cfg, options: Options | None = None, progress: bool = True) -> Context:
    """Task, model and training rows as ``srft train`` gets them. Bad input raises the errors
    ``srft train`` raises (ConfigError, ModelError, TaskError, DataError: one line each);
    a data set that filtering empties is kept as ``data_error`` for the checks to report."""
    import torch

    from srft.data.loading import DataError
    from srft.models.loading import load_model_and_tokenizer
    from srft.tasks import make_task
    from srft.training.data import Example, encode_rows
    from srft.training.loop import needs_expert

    if cfg.model.threads > 0:
        torch.set_num_threads(cfg.model.threads)
    ctx = Context(cfg, options or Options())
    ctx.task = make_task(cfg)
    ctx.model, ctx.tokenizer, ctx.model_path = load_model_and_tokenizer(cfg.model, task_name=cfg.data.task,
                                                                        progress=progress)
    ctx.rows = ctx.task.generate("train", cfg.data.train_size, cfg.data.seed)
    try:
        ctx.examples, ctx.report = encode_rows(ctx.rows, ctx.tokenizer, cfg.data, name="train",
                                               need_demo=needs_expert(cfg.objective))
    except DataError as e:
        # nothing left after filtering: the demonstrations check says why; the other checks
        # look at the rows as they are
        ctx.data_error = _one_line(e)
        ctx.examples = [Example(r["prompt"], str(r["answer"]), r.get("demonstration"), str(r.get("data_source", "")),
                                ctx.tokenizer, cfg.data.template, cfg.data.max_response_tokens)
                        for r in ctx.rows if isinstance(r, dict) and r.get("prompt") and r.get("answer")]
    return ctx


# --------------------------------------------------------------------------- 1. prompts


def check_prompts(ctx: Context) -> list[Finding]:
    """The first few training prompts as the model sees them, and the special tokens."""
    name, cfg, tok = "prompts", ctx.cfg, ctx.tokenizer
    template = cfg.data.template
    out: list[Finding] = []
    if not ctx.examples:
        return [Finding(name, PROBLEM, "no training prompt to render (see the demonstrations check)")]

    # special tokens
    eos, eos_id, pad_id = tok.eos_token, tok.eos_token_id, tok.pad_token_id
    msg = f"EOS {eos!r} (id {eos_id}), pad {tok.pad_token!r} (id {pad_id})"
    if pad_id == eos_id:
        msg += ": pad = EOS is fine here (srft masks padding by length, so EOS is still trained)"
    out.append(Finding(name, OK, msg))
    if tok.unk_token_id is not None and eos_id == tok.unk_token_id:
        out.append(Finding(name, PROBLEM, f"the EOS token is the unknown token {tok.unk_token!r}: rollouts stop at any "
                                          f"unknown character; set a real eos_token in the tokenizer_config.json"))
    gen_eos = getattr(getattr(ctx.model, "generation_config", None), "eos_token_id", None)
    gen_eos = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])
    if gen_eos and eos_id not in gen_eos:
        stops = ", ".join(repr(tok.convert_ids_to_tokens(i)) for i in gen_eos)
        out.append(Finding(name, WARN, f"the model's generation_config stops at {stops}, the tokenizer's EOS is {eos!r}: "
                                       f"srft stops rollouts at {eos!r} and ends demonstrations with it; if the model "
                                       f"ends its answers with {stops}, set that as eos_token in tokenizer_config.json"))

    # how prompts are encoded
    first = ctx.examples[0].prompt
    has_chat = getattr(tok, "chat_template", None) is not None
    chat = _uses_chat_template(tok, first, template)
    if chat:
        out.extend(_check_chat_template(ctx, first))
    elif has_chat and template == "auto" and isinstance(first, str):
        out.append(Finding(name, WARN, "the tokenizer has a chat template but the prompts are plain strings, encoded as "
                                       "they are (data.template=auto): a chat model expects its template; set "
                                       "data.template=chat, or data.template=plain to keep them plain"))
    elif template == "plain" or (not has_chat and template != "chat"):
        if template == "reasoning":
            how = "the reasoning system prompt and the prompt, joined as plain text"
        elif template == "auto" and isinstance(first, str):
            how = "the strings as given"
        else:
            how = "the messages' contents, joined as plain text"
        why = "data.template=plain" if template == "plain" else "the tokenizer has no chat template"
        out.append(Finding(name, OK, f"{why}: prompts are {how}"))

    # the rendered prompts
    for i, ex in enumerate(ctx.examples[:ctx.options.prompts], 1):
        try:
            ids = ex.prompt_ids
        except ValueError as e:
            out.append(Finding(name, PROBLEM, f"the prompts cannot be encoded: {_one_line(e)}"))
            return out
        text = tok.decode(ids, skip_special_tokens=False)
        if _hidden(ex):
            text = _redact(text, ex.prompt)
        out.append(Finding(name, OK, f"prompt {i} ({len(ids)} tokens, as encoded): {_show(text)}"))
        if tok.unk_token_id is not None and tok.unk_token_id in ids:
            n = ids.count(tok.unk_token_id)
            out.append(Finding(name, WARN, f"prompt {i} has {n} unknown token(s) {tok.unk_token!r}: characters this "
                                           f"tokenizer cannot encode (the model never saw them)"))
        if not chat and tok.bos_token_id is not None and ids and ids[0] != tok.bos_token_id:
            default = tok(tok.decode(ids, skip_special_tokens=False))["input_ids"]
            if i == 1 and default and default[0] == tok.bos_token_id:
                out.append(Finding(name, WARN, f"the tokenizer adds BOS {tok.bos_token!r} by default but srft encodes "
                                               f"prompts without special tokens: start each prompt with "
                                               f"{tok.bos_token!r}, or use data.template=chat if the template adds it"))

    # encoded length: data.max_prompt_tokens counts the prompt text only
    lengths = []
    for ex in _sample(ctx.examples, 200, cfg.run.seed):
        try:
            lengths.append(len(ex.prompt_ids))
        except ValueError:
            break
    if lengths:
        longest = max(lengths)
        window = getattr(getattr(ctx.model, "config", None), "max_position_embeddings", None)
        if window is not None and longest + cfg.data.max_response_tokens > window:
            out.append(Finding(name, PROBLEM, f"encoded prompts reach {longest} tokens: with responses of up to "
                                              f"data.max_response_tokens={cfg.data.max_response_tokens} that is more "
                                              f"than the model's context window of {window}; shorten the prompts "
                                              f"(system prompt, data.template), or {CONTEXT_FIX}"))
        elif longest > cfg.data.max_prompt_tokens:
            out.append(Finding(name, WARN, f"encoded prompts reach {longest} tokens, above data.max_prompt_tokens="
                                           f"{cfg.data.max_prompt_tokens}, which counts the prompt text only (the "
                                           f"template adds the rest); fine if the memory allows it"))
    return out


def _check_chat_template(ctx: Context, prompt) -> list[Finding]:
    """The generation prompt, and the token that ends an assistant turn against EOS."""
    name, tok, template = "prompts", ctx.tokenizer, ctx.cfg.data.template
    out = []
    messages = _messages(prompt, template)
    try:
        with_gp = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        without = tok.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    except Exception as e:  # a template that cannot render these messages
        return [Finding(name, PROBLEM, f"the tokenizer's chat template fails on the training prompts: {_one_line(e)}")]
    gen_prompt = with_gp[len(without):] if with_gp.startswith(without) else None
    if not gen_prompt:
        out.append(Finding(name, PROBLEM, "the chat template adds no generation prompt (add_generation_prompt=True "
                                          "changes nothing): the model continues the user's turn instead of "
                                          "answering; fix the tokenizer's chat_template (an "
                                          "{% if add_generation_prompt %} block) or use data.template=plain"))
    else:
        try:
            ids = ctx.examples[0].prompt_ids
        except ValueError:
            ids = None
        if ids is not None and not tok.decode(ids, skip_special_tokens=False).endswith(gen_prompt):
            out.append(Finding(name, PROBLEM, f"the encoded prompt does not end with the generation prompt "
                                              f"{gen_prompt!r}: check the tokenizer's chat_template"))
        else:
            out.append(Finding(name, OK, f"chat template (data.template={template}), generation prompt {gen_prompt!r}"))
    # what ends an assistant turn: rollouts stop at EOS and demonstrations end with it
    sentinel = "SRFT_DOCTOR_ANSWER"
    try:
        full = tok.apply_chat_template(messages + [{"role": "assistant", "content": sentinel}], tokenize=False)
    except Exception:
        return out
    if sentinel in full:
        after = full.split(sentinel, 1)[1]
        if tok.eos_token not in after:
            out.append(Finding(name, WARN, f"the chat template ends an assistant turn with {after[:40]!r}, but EOS is "
                                           f"{tok.eos_token!r}: rollouts stop only at {tok.eos_token!r} (expect "
                                           f"truncated rollouts); set eos_token to the end-of-turn token"))
    return out


# --------------------------------------------------------------------------- 2. sampling


def check_sampling(ctx: Context) -> list[Finding]:
    """Sample the model on a few training prompts as the rollouts will, and score the samples."""
    import torch

    from srft.models.loading import ModelError, check_context
    from srft.rollout.engine import HFEngine
    from srft.tasks.base import verify_all

    name, cfg, tok, opts = "sampling", ctx.cfg, ctx.tokenizer, ctx.options
    if not ctx.examples:
        return [Finding(name, PROBLEM, "no training prompt to sample (see the demonstrations check)")]
    try:
        check_context(ctx.model, cfg.data.max_prompt_tokens, cfg.data.max_response_tokens,
                      "data.max_prompt_tokens + data.max_response_tokens")
    except ModelError as e:
        return [Finding(name, PROBLEM, _one_line(e))]
    chosen = _sample(ctx.examples, opts.samples, cfg.run.seed)
    try:
        prompts = [e.prompt_ids for e in chosen]
    except ValueError as e:
        return [Finding(name, PROBLEM, f"the prompts cannot be encoded: {_one_line(e)}")]
    r, max_new = cfg.rollout, cfg.data.max_response_tokens
    engine = HFEngine(ctx.model, tok.pad_token_id, tok.eos_token_id)
    t0 = time.perf_counter()
    with torch.random.fork_rng():
        torch.manual_seed(cfg.run.seed)
        responses = engine.generate(prompts, opts.k, max_new, r.temperature, r.top_p)
    seconds = time.perf_counter() - t0
    texts = [tok.decode(x, skip_special_tokens=True) for group in responses for x in group]
    answers = [e.answer for e, group in zip(chosen, responses) for _ in group]
    scores = verify_all(ctx.task, texts, answers)
    n = len(scores)
    flat = [x for group in responses for x in group]
    mean_reward = sum(s.reward for s in scores) / n
    format_rate = sum(1 for s in scores if s.format_ok) / n
    truncated = sum(1 for x in flat if len(x) >= max_new and (not x or x[-1] != tok.eos_token_id)) / n
    mean_len = sum(len(x) for x in flat) / n
    groups = [[s.reward for s in scores[i * opts.k:(i + 1) * opts.k]] for i in range(len(chosen))]
    zero_adv = sum(1 for g in groups if len(set(g)) == 1) / len(groups)
    out = [Finding(name, OK, f"{len(chosen)} prompts x {opts.k} rollouts (HF engine) at temperature {r.temperature:g}, up to "
                             f"{max_new} tokens ({seconds:.1f} s): mean reward {mean_reward:.3f}, expected format "
                             f"{_pct(format_rate)}, truncated {_pct(truncated)}, mean length {mean_len:.0f} tokens, "
                             f"groups with all rollouts equal {_pct(zero_adv)}")]
    out.append(Finding(name, OK, f"a response: {_show(texts[0], 100, 140)} (answer {answers[0][:40]!r}, "
                                 f"reward {scores[0].reward:g})"))

    if mean_reward == 0 and format_rate == 0:
        out.append(Finding(name, PROBLEM, f"every reward is 0 and no response has the expected format: check the chat "
                                          f"template / system prompt / data.template (now {cfg.data.template}) and "
                                          f"that the task's verifier expects what the model writes (see the "
                                          f"response above)"))
    if truncated > TRUNCATION_WARN:
        out.append(Finding(name, WARN, f"{_pct(truncated)} of the responses hit data.max_response_tokens={max_new} "
                                       f"without EOS {tok.eos_token!r}: raise data.max_response_tokens, or check "
                                       f"that the model ends its answers with that EOS token"))
    if zero_adv > ZERO_ADV_WARN:
        all_wrong = sum(1 for g in groups if len(set(g)) == 1 and g[0] == 0) / len(groups)
        why = ("most groups are all wrong: the data is too hard for the model at this temperature; "
               "demonstrations (SRFT, LUFFY) or easier data help") if all_wrong >= zero_adv / 2 else \
              "most groups are all correct: the data is too easy to learn from; use harder data"
        demo = " (only the demonstration in the group can differ)" if cfg.objective.demonstrations else ""
        out.append(Finding(name, WARN, f"{_pct(zero_adv)} of the groups have all {opts.k} rollouts with the same reward, "
                                       f"so their rollouts get zero advantage{demo}; {why}"))
    return out


# --------------------------------------------------------------------------- 3. demonstrations


def check_demonstrations(ctx: Context) -> list[Finding]:
    """Demonstration lengths against data.max_response_tokens, and what filtering drops or cuts."""
    from srft.data.loading import REASON_DEMO_TOO_LONG, REASON_PROMPT_TOO_LONG
    from srft.training.loop import needs_expert

    name, cfg, tok = "demonstrations", ctx.cfg, ctx.tokenizer
    limit = cfg.data.max_response_tokens
    out: list[Finding] = []
    demos = [r["demonstration"] for r in ctx.rows if isinstance(r, dict) and r.get("demonstration")]
    needed = needs_expert(cfg.objective)
    if not demos:
        level = PROBLEM if needed else OK
        why = (f"but method '{cfg.run.method}' trains on them: add demonstrations to the data or use a method "
               f"without them (--preset grpo)") if needed else f"(method '{cfg.run.method}' does not need them)"
        out.append(Finding(name, level, f"no training row has a demonstration {why}"))
        if needed:
            return out  # filtering failed for this very reason
    else:
        measured = _sample(demos, LENGTH_SAMPLE, cfg.run.seed)
        lengths = sorted(len(ids) + 1 for ids in tok(measured, add_special_tokens=False)["input_ids"])  # + EOS
        p95 = lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))]
        of = f" (a sample of {len(measured)} of {len(demos)})" if len(measured) < len(demos) else ""
        out.append(Finding(name, OK, f"{len(demos)} demonstrations{of}: length min {lengths[0]}, median "
                                     f"{statistics.median(lengths):.0f}, 95th percentile {p95}, max {lengths[-1]} "
                                     f"tokens (EOS included), against data.max_response_tokens={limit}"
                                     + ("" if needed else f"; method '{cfg.run.method}' does not train on them")))
    if ctx.data_error:
        out.append(Finding(name, PROBLEM, ctx.data_error))
        return out
    rep = ctx.report
    if rep is None:
        return out
    out.append(Finding(name, OK, f"filtering (as srft train does): {rep.summary}"))
    n_demo_rows = max(len(demos), 1)
    long_demos = rep.dropped.get(REASON_DEMO_TOO_LONG, 0)
    if long_demos:
        share = long_demos / n_demo_rows
        p95 = ""
        if demos:
            p95 = f" to at least {lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))]} (the 95th percentile)"
        out.append(Finding(name, PROBLEM if share > DROP_PROBLEM else WARN,
                           f"{long_demos} of {len(demos)} demonstrations ({_pct(share)}) are longer than "
                           f"data.max_response_tokens={limit} and their rows are dropped: raise "
                           f"data.max_response_tokens{p95}, or set data.too_long=truncate"))
    if rep.truncated:
        share = rep.truncated / n_demo_rows
        out.append(Finding(name, WARN, f"{rep.truncated} demonstrations ({_pct(share)}) are cut to {limit} tokens "
                                       f"(data.too_long=truncate): they lose their ending (the final answer and EOS) "
                                       f"and the verifier scores them 0; raise data.max_response_tokens to keep them "
                                       f"whole"))
    long_prompts = rep.dropped.get(REASON_PROMPT_TOO_LONG, 0)
    if long_prompts:
        share = long_prompts / max(rep.total, 1)
        out.append(Finding(name, PROBLEM if share > DROP_PROBLEM else WARN,
                           f"{long_prompts} of {rep.total} prompts ({_pct(share)}) are longer than "
                           f"data.max_prompt_tokens={cfg.data.max_prompt_tokens} and their rows are dropped: raise "
                           f"data.max_prompt_tokens"))
    others = {k: v for k, v in rep.dropped.items() if k not in (REASON_DEMO_TOO_LONG, REASON_PROMPT_TOO_LONG)}
    if others:
        share = sum(others.values()) / max(rep.total, 1)
        what = ", ".join(f"{v} {k}" for k, v in others.items())
        out.append(Finding(name, PROBLEM if share > DROP_PROBLEM else WARN,
                           f"rows dropped besides length: {what} ({_pct(share)} of {rep.total}); fix the data"))
    return out


# --------------------------------------------------------------------------- 4. verifier


def check_verifier(ctx: Context) -> list[Finding]:
    """The verifier on the data's own answers: every gold answer, stated as the task expects, must score 1."""
    from srft.tasks.base import answer_response, verify_all

    name, cfg, tok, task = "verifier", ctx.cfg, ctx.tokenizer, ctx.task
    out: list[Finding] = []
    rows = [r for r in ctx.rows if isinstance(r, dict) and r.get("answer")]
    sample = _sample(rows, ctx.options.gold, cfg.run.seed)
    if not sample:
        return [Finding(name, PROBLEM, "no training row has an answer to verify")]
    golds = [str(r["answer"]) for r in sample]
    if answer_response(task, golds[0]) is None:
        out.append(Finding(name, WARN, f"skipped the gold answers: task '{getattr(task, 'name', '?')}' has no "
                                       f"answer_response(answer) method saying how a response states an answer; "
                                       f"add one to check its verifier"))
    else:
        responses = [answer_response(task, g) for g in golds]
        scores = verify_all(task, responses, golds)
        fails = [(g, s) for g, s in zip(golds, scores) if s.reward != 1]
        if not fails:
            out.append(Finding(name, OK, f"{len(golds)} gold answers, stated as {_show(responses[0], 60, 40)}: "
                                         f"all score 1"))
        else:
            share = len(fails) / len(golds)
            examples = "; ".join(f"answer {g[:60]!r} -> extracted {str(s.extracted)[:60]!r}, reward {s.reward:g} "
                                 f"({_reason(s)})" for g, s in fails[:3])
            out.append(Finding(name, PROBLEM if share > GOLD_FAIL_PROBLEM else WARN,
                               f"{len(fails)} of {len(golds)} gold answers ({_pct(share)}) do not score 1 when stated "
                               f"as the task expects ({_show(responses[0], 60, 40)}); these prompts can never be "
                               f"rewarded: e.g. {examples}; fix the answers or the verifier (data.reward)"))
    # demonstrations, scored as the loop scores them (decoded, special tokens skipped)
    by_source = [e for e in ctx.examples if e.demonstration]
    demos = _sample(by_source, ctx.options.gold, cfg.run.seed)
    if demos:
        texts = [tok.decode(e.demo_ids, skip_special_tokens=True) for e in demos]
        scores = verify_all(task, texts, [e.answer for e in demos])
        fails = [(e, s) for e, s in zip(demos, scores) if s.reward != 1]
        if not fails:
            out.append(Finding(name, OK, f"{len(demos)} demonstrations: all score 1"))
        else:
            share = len(fails) / len(demos)
            examples = "; ".join(f"answer {e.answer[:60]!r} -> extracted {str(s.extracted)[:60]!r} ({_reason(s)})"
                                 for e, s in fails[:3])
            out.append(Finding(name, PROBLEM if share > DEMO_FAIL_PROBLEM else WARN,
                               f"{len(fails)} of {len(demos)} demonstrations ({_pct(share)}) do not score 1 (they "
                               f"enter their group with reward 0): e.g. {examples}; check that they end with an "
                               f"answer in the verifier's format"))
    return out


# --------------------------------------------------------------------------- 5. presets

# method -> [(config key or a name in brackets, value here, paper, reference scripts, note)].
# "value here" is the preset's; a config key's actual value is shown instead when it differs.
# Sources: the comments at the top of src/srft/presets/*.yaml, src/srft/objective/losses.py
# and src/srft/training/loop.py. "-": the source does not give it. docs/methods.md's table of
# them is generated from here: after a change, rerun python scripts/config_doc.py.
_SRFT = [
    ("objective.sft_weight", "exp", "w_SFT = 0.5*sg(exp(-H))", "exp(+H) (as reported of the authors' code)",
     "srft follows the paper's text; no setting gives exp(+H)"),
    ("objective.entropy_granularity", "sequence", "not stated", "-",
     "H is each sequence's mean entropy (srft's choice; token and batch are available)"),
    ("objective.loss_agg", "token-sum-norm", "not stated", "token-sum-norm",
     "sum over tokens / (sequences x max length), as in the LUFFY/SRFT reference code"),
    ("objective.entropy_coef", 0.001, "not stated", 0.001, "entropy bonus on rollout tokens only"),
    ("[rewards]", "0/1", "+1/-1 in the derivation, 0/1 in training", "0/1",
     "the self-rollout terms use the correct/wrong split"),
]
_ONE_UPDATE = ("optim.mini_batches", 1, "-",
               "2 mini-batches in LUFFY's scripts (train_batch_size 128, ppo_mini_batch_size 64)",
               "with one update per rollout batch the GRPO ratio's old log-probs are the current ones: the ratio "
               "is 1 and clipping never binds; optim.mini_batches=N cuts the step's groups into N updates, the "
               "rollout-time log-probs as the old ones (the same mini-batches on any number of ranks)")
_CHORD_ENTROPY = ("objective.entropy_coef", 0.001, "-", "-",
                  "the default entropy bonus on rollout tokens, inside the (1 - mu) share (srft's choice)")
_SFT_NORM = ("objective.loss_agg", "token-sum-norm", "-", "-",
             "the normaliser counts the generated rollouts too: the SFT gradient is about 1/(G+1) of a "
             "demonstrations-only trainer's; raise optim.lr to compensate")
PRESET_NOTES: dict[str, list[tuple]] = {
    "srft": _SRFT + [_ONE_UPDATE],
    "srft-no-wrl": _SRFT + [_ONE_UPDATE],
    "srft-no-wsft": [e for e in _SRFT if e[0] != "objective.sft_weight"] + [_ONE_UPDATE],
    "grpo": [_ONE_UPDATE],
    "dr-grpo": [_ONE_UPDATE],
    "dapo": [
        ("rollout.filter_rounds", 3, "until the batch is full", "until the batch is full (max_num_gen_batches)",
         "dynamic sampling stops after 3 draws and trains on the mixed groups found"),
        ("[reward]", "0 / 1", "-1 / 1", "-1 / 1",
         "the overlong penalty (up to 1) weighs twice as much against the reward gap"),
        _ONE_UPDATE,
    ],
    "cispo": [
        ("objective.clip_eps_high", 3.0, "tuned, no value given", "-",
         "the IS weight capped at 1 + 3 = 4, no lower bound (clip_eps=1): srft's choice of a large cap"),
        ("optim.mini_batches", 2, "not stated", "-",
         "2 updates per rollout batch (srft's choice, as gspo): with one update the weight is 1 and CISPO is "
         "token-mean REINFORCE"),
    ],
    "gspo": [("optim.mini_batches", 2, 4, "-",
              "2 updates per rollout batch, so that the preset runs with rollout.prompts_per_step=2 (a mini-batch "
              "needs whole groups); optim.mini_batches=4 gives the paper's")],
    "forking-tokens": [
        ("objective.top_entropy_quantile", 0.2, "top 20% of the batch's tokens", "-",
         "the threshold is taken over each micro-batch's rollout tokens (optim.micro_batch sequences, per rank); "
         "the same as the paper's when a step has at most optim.micro_batch sequences on one rank"),
        ("rollout.filter_rounds", 3, "until the batch is full (DAPO's)", "-",
         "dynamic sampling stops after 3 draws and trains on the mixed groups found"),
        ("[reward]", "0 / 1", "-1 / 1 (DAPO's)", "-", "the overlong penalty (up to 1) weighs twice as much against "
                                                      "the reward gap"),
        _ONE_UPDATE,
    ],
    "luffy": [
        ("[group]", "G rollouts + the demonstration", "G-1 rollouts + the demonstration", "-",
         "one more on-policy sample per group than LUFFY"),
        ("objective.entropy_coef", 0.001, "-", "-", "the default entropy bonus is kept (srft's choice)"),
        _ONE_UPDATE,
    ],
    "chord": [
        _CHORD_ENTROPY,
        _ONE_UPDATE,
        ("objective.mu_peak", 0.9, "-", "-", "mu 0.9 -> 0.05 (warm-up 1/30, cosine decay 2/3 of run.steps): "
                                             "srft's numbers"),
    ],
    "chord-phi": [_CHORD_ENTROPY, _ONE_UPDATE, ("objective.mu_peak", 0.1, "-", "-", "mu = 0.1 constant: srft's number")],
    "sft": [_SFT_NORM],
    "dft": [_SFT_NORM],
    "asft": [
        ("objective.kl_direction", "ref-pi", "-", "ref-pi",
         "KL(initial || pi), exact over the vocabulary at demonstration positions, as the official code"),
        ("objective.kl_coef", 0.1, "-", 0.1, "the official code's default kl_weight"),
    ],
    "relift": [("objective.relift_buffer", 16, "-", "-",
                "one step's worth of prompts; the SFT step follows the RL step with its own optimiser at "
                "optim.lr, no schedule (srft's choice)")],
    "sasr": [("objective.sasr_warmup_steps", 0.1, "-", "-",
              "SFT warm-up of a tenth of run.steps, then SFT with probability g/(g+g0): srft's reading")],
    "sft-then-grpo": [("objective.sft_stage_steps", 0.3333, "-", "-",
                       "an SFT stage of a third of run.steps; one optimiser and schedule across both stages")],
    "prefix-rft": [("objective.prefix_rollouts", 1, "-", "-", "one prefixed rollout per group (srft's choice)"),
                   ("objective.prefix_ratio_start", 0.95, "-", "-",
                    "prefix fraction 0.95 -> 0.05 on a cosine over run.steps (srft's choice)")],
}


def _config_value(cfg, key: str):
    if key.startswith("["):
        return None
    section, _, name = key.partition(".")
    return getattr(getattr(cfg, section, None), name, None)


def check_presets(ctx: Context) -> list[Finding]:
    """Values of the method's preset known to differ between the paper and the reference scripts (information)."""
    name, method = "presets", ctx.cfg.run.method
    notes = PRESET_NOTES.get(method)
    if notes is None:
        return [Finding(name, OK, f"no recorded paper/script differences for method '{method}'")]
    out = []
    for key, here, paper, scripts, note in notes:
        value = _config_value(ctx.cfg, key)
        shown = here if value is None or value == here else f"{value} (the preset has {here})"
        paper, scripts = ("not recorded" if v == "-" else v for v in (paper, scripts))
        out.append(Finding(name, WARN, f"{key} = {shown}: paper {paper}; reference scripts {scripts}; {note}"))
    return out


# --------------------------------------------------------------------------- 6. keys


def check_keys(ctx: Context) -> list[Finding]:
    """Keys set away from their defaults whose terms and methods are all off: a typo'd method or a stale override."""
    dead = dead_keys(ctx.cfg)
    if not dead:
        return [Finding("keys", OK, "every key set away from its default feeds a term or method that is on")]
    return [Finding("keys", WARN, dead_key_message(d)) for d in dead]


# --------------------------------------------------------------------------- running

CHECKS: dict[str, Callable[[Context], list[Finding]]] = {
    "prompts": check_prompts,
    "sampling": check_sampling,
    "demonstrations": check_demonstrations,
    "verifier": check_verifier,
    "keys": check_keys,
    "presets": check_presets,
}
# the checks that read the config alone: run by themselves, they need no model or data
CONFIG_CHECKS = ("keys", "presets")


def run_checks(ctx: Context, only: list[str] | None = None) -> list[Finding]:
    findings: list[Finding] = []
    for check_name, fn in CHECKS.items():
        if only and check_name not in only:
            continue
        findings.extend(fn(ctx))
    return findings


def format_findings(findings: list[Finding]) -> list[str]:
    """One line per finding, grouped by check."""
    lines, current = [], None
    for f in findings:
        if f.check != current:
            current = f.check
            lines.append(f"[{f.check}]")
        lines.append(f"  {f.level:<7} {f.message}")
    return lines


def doctor(cfg, options: Options | None = None, only: list[str] | None = None, out=print, err=None) -> int:
    """Run the checks on ``cfg``, print the findings, and return the exit code: 1 if any problem, else 0."""
    err = err or (lambda line: print(line, file=sys.stderr))
    t0 = time.perf_counter()
    config_only = bool(only) and all(c in CONFIG_CHECKS for c in only)
    ctx = Context(cfg, options or Options()) if config_only else prepare(cfg, options)
    try:
        findings = run_checks(ctx, only)
    finally:
        close = getattr(ctx.task, "close", None)
        if callable(close):
            close()
    for line in format_findings(findings):
        out(line)
    problems = [f for f in findings if f.level == PROBLEM]
    warns = sum(1 for f in findings if f.level == WARN)
    out(f"summary: {len(problems)} problem(s), {warns} warning(s) in {len({f.check for f in findings})} checks "
        f"({time.perf_counter() - t0:.1f} s)" + (": fix the problems before a long run" if problems else ""))
    for f in problems:
        err(f"problem: {f.check}: {f.message}")
    return 1 if problems else 0

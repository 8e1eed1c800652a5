"""The step batch: every sequence of one step, carried from rollout to update and record."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from srft.objective import group_advantages
from srft.tasks.base import Score


@dataclass
class StepBatch:
    """The N sequences of a step: each prompt's rollouts (plain, then prefixed) group by group,
    then the demonstrations. ``add`` them in that order, then ``finish`` with their scores.

    Per sequence (length N): ``seqs`` (prompt ids, response ids), ``group`` (the prompt's
    index in ``idx``), ``is_demo``, ``prefix_len`` (Prefix-RFT: demonstration tokens at the
    start of the response), ``answers``; after ``finish``: ``scores`` and the tensors
    ``rewards_N``, ``correct_N``, ``adv_N`` (group advantages over rollouts and demonstrations).
    """

    idx: list[int]  # train-set indices of the step's prompts (group g is idx[g])
    n_plain: int  # plain rollouts per prompt
    n_prefixed: int  # Prefix-RFT rollouts per prompt
    seqs: list[tuple[list[int], list[int]]] = field(default_factory=list)
    group: list[int] = field(default_factory=list)
    is_demo: list[bool] = field(default_factory=list)
    prefix_len: list[int] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    # rollout-time log-probs of each response token from the engine (None: not given, demonstrations)
    rollout_logprobs: list[list[float] | None] = field(default_factory=list)
    plain_ok: list[list[bool]] = field(default_factory=list)  # [P][n_plain]: plain rollouts judged correct
    demo_src: list[str] = field(default_factory=list)  # [P] where each prompt's demonstration came from
    scores: list[Score] = field(default_factory=list)
    rewards_N: torch.Tensor | None = None
    correct_N: torch.Tensor | None = None
    adv_N: torch.Tensor | None = None

    def add(self, prompt_ids: list[int], response_ids: list[int], group: int, answer: str, is_demo: bool = False,
            prefix_len: int = 0, logprobs: list[float] | None = None) -> None:
        self.seqs.append((prompt_ids, response_ids))
        self.group.append(group)
        self.is_demo.append(is_demo)
        self.prefix_len.append(prefix_len)
        self.answers.append(answer)
        self.rollout_logprobs.append(logprobs)

    def finish(self, scores: list[Score], adv_norm: str, adv_eps: float, adv_group: str = "all",
               shaping_N: torch.Tensor | None = None) -> None:
        """Attach the verifier's scores (in sequence order) and compute rewards and group advantages.

        adv_group=rollouts: the demonstrations stay out of their groups' statistics and get advantage 0.
        shaping_N: added to the rewards (DAPO's overlong penalty); ``correct_N`` is the verifier's alone."""
        if len(scores) != len(self.seqs):
            raise ValueError(f"{len(scores)} scores for {len(self.seqs)} sequences")
        self.scores = list(scores)
        verdict_N = torch.tensor([s.reward for s in scores], dtype=torch.float32)
        self.correct_N = verdict_N > 0
        self.rewards_N = verdict_N if shaping_N is None else verdict_N + shaping_N.float()
        if adv_group == "all":
            self.adv_N = group_advantages(self.rewards_N, self.group_N, adv_norm, adv_eps)
        elif adv_group == "rollouts":
            keep_N = ~self.is_demo_N
            self.adv_N = torch.zeros_like(self.rewards_N)
            if keep_N.any():
                self.adv_N[keep_N] = group_advantages(self.rewards_N[keep_N], self.group_N[keep_N], adv_norm, adv_eps)
        else:
            raise ValueError(f"adv_group must be all or rollouts, got {adv_group!r}")

    def select_groups(self, groups: list[int]) -> "StepBatch":
        """The finished batch of the prompts ``groups`` only (renumbered 0..), advantages kept."""
        # the batch's order: rollouts group by group (in the order of ``groups``), then demonstrations
        keep = [i for demos in (False, True) for g in groups
                for i, (gi, d) in enumerate(zip(self.group, self.is_demo)) if gi == g and d == demos]
        new_id = {g: k for k, g in enumerate(groups)}
        out = StepBatch(idx=[self.idx[g] for g in groups], n_plain=self.n_plain, n_prefixed=self.n_prefixed)
        out.seqs = [self.seqs[i] for i in keep]
        out.group = [new_id[self.group[i]] for i in keep]
        out.is_demo = [self.is_demo[i] for i in keep]
        out.prefix_len = [self.prefix_len[i] for i in keep]
        out.answers = [self.answers[i] for i in keep]
        out.rollout_logprobs = [self.rollout_logprobs[i] for i in keep]
        out.plain_ok = [self.plain_ok[g] for g in groups]
        out.scores = [self.scores[i] for i in keep]
        out.demo_src = [self.demo_src[g] for g in groups] if self.demo_src else []
        ids = torch.tensor(keep, dtype=torch.long)
        out.rewards_N, out.correct_N, out.adv_N = self.rewards_N[ids], self.correct_N[ids], self.adv_N[ids]
        return out

    @classmethod
    def concat(cls, parts: list["StepBatch"]) -> "StepBatch":
        """One batch of the finished ``parts`` (the ranks' shares of a step, in rank order): group
        ids renumbered after the previous parts' prompts; advantages kept (groups are whole)."""
        out = cls(idx=[i for p in parts for i in p.idx], n_plain=parts[0].n_plain, n_prefixed=parts[0].n_prefixed)
        offset = 0
        for p in parts:
            out.seqs += p.seqs
            out.group += [g + offset for g in p.group]
            out.is_demo += p.is_demo
            out.prefix_len += p.prefix_len
            out.answers += p.answers
            out.rollout_logprobs += p.rollout_logprobs
            out.plain_ok += p.plain_ok
            out.demo_src += p.demo_src
            out.scores += p.scores
            offset += len(p.idx)
        out.rewards_N = torch.cat([p.rewards_N for p in parts])
        out.correct_N = torch.cat([p.correct_N for p in parts])
        out.adv_N = torch.cat([p.adv_N for p in parts])
        return out

    def rollout_logprobs_BT(self, ids: list[int], width: int) -> torch.Tensor | None:
        """[len(ids), width] engine log-probs of the sequences ``ids`` (NaN where none: padding,
        demonstrations, Prefix-RFT prefixes), or None when no sequence of the step has any."""
        if all(lp is None for lp in self.rollout_logprobs):
            return None
        out_BT = torch.full((len(ids), width), float("nan"))
        for b, i in enumerate(ids):
            lp = self.rollout_logprobs[i]
            if lp is not None:
                out_BT[b, :len(lp)] = torch.tensor(lp, dtype=torch.float32)
        return out_BT

    @property
    def responses(self) -> list[list[int]]:
        return [r for _, r in self.seqs]

    @property
    def lengths(self) -> list[int]:
        return [len(r) for _, r in self.seqs]

    @property
    def demo_from(self) -> dict[str, int]:
        """How many of the prompts took their demonstration from each source (``demo_src`` counted)."""
        return {k: self.demo_src.count(k) for k in ("expert", "self", "none")}

    @property
    def gen_tokens(self) -> int:
        """Tokens the engine generated for this batch: own rollouts, less any demonstration prefix."""
        return sum(len(r) - p for (_, r), p, d in zip(self.seqs, self.prefix_len, self.is_demo) if not d)

    @property
    def is_demo_N(self) -> torch.Tensor:
        return torch.tensor(self.is_demo, dtype=torch.bool)

    @property
    def group_N(self) -> torch.Tensor:
        return torch.tensor(self.group)

    @property
    def prefix_N(self) -> torch.Tensor:
        return torch.tensor(self.prefix_len)

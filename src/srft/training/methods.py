"""Step-level methods: state that decides what a step does and learns from what it did.

Each is one small class with

- ``plan(plan)``: adjust the step's :class:`StepPlan` (its objective, prompts, weight factors);
- ``observe(record)``: learn from the step's record (and add its own figures to it);
- ``state_dict()`` / ``load_state_dict(state)``: what a checkpoint carries.

``build_step_methods`` makes the ones the config asks for; the loop calls their ``plan`` in
order before a step and their ``observe`` after it, and knows nothing else about them. The
demonstration pool is different in one way: it is filled while a step is collected (a
prompt solved for the first time is its own demonstration in that step), through
``DemoPool.add``.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

from srft.config import Config, ObjectiveConfig
from srft.objective import controller_update, weight_factor


def sft_objective(obj: ObjectiveConfig) -> ObjectiveConfig:
    """Plain cross-entropy on demonstrations: the SFT stage of two-stage runs and ReLIFT's/SASR's SFT steps."""
    return dataclasses.replace(obj, demonstrations=True, sft_coef=1.0, sft_weight="constant", offpolicy_coef=0.0,
                               self_rollout="none", entropy_coef=0.0, kl_coef=0.0, mix="add")


@dataclass
class StepPlan:
    """What one step does; the methods adjust it before the step."""

    step: int
    objective: ObjectiveConfig
    idx: list[int] | None = None  # train-set indices of the step's prompts; None = the data's next slice
    factors: tuple[float, float] = (1.0, 1.0)  # (w_SFT, w_RL) factors of the scalar weight modes
    record: dict = field(default_factory=dict)  # figures a method adds to the step's record


class WeightFactors:
    """The step's factors of w_SFT and w_RL: schedules (linear, cosine), or the target-entropy
    controller, which moves the log of each factor after every step from the rollout entropy.

    ``controller_sign=assumed``: imitation is taken to raise entropy and own samples to lower it.
    ``controller_sign=measured``: each controlled log factor is its base plus a dither of
    +-probe (w_SFT's flips every step, w_RL's every two: the two are uncorrelated over a window),
    and after each step the entropy changes h[j+1] - h[j] of the last ``window`` steps are fitted
    by least squares on the factor changes l[j] - l[j-1] (the entropy of step j+1's rollouts is
    the first to see step j's factor). The base then moves by gain * |gap| the way the fitted
    slope says closes the gap, bounded like the assumed controller; no move while a slope is 0.
    """

    name = "weights"

    def __init__(self, obj: ObjectiveConfig, total_steps: int):
        self.obj, self.total = obj, total_steps
        self.log_sft = self.log_rl = 0.0
        self.history: list[list[float]] = []  # measured: per step [log sft applied, log rl applied, entropy]
        self.applied = (0.0, 0.0)

    def _controlled(self) -> tuple[bool, bool]:
        return self.obj.sft_weight == "target", self.obj.rl_weight == "target"

    def plan(self, plan: StepPlan) -> None:
        o = self.obj
        log_sft, log_rl = self.log_sft, self.log_rl
        if o.controller_sign == "measured":
            sft_on, rl_on = self._controlled()
            log_sft += o.controller_probe * (1 if plan.step % 2 == 0 else -1) * sft_on
            log_rl += o.controller_probe * (1 if plan.step // 2 % 2 == 0 else -1) * rl_on
        self.applied = (log_sft, log_rl)
        plan.factors = (weight_factor(o.sft_weight, plan.step, self.total, o.sft_schedule_end, log_sft),
                        weight_factor(o.rl_weight, plan.step, self.total, o.rl_schedule_end, log_rl))

    def slopes(self) -> tuple[float, float]:
        """The fitted d entropy / d log factor of w_SFT and w_RL (0 when not yet known)."""
        rows = self.history[-(self.obj.controller_window + 1):]
        pairs = [((rows[j][0] - rows[j - 1][0], rows[j][1] - rows[j - 1][1]), rows[j + 1][2] - rows[j][2])
                 for j in range(1, len(rows) - 1)]
        sft_on, rl_on = self._controlled()
        if len(pairs) < 2:
            return 0.0, 0.0
        # least squares dh = b_sft * dl_sft + b_rl * dl_rl over the controlled factors
        a11 = sum(x[0] ** 2 for x, _ in pairs) if sft_on else 0.0
        a22 = sum(x[1] ** 2 for x, _ in pairs) if rl_on else 0.0
        a12 = sum(x[0] * x[1] for x, _ in pairs) if sft_on and rl_on else 0.0
        c1 = sum(x[0] * y for x, y in pairs) if sft_on else 0.0
        c2 = sum(x[1] * y for x, y in pairs) if rl_on else 0.0
        if sft_on and rl_on:
            det = a11 * a22 - a12 ** 2
            if det <= 1e-12:
                return 0.0, 0.0
            return (c1 * a22 - c2 * a12) / det, (c2 * a11 - c1 * a12) / det
        return (c1 / a11 if a11 > 0 else 0.0), (c2 / a22 if a22 > 0 else 0.0)

    def observe(self, record: dict) -> None:
        o = self.obj
        if "target" not in (o.sft_weight, o.rl_weight):
            return
        h = record["entropy_rollout"]
        if o.controller_sign == "measured":
            self.history = (self.history + [[*self.applied, h]])[-(o.controller_window + 2):]
            b_sft, b_rl = self.slopes()
            # the factor whose fitted slope is s moves by sign(s) * gain * (target - h), as the assumed one
            # does with its fixed sign (controller_update's sign is -sign(s))
            self.log_sft = controller_update(self.log_sft, h, o.entropy_target, o.controller_gain,
                                             -float(b_sft > 0) + float(b_sft < 0))
            self.log_rl = controller_update(self.log_rl, h, o.entropy_target, o.controller_gain,
                                            -float(b_rl > 0) + float(b_rl < 0))
            record["controller_slope_sft"], record["controller_slope_rl"] = b_sft, b_rl
            return
        # imitation is assumed to raise entropy (w_SFT up when below target), own samples to lower it
        self.log_sft = controller_update(self.log_sft, h, o.entropy_target, o.controller_gain, -1.0)
        self.log_rl = controller_update(self.log_rl, h, o.entropy_target, o.controller_gain, +1.0)

    def state_dict(self) -> dict:
        return {"log_sft": self.log_sft, "log_rl": self.log_rl, "history": [list(r) for r in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.log_sft, self.log_rl = float(state["log_sft"]), float(state["log_rl"])
        self.history = [[float(x) for x in r] for r in state.get("history", [])]


class EntropyCoef:
    """The adaptive entropy bonus coefficient (Skywork-OR1): after each step it rises by
    ``entropy_coef_step`` while rollout entropy is below ``entropy_target`` and falls by it
    while above, clamped to [0, entropy_coef_max]; it starts at ``entropy_coef``."""

    name = "entropy_coef"

    def __init__(self, obj: ObjectiveConfig):
        self.obj = obj
        self.coef = obj.entropy_coef

    def plan(self, plan: StepPlan) -> None:
        plan.objective = dataclasses.replace(plan.objective, entropy_coef=self.coef)
        plan.record["entropy_coef"] = self.coef

    def observe(self, record: dict) -> None:
        o, h = self.obj, record["entropy_rollout"]
        step = o.entropy_coef_step if h < o.entropy_target else -o.entropy_coef_step if h > o.entropy_target else 0.0
        self.coef = min(max(self.coef + step, 0.0), o.entropy_coef_max)

    def state_dict(self) -> dict:
        return {"coef": self.coef}

    def load_state_dict(self, state: dict) -> None:
        self.coef = float(state["coef"])


class TwoStage:
    """sft-then-grpo: plain SFT for the first ``sft_stage_steps`` steps, then the configured objective."""

    name = "two_stage"

    def __init__(self, stage_steps: int):
        self.stage_steps = stage_steps

    def plan(self, plan: StepPlan) -> None:
        if plan.step < self.stage_steps:
            plan.objective = sft_objective(plan.objective)

    def observe(self, record: dict) -> None:
        pass

    def state_dict(self) -> dict:
        return {}  # a function of the step alone

    def load_state_dict(self, state: dict) -> None:
        pass


class Sasr:
    """SASR: warm-up steps are SFT and accumulate the SFT gradient norm g0; after that a step is
    SFT with probability p = g / (g + g0), g the SFT gradient norm on the step's prompts:
    drifting away from the demonstrations (g grows) brings SFT back. The draw uses its own
    seeded stream, so a resumed run makes the same choices."""

    name = "sasr"

    def __init__(self, cfg: Config, grad_norm_of_step):
        self.warmup, self.seed = cfg.objective.sasr_warmup_steps, cfg.run.seed
        self.grad_norm_of_step = grad_norm_of_step  # step -> SFT gradient norm on that step's prompts
        self.g0_sum, self.g0_n = 0.0, 0

    def plan(self, plan: StepPlan) -> None:
        g = self.grad_norm_of_step(plan.step)
        if plan.step < self.warmup:
            self.g0_sum += g
            self.g0_n += 1
            choice = {"sft": True, "grad_norm": g, "p_sft": 1.0}
        else:
            g0 = self.g0_sum / max(self.g0_n, 1)
            p = g / (g + g0) if g + g0 > 0 else 0.5
            draw = random.Random(self.seed * 1_000_033 + plan.step).random()
            choice = {"sft": draw < p, "grad_norm": g, "p_sft": p}
        if choice["sft"]:
            plan.objective = sft_objective(plan.objective)
        plan.record.update({f"sasr_{k}": v for k, v in choice.items()})

    def observe(self, record: dict) -> None:
        pass

    def state_dict(self) -> dict:
        return {"g0_sum": self.g0_sum, "g0_n": self.g0_n}

    def load_state_dict(self, state: dict) -> None:
        self.g0_sum, self.g0_n = float(state["g0_sum"]), int(state["g0_n"])


class Relift:
    """ReLIFT: demonstrations of prompts whose rollouts all failed are buffered; once ``size``
    are, the next step is an SFT step on them (instead of an RL step on the next slice)."""

    name = "relift"

    def __init__(self, size: int, mode: str = "replace"):
        self.size, self.mode = size, mode
        self.buffer: list[int] = []
        self.sft_step = False

    def plan(self, plan: StepPlan) -> None:
        self.sft_step = self.mode == "replace" and len(self.buffer) >= self.size
        if self.sft_step:
            plan.idx, self.buffer = self.buffer[:self.size], self.buffer[self.size:]
            plan.objective = sft_objective(plan.objective)

    def take_after(self) -> list[int] | None:
        """mode after: the prompts of an SFT step to run after this step's RL update, once the buffer is full."""
        if self.mode != "after" or len(self.buffer) < self.size:
            return None
        idx, self.buffer = self.buffer[:self.size], self.buffer[self.size:]
        return idx

    def observe(self, record: dict) -> None:
        if not self.sft_step:
            self.buffer += record["all_wrong_prompts"]
        record["relift_buffer"] = len(self.buffer)
        record["relift_sft_step"] = self.sft_step

    def state_dict(self) -> dict:
        return {"buffer": list(self.buffer)}

    def load_state_dict(self, state: dict) -> None:
        self.buffer = [int(i) for i in state["buffer"]]


class DemoPool:
    """Per train prompt, the shortest verified-correct own rollout seen so far
    (``objective.demo_source`` self / mixed)."""

    name = "pool"  # not "demo_pool": that is the earlier checkpoints' flat entry

    def __init__(self):
        self.pool: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return len(self.pool)

    def get(self, i: int) -> list[int] | None:
        return self.pool.get(i)

    def add(self, idx: list[int], responses: list[list[list[int]]], correct: list[list[bool]]) -> None:
        for i, resp_n, ok_n in zip(idx, responses, correct):
            for r, ok in zip(resp_n, ok_n):
                if ok and (i not in self.pool or len(r) < len(self.pool[i])):
                    self.pool[i] = list(r)

    def plan(self, plan: StepPlan) -> None:
        pass

    def observe(self, record: dict) -> None:
        pass  # filled during the step (add); the record's pool_size is read from it

    def state_dict(self) -> dict:
        return {"pool": self.pool}

    def load_state_dict(self, state: dict) -> None:
        self.pool = {int(k): list(v) for k, v in state["pool"].items()}


def build_step_methods(cfg: Config, sft_grad_norm_of_step) -> list:
    """The step-level methods of ``cfg``, in the order their plans apply (the pool is always there)."""
    obj = cfg.objective
    methods: list = [WeightFactors(obj, cfg.run.steps), DemoPool()]
    if obj.entropy_coef_mode == "adaptive":  # before the methods that turn a step into SFT (no bonus there)
        methods.append(EntropyCoef(obj))
    if obj.sft_stage_steps:
        methods.append(TwoStage(obj.sft_stage_steps))
    if obj.sasr_warmup_steps:
        methods.append(Sasr(cfg, sft_grad_norm_of_step))
    if obj.relift_buffer:
        methods.append(Relift(obj.relift_buffer, obj.relift_mode))
    return methods


def methods_state(methods: list) -> dict:
    return {m.name: m.state_dict() for m in methods}


def load_methods_state(methods: list, extra: dict) -> None:
    """Restore each method from a checkpoint's ``extra`` (also the flat layout of earlier versions)."""
    control = extra.get("control", {})
    legacy = {"weights": {"log_sft": control.get("log_sft", 0.0), "log_rl": control.get("log_rl", 0.0)},
              "sasr": {"g0_sum": control.get("sasr_g0_sum", 0.0), "g0_n": control.get("sasr_g0_n", 0)},
              "relift": {"buffer": extra.get("relift_buffer", [])}, "pool": {"pool": extra.get("demo_pool", {})},
              "two_stage": {}}
    for m in methods:
        if m.name in extra or m.name in legacy:
            m.load_state_dict(extra.get(m.name, legacy.get(m.name)))

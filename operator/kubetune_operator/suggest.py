"""The parameters of a sweep's next trial: grid, random or tpe (Optuna's ask/tell).

A pure function of the sweep's spec, the trial's number and the finished
trials it may learn from. Nothing is kept between calls: the Optuna study is
rebuilt from the sweep's status (the finished trials and their results) and
the sampler is seeded from the sweep's seed and the trial's number. So an
operator that restarts, or a standby that takes over, suggests exactly what
the one before it would have: the state of the search is the status, which
the API server keeps. Each trial's row records its `basis` (the finished
trials its suggestion saw), so anyone can check a suggestion afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from kubetune_api.sweep import FineTuneSweepSpec, SweepParameter, TrialRow


def trial_seed(seed: int, number: int) -> int:
    """The sampler's seed for trial `number`: distinct per trial, fixed by the sweep's seed."""
    return (seed * 1_000_003 + number * 7_919 + 17) % 2**31


def distribution(parameter: SweepParameter) -> Any:
    """The Optuna distribution of one parameter."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if parameter.range is not None:
        return FloatDistribution(parameter.range.min, parameter.range.max, log=parameter.range.scale == "log")
    if parameter.int_range is not None:
        r = parameter.int_range
        return IntDistribution(r.min, r.min + (r.max - r.min) // r.step * r.step, step=r.step)
    return CategoricalDistribution(parameter.grid())


def learnable(rows: Sequence[TrialRow]) -> list[TrialRow]:
    """The finished trials a tpe suggestion learns from: those with a result (succeeded, or
    pruned with a curve), by number."""
    return sorted((r for r in rows if r.value is not None and r.phase in ("Succeeded", "Pruned")),
                  key=lambda r: r.number)


def suggest(spec: FineTuneSweepSpec, number: int, finished: Sequence[TrialRow]) -> tuple[dict[str, Any], list[int] | None]:
    """The parameters of trial `number` (0-based), and its basis (tpe: the trials it learned from)."""
    if spec.algorithm.type == "grid":
        return spec.grid_point(number), None
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)
    dists = {p.path: distribution(p) for p in spec.parameters}
    seed = trial_seed(spec.algorithm.seed, number)
    basis: list[int] | None = None
    if spec.algorithm.type == "random":
        sampler: Any = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(spec))
    study = optuna.create_study(direction="maximize" if spec.maximize else "minimize", sampler=sampler)
    if spec.algorithm.type == "tpe":
        basis = []
        for row in learnable(finished):
            params = {p: _internal(row.parameters[p], dists[p]) for p in dists if p in row.parameters}
            if len(params) != len(dists):
                continue
            state = optuna.trial.TrialState.COMPLETE if row.phase == "Succeeded" else optuna.trial.TrialState.PRUNED
            steps = {c.step: c.value for c in row.curve or ()}
            study.add_trial(optuna.trial.create_trial(
                params=params, distributions=dists, state=state,
                value=row.value if state == optuna.trial.TrialState.COMPLETE else None,
                intermediate_values=steps))
            basis.append(row.number)
    trial = study.ask(dists)
    return {p: _plain(trial.params[p], next(x for x in spec.parameters if x.path == p)) for p in dists}, basis


def startup_trials(spec: FineTuneSweepSpec) -> int:
    """Random trials before tpe starts modelling: Optuna's 10, fewer for a small sweep."""
    return max(2, min(10, (spec.max_trials or 10) // 3))


def _internal(value: Any, dist: Any) -> Any:
    from optuna.distributions import CategoricalDistribution

    if isinstance(dist, CategoricalDistribution):
        # Status values come back from JSON: 8.0 for a choice of 8 is the same choice.
        for choice in dist.choices:
            if choice == value and type(choice) is type(value):
                return choice
        for choice in dist.choices:
            if choice == value:
                return choice
    return value


def _plain(value: Any, parameter: SweepParameter) -> Any:
    """A suggested value as the spec field takes it (JSON-ready)."""
    return parameter.typed(value)

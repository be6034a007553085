"""Search spaces over candidates, from YAML files (see ``search_spaces/*.yaml``): either a fixed list of candidates or,
per policy and mix, the range of each knob on a step grid (so ids stay readable, e.g. ``cutmix(alpha=0.3)``), which
Optuna samples define-by-run.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daq_search.candidates import CANDIDATE_GRAMMAR, MIXES, POLICIES, Candidate, KnobSpec, format_value, parse_candidate
from daq_search.errors import DaqSearchError
from daq_search.files import read_yaml

DEFAULT_STEPS: dict[type, int | float] = {int: 1, float: 0.05}
"""The grid a numeric range is sampled on when its YAML gives no ``step``: integers 1 apart, floats 0.05 apart."""

STEP_DIGITS = 10
"""Decimal places a float knob sampled on a step grid is rounded to, so ``0.1 + 4 * 0.05`` reads ``0.3``."""


@dataclass(frozen=True)
class KnobDomain:
    """The values a structured search space lets one knob take: listed ``choices`` (one choice = a fixed knob), or,
    when ``choices`` is empty, the grid ``low, low + step, ..., high`` (``high - low`` a whole number of steps),
    sampled on a log scale if ``log`` (integer knobs with step 1 only)."""

    spec: KnobSpec
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    @property
    def fixed(self) -> bool:
        """True when the knob has a single value and is not searched."""
        return len(self.choices) == 1

    def describe(self) -> str:
        """The domain in words, e.g. ``integer in [1, 3]`` or ``float in [0.1, 0.9], step 0.05``."""
        if self.choices:
            return "one of " + ", ".join(format_value(value) for value in self.choices)
        kind = "integer" if self.spec.value_type is int else "float"
        text = f"{kind} in [{self.low!r}, {self.high!r}]"
        if self.step != DEFAULT_STEPS[int] or self.spec.value_type is not int:
            text += f", step {self.step!r}"
        return text + (", log scale" if self.log else "")

    def snap(self, value: Any) -> Any:
        """``value`` moved to the nearest grid point of a range (rounded to :data:`STEP_DIGITS` decimals for
        floats); listed choices are returned as given."""
        if self.choices:
            return value
        steps = round((value - self.low) / self.step)
        if self.spec.value_type is int:
            return int(self.low + steps * self.step)
        return round(self.low + steps * self.step, STEP_DIGITS) + 0.0

    def contains(self, value: Any) -> bool:
        """Whether ``value`` lies in the domain (for a range: inside [low, high] and on its step grid)."""
        if self.choices:
            return value in self.choices
        return self.low <= value <= self.high and math.isclose(self.snap(value), value, rel_tol=0, abs_tol=1e-9)

    def representatives(self) -> list[Any]:
        """The values :meth:`SearchSpace.candidates` lists: every choice, or for a range the knob's default clamped
        into [low, high] and moved to the nearest grid point."""
        if self.choices:
            return list(self.choices)
        return [self.snap(min(max(self.spec.default, self.low), self.high))]

    def suggest(self, trial: Any, name: str) -> Any:
        """A value for parameter ``name`` from an Optuna trial (suggest_categorical / suggest_int / suggest_float on
        the step grid)."""
        if self.choices:
            return trial.suggest_categorical(name, list(self.choices))
        if self.spec.value_type is int:
            return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)
        return trial.suggest_float(name, self.low, self.high, step=self.step)


@dataclass(frozen=True)
class SpaceEntry:
    """One policy or mix a structured space allows, with the domain of each of its knobs (sorted by knob name)."""

    name: str
    knobs: tuple[tuple[str, KnobDomain], ...]

    def representative_args(self) -> list[dict[str, Any]]:
        """Knob settings listed by :meth:`SearchSpace.candidates`: the product of each knob's representatives."""
        names = [knob for knob, _ in self.knobs]
        values = itertools.product(*(domain.representatives() for _, domain in self.knobs))
        return [dict(zip(names, combination, strict=False)) for combination in values]

    def suggest(self, trial: Any) -> None:
        """Suggest each searched (not fixed) knob as parameter ``<name>.<knob>``."""
        for knob, domain in self.knobs:
            if not domain.fixed:
                domain.suggest(trial, f"{self.name}.{knob}")

    def args_from_params(self, params: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Knob values read back from ``params`` (fixed knobs filled in)."""
        args = {}
        for knob, domain in self.knobs:
            key = f"{self.name}.{knob}"
            if domain.fixed:
                args[knob] = domain.choices[0]
            elif key in params:
                args[knob] = domain.snap(params[key]) if isinstance(params[key], numbers.Real) else params[key]
            else:
                raise DaqSearchError(f"{where}: missing {key!r}; allowed: params with every searched knob")
        return args

    def params_of(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """The ``<name>.<knob>`` parameters :meth:`suggest` would produce for these knob values."""
        return {f"{self.name}.{knob}": args[knob] for knob, domain in self.knobs if not domain.fixed}

    def outside(self, args: Mapping[str, Any]) -> str | None:
        """Why these knob values are outside the entry (``<name>.<knob>=<value> ...; allowed: ...``), None if inside."""
        for knob, domain in self.knobs:
            if not domain.contains(args[knob]):
                return (
                    f"{self.name}.{knob}={format_value(args[knob])} is outside the space; allowed: {domain.describe()}"
                )
        return None


@dataclass(frozen=True)
class SearchSpace:
    """A search space read from YAML: a fixed list of candidates (``listed``), or a structured space of allowed
    policies and mixes with a domain per knob (``policies``, ``mixes``, ``allow_no_mix``)."""

    name: str
    path: str
    listed: tuple[Candidate, ...] = ()
    policies: tuple[SpaceEntry, ...] = ()
    mixes: tuple[SpaceEntry, ...] = ()
    allow_no_mix: bool = True

    def _mix_options(self) -> list[str]:
        return (["none"] if self.allow_no_mix else []) + [entry.name for entry in self.mixes]

    def candidates(self) -> list[Candidate]:
        """List space: its candidates. Structured: each allowed policy at its representative knobs (every listed
        choice, e.g. each AutoAugment sub-policy; a range's default clamped into it), crossed with no mix (if allowed)
        and each allowed mix at its representative knobs."""
        if self.listed:
            return list(self.listed)
        policy_options = [(entry.name, args) for entry in self.policies for args in entry.representative_args()]
        mix_options: list[tuple[str | None, dict[str, Any]]] = [(None, {})] if self.allow_no_mix else []
        mix_options += [(entry.name, args) for entry in self.mixes for args in entry.representative_args()]
        return [Candidate(p, p_args, m, m_args) for p, p_args in policy_options for m, m_args in mix_options]

    def suggest(self, trial: Any) -> None:
        """Sample a candidate define-by-run on an Optuna trial. List space: parameter ``candidate`` (an id).
        Structured: ``policy``, then only that policy's searched knobs ``<policy>.<knob>``, then ``mix`` ("none" or a
        mix name) and only that mix's searched knobs ``<mix>.<knob>``. Read the result with
        :meth:`candidate_from_params`."""
        if self.listed:
            trial.suggest_categorical("candidate", [candidate.id for candidate in self.listed])
            return
        policy = trial.suggest_categorical("policy", [entry.name for entry in self.policies])
        self._entry(self.policies, policy).suggest(trial)
        mix = trial.suggest_categorical("mix", self._mix_options())
        if mix != "none":
            self._entry(self.mixes, mix).suggest(trial)

    @staticmethod
    def _entry(entries: tuple[SpaceEntry, ...], name: Any) -> SpaceEntry | None:
        return next((entry for entry in entries if entry.name == name), None)

    def candidate_from_params(self, params: Mapping[str, Any]) -> Candidate:
        """The candidate a parameter dict from :meth:`suggest` describes (keys it does not use are ignored); knobs
        fixed in the YAML are filled in. DaqSearchError if the parameters are incomplete or outside the space."""
        where = f"{self.path}: params"
        if self.listed:
            if "candidate" not in params:
                raise DaqSearchError(f"{where}: missing 'candidate'; allowed: a candidate id of space {self.name!r}")
            try:
                candidate = parse_candidate(params["candidate"])
            except DaqSearchError as error:
                raise DaqSearchError(f"{where}: {error}") from None
        else:
            policy, mix = params.get("policy"), params.get("mix")
            policy_entry, mix_entry = self._entry(self.policies, policy), self._entry(self.mixes, mix)
            if policy_entry is None:
                allowed = ", ".join(entry.name for entry in self.policies)
                raise DaqSearchError(f"{where}: policy {policy!r} is not in the space; allowed: {allowed}")
            if mix not in self._mix_options():
                allowed = ", ".join(self._mix_options())
                raise DaqSearchError(f"{where}: mix {mix!r} is not in the space; allowed: {allowed}")
            policy_args = policy_entry.args_from_params(params, where)
            mix_args = mix_entry.args_from_params(params, where) if mix_entry is not None else {}
            try:
                candidate = Candidate(policy, policy_args, None if mix == "none" else mix, mix_args)
            except DaqSearchError as error:
                raise DaqSearchError(f"{where}: {error}") from None
        self._check_inside(candidate)
        return candidate

    def params_of(self, candidate: Candidate) -> dict[str, Any]:
        """The parameter dict :meth:`suggest` would produce for ``candidate`` (for Optuna ``enqueue_trial`` or Ray
        Tune ``points_to_evaluate``). DaqSearchError if the candidate is outside the space."""
        self._check_inside(candidate)
        if self.listed:
            return {"candidate": candidate.id}
        params: dict[str, Any] = {"policy": candidate.policy}
        params.update(self._entry(self.policies, candidate.policy).params_of(dict(candidate.policy_args)))
        params["mix"] = candidate.mix or "none"
        if candidate.mix is not None:
            params.update(self._entry(self.mixes, candidate.mix).params_of(dict(candidate.mix_args)))
        return params

    def __contains__(self, candidate: object) -> bool:
        return isinstance(candidate, Candidate) and self._outside(candidate) is None

    def _check_inside(self, candidate: Candidate) -> None:
        reason = self._outside(candidate)
        if reason is not None:
            raise DaqSearchError(f"{self.path}: candidate {candidate.id!r}: {reason}")

    def _outside(self, candidate: Candidate) -> str | None:
        """Why ``candidate`` is outside the space (one ``...; allowed: ...`` phrase), None if inside."""
        if self.listed:
            if candidate in self.listed:
                return None
            return f"not in space {self.name!r}; allowed: {', '.join(c.id for c in self.listed)}"
        policy_entry = self._entry(self.policies, candidate.policy)
        if policy_entry is None:
            allowed = ", ".join(entry.name for entry in self.policies)
            return f"policy {candidate.policy!r} is outside the space; allowed: {allowed}"
        reason = policy_entry.outside(dict(candidate.policy_args))
        if reason is not None:
            return reason
        mix = candidate.mix or "none"
        if mix not in self._mix_options():
            return f"mix {mix!r} is outside the space; allowed: {', '.join(self._mix_options())}"
        return None if candidate.mix is None else self._entry(self.mixes, mix).outside(dict(candidate.mix_args))


TOP_LEVEL_KEYS = ("name", "candidates", "policies", "mixes", "allow_no_mix")
RANGE_KEYS = ("low", "high", "step", "log")


def _range_step(spec: KnobSpec, raw: Any, where: str) -> int | float:
    """The ``step`` of a range: a positive integer for integer knobs, a positive number for float knobs."""
    if spec.value_type is int:
        if isinstance(raw, bool) or not isinstance(raw, numbers.Integral) or raw < 1:
            raise DaqSearchError(f"{where}: {raw!r} is not allowed; allowed: an integer >= 1 (default 1)")
        return int(raw)
    if isinstance(raw, bool) or not isinstance(raw, numbers.Real) or not math.isfinite(raw) or raw <= 0:
        raise DaqSearchError(f"{where}: {raw!r} is not allowed; allowed: a number > 0 (default 0.05)")
    return float(raw)


def _knob_domain(spec: KnobSpec, raw: Any, where: str) -> KnobDomain:
    """The domain a YAML knob value describes: a scalar fixes the knob, a list gives choices, a mapping
    ``{low, high, step, log}`` a numeric range on a step grid (``step`` defaults to :data:`DEFAULT_STEPS`)."""
    shapes = f"a value, a list of values, or {{low, high, step, log}} within {spec.describe()}"
    if isinstance(raw, Mapping):
        if spec.value_type is str:
            allowed = f"a value or a list, {spec.describe()}"
            raise DaqSearchError(f"{where}: a range needs a numeric knob; allowed: {allowed}")
        unknown = [key for key in raw if key not in RANGE_KEYS]
        if unknown:
            raise DaqSearchError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(RANGE_KEYS)}")
        for key in ("low", "high"):
            if key not in raw:
                allowed = f"{{low, high, step, log}} within {spec.describe()}"
                raise DaqSearchError(f"{where}: missing {key!r}; allowed: {allowed}")
        low, high = spec.check(raw["low"], f"{where}.low"), spec.check(raw["high"], f"{where}.high")
        step = _range_step(spec, raw.get("step", DEFAULT_STEPS[spec.value_type]), f"{where}.step")
        log = raw.get("log", False)
        if not isinstance(log, bool):
            raise DaqSearchError(f"{where}.log: {log!r} is not a boolean; allowed: true, false")
        if low > high:
            raise DaqSearchError(f"{where}: low {low!r} > high {high!r}; allowed: low <= high")
        if log and (spec.value_type is float or step != 1):
            raise DaqSearchError(
                f"{where}.log: a log scale cannot keep a step grid; allowed: log only for integer knobs with step 1"
            )
        if log and low <= 0:
            raise DaqSearchError(f"{where}.log: log scale needs low > 0, got {low!r}; allowed: low > 0 with log")
        steps = (high - low) / step
        if not math.isclose(steps, round(steps), rel_tol=0, abs_tol=1e-9):
            raise DaqSearchError(
                f"{where}: high - low = {format_value(round(high - low, STEP_DIGITS))} is not a whole number of steps of {step!r}; "
                "allowed: high = low + k * step"
            )
        if low == high:
            return KnobDomain(spec, choices=(low,))
        return KnobDomain(spec, low=low, high=high, log=log, step=step)
    if isinstance(raw, list):
        if not raw:
            raise DaqSearchError(f"{where}: empty list; allowed: {shapes}")
        choices = [spec.check(value, f"{where}[{index}]") for index, value in enumerate(raw)]
        for index, value in enumerate(choices):
            if value in choices[:index]:
                raise DaqSearchError(f"{where}[{index}]: duplicate value {value!r}; allowed: each value once")
        return KnobDomain(spec, choices=tuple(choices))
    if raw is None:
        raise DaqSearchError(f"{where}: no value; allowed: {shapes}")
    return KnobDomain(spec, choices=(spec.check(raw, where),))


def _space_entries(
    raw: Any, catalogue: Mapping[str, Mapping[str, KnobSpec]], key: str, kind: str
) -> tuple[SpaceEntry, ...]:
    """The entries of a ``policies:`` or ``mixes:`` mapping (``kind`` "policy" or "mix"); knobs left out are fixed
    at their default."""
    if not isinstance(raw, Mapping):
        raise DaqSearchError(f"{key}: expected a mapping of {kind} name -> knobs; allowed: {', '.join(catalogue)}")
    entries = []
    for name, knobs_raw in raw.items():
        where = f"{key}.{name}"
        if name not in catalogue:
            raise DaqSearchError(f"{where}: unknown {kind}; allowed: {', '.join(catalogue)}")
        specs = catalogue[name]
        allowed_knobs = ", ".join(sorted(specs)) or f"none ({name} has no knobs)"
        knobs_raw = {} if knobs_raw is None else knobs_raw
        if not isinstance(knobs_raw, Mapping):
            raise DaqSearchError(
                f"{where}: expected a mapping of knob -> values (or {{}}); allowed knobs: {allowed_knobs}"
            )
        for knob in knobs_raw:
            if knob not in specs:
                raise DaqSearchError(f"{where}.{knob}: unknown knob; allowed: {allowed_knobs}")
        knobs = tuple(
            (
                knob,
                _knob_domain(specs[knob], knobs_raw[knob], f"{where}.{knob}")
                if knob in knobs_raw
                else KnobDomain(specs[knob], choices=(specs[knob].default,)),
            )
            for knob in sorted(specs)
        )
        entries.append(SpaceEntry(name, knobs))
    return tuple(entries)


def _list_space(name: str, path: Path, raw: Any) -> SearchSpace:
    """A space of the candidates listed under ``candidates:``."""
    if not isinstance(raw, list) or not raw:
        raise DaqSearchError(f"{path}: candidates: expected a non-empty list; allowed: candidate ids like 'cutmix'")
    listed: list[Candidate] = []
    for index, text in enumerate(raw):
        where = f"{path}: candidates[{index}]"
        if not isinstance(text, str):
            raise DaqSearchError(f"{where}: {text!r} is not a string; allowed: {CANDIDATE_GRAMMAR}")
        try:
            candidate = parse_candidate(text)
        except DaqSearchError as error:
            raise DaqSearchError(f"{where}: {error}") from None
        if candidate in listed:
            first = listed.index(candidate)
            raise DaqSearchError(f"{where}: duplicate of candidates[{first}] ({candidate.id}); allowed: each once")
        listed.append(candidate)
    return SearchSpace(name=name, path=str(path), listed=tuple(listed))


def load_search_space(path: str | Path) -> SearchSpace:
    """The search space a YAML file describes (see the comments at the top of ``search_spaces/*.yaml``).

    Any problem (missing file, malformed YAML, unknown key, policy, mix or knob, value out of the knob's range,
    low > high, wrong type) raises one DaqSearchError line ``<file>: <key path>: <problem>; allowed: ...``.
    """
    path = Path(path)
    document = read_yaml(path, "a search-space YAML file")
    if not isinstance(document, Mapping):
        raise DaqSearchError(f"{path}: top level: expected a mapping; allowed keys: {', '.join(TOP_LEVEL_KEYS)}")
    for key in document:
        if key not in TOP_LEVEL_KEYS:
            raise DaqSearchError(f"{path}: {key}: unknown key; allowed: {', '.join(TOP_LEVEL_KEYS)}")
    name = document.get("name")
    if not isinstance(name, str) or not name.strip():
        raise DaqSearchError(f"{path}: name: {name!r} is not a non-empty string; allowed: a name like 'default'")
    structured_keys = [key for key in ("policies", "mixes", "allow_no_mix") if key in document]
    if "candidates" in document:
        if structured_keys:
            raise DaqSearchError(
                f"{path}: {structured_keys[0]}: cannot be combined with candidates; allowed: either 'candidates' "
                "or 'policies' with optional 'mixes' and 'allow_no_mix'"
            )
        return _list_space(name, path, document["candidates"])
    if "policies" not in document:
        raise DaqSearchError(f"{path}: policies: missing; allowed: 'candidates' (a list) or 'policies' (a mapping)")
    allow_no_mix = document.get("allow_no_mix", True)
    if not isinstance(allow_no_mix, bool):
        raise DaqSearchError(f"{path}: allow_no_mix: {allow_no_mix!r} is not a boolean; allowed: true, false")
    try:
        policies = _space_entries(document["policies"], POLICIES, "policies", "policy")
        raw_mixes = document.get("mixes")
        mixes = _space_entries({} if raw_mixes is None else raw_mixes, MIXES, "mixes", "mix")
    except DaqSearchError as error:
        raise DaqSearchError(f"{path}: {error}") from None
    if not policies:
        raise DaqSearchError(f"{path}: policies: empty; allowed: one or more of {', '.join(POLICIES)}")
    if not allow_no_mix and not mixes:
        raise DaqSearchError(
            f"{path}: allow_no_mix: false with no mixes leaves no choice; allowed: true, or list a mix"
        )
    return SearchSpace(name=name, path=str(path), policies=policies, mixes=mixes, allow_no_mix=allow_no_mix)

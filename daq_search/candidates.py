"""Augmentation candidates: the policies and mixes with their knobs, and the candidate id grammar.

A candidate is one image-level policy with its knobs plus, optionally, one batch-level mix with its knobs. Its id is a
string a reader can log, put in a table and parse back, e.g. ``randaugment(magnitude=9,num_ops=2)+cutmix(alpha=1.0)``.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from daq_search.errors import DaqSearchError


@dataclass(frozen=True)
class KnobSpec:
    """One knob of a policy or mix: its value type (int, float or str), default, and the values it may take.

    Numeric knobs take values in [low, high] (or (low, high] when ``low_exclusive``); str knobs one of ``choices``.
    """

    value_type: type
    default: Any
    low: float | None = None
    high: float | None = None
    low_exclusive: bool = False
    choices: tuple[str, ...] = ()

    def describe(self) -> str:
        """The allowed values in words, e.g. ``integer in [1, 5]`` or ``one of cifar10, imagenet, svhn``."""
        if self.value_type is str:
            return "one of " + ", ".join(self.choices)
        if self.value_type is int:
            return f"integer in [{self.low}, {self.high}]"
        return f"float in {'(' if self.low_exclusive else '['}{self.low!r}, {self.high!r}]"

    def check(self, value: Any, where: str) -> Any:
        """``value`` in this knob's canonical type (int, float or str); DaqSearchError naming ``where`` if not
        allowed."""
        allowed = f"; allowed: {self.describe()}"
        if self.value_type is str:
            if not isinstance(value, str) or value not in self.choices:
                raise DaqSearchError(f"{where}: {value!r} is not allowed{allowed}")
            return value
        if self.value_type is int:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise DaqSearchError(f"{where}: {value!r} is not an integer{allowed}")
            number = int(value)
        else:
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise DaqSearchError(f"{where}: {value!r} is not a number{allowed}")
            number = float(value) + 0.0  # turns -0.0 into 0.0
        above_low = number > self.low if self.low_exclusive else number >= self.low
        if not (above_low and number <= self.high):
            raise DaqSearchError(f"{where}: {number!r} is out of range{allowed}")
        return number

    def from_text(self, text: str, where: str) -> Any:
        """The value written as ``text`` in a candidate id, checked as by :meth:`check`."""
        if self.value_type is int:
            if not re.fullmatch(r"[+-]?\d+", text):
                raise DaqSearchError(f"{where}: {text!r} is not an integer; allowed: {self.describe()}")
            return self.check(int(text), where)
        if self.value_type is float:
            try:
                number = float(text)
            except ValueError:
                raise DaqSearchError(f"{where}: {text!r} is not a number; allowed: {self.describe()}") from None
            return self.check(number, where)
        return self.check(text, where)


AUTOAUGMENT_POLICIES = ("cifar10", "imagenet", "svhn")

POLICIES: dict[str, dict[str, KnobSpec]] = {
    "none": {},
    "autoaugment": {"policy": KnobSpec(str, "cifar10", choices=AUTOAUGMENT_POLICIES)},
    "randaugment": {"num_ops": KnobSpec(int, 2, 1, 5), "magnitude": KnobSpec(int, 9, 0, 30)},
    "trivialaugment": {},
    "augmix": {"severity": KnobSpec(int, 3, 1, 10)},
    "random_erasing": {"p": KnobSpec(float, 0.5, 0.0, 1.0)},
    "random_affine": {
        "degrees": KnobSpec(int, 15, 0, 180),
        "translate": KnobSpec(float, 0.1, 0.0, 0.5),
        "scale": KnobSpec(float, 0.1, 0.0, 0.5),
    },
}
"""Image-level policies: name -> knob name -> spec."""

MIXES: dict[str, dict[str, KnobSpec]] = {
    "cutmix": {"alpha": KnobSpec(float, 1.0, 0.0, 10.0, low_exclusive=True)},
    "mixup": {"alpha": KnobSpec(float, 0.2, 0.0, 10.0, low_exclusive=True)},
}
"""Batch-level mixes: name -> knob name -> spec."""

CANDIDATE_GRAMMAR = "'<policy>[(knob=value,...)][+<mix>[(knob=value,...)]]'"


def _canonical_args(owner: str, specs: Mapping[str, KnobSpec], args: Any) -> tuple[tuple[str, Any], ...]:
    """Every knob of ``owner`` as sorted (name, value) pairs: given values checked, missing ones at their default."""
    given = dict(args)
    if not isinstance(args, Mapping) and len(given) != len(args):
        raise DaqSearchError(f"{owner}: a knob is given twice in {args!r}; allowed: each knob once")
    unknown = sorted(set(given) - set(specs), key=str)
    if unknown:
        allowed = ", ".join(sorted(specs)) or f"none ({owner} has no knobs)"
        raise DaqSearchError(f"{owner}: unknown knob {unknown[0]!r}; allowed: {allowed}")
    return tuple(
        (knob, specs[knob].check(given.get(knob, specs[knob].default), f"{owner}.{knob}")) for knob in sorted(specs)
    )


def format_value(value: Any) -> str:
    """A knob value as written in an id: floats in their shortest round-tripping form (``repr``)."""
    return repr(value) if isinstance(value, float) else str(value)


def _format_part(name: str, args: tuple[tuple[str, Any], ...]) -> str:
    """``name`` or ``name(knob=value,...)``."""
    if not args:
        return name
    return f"{name}({','.join(f'{knob}={format_value(value)}' for knob, value in args)})"


@dataclass(frozen=True)
class Candidate:
    """One augmentation candidate: an image-level policy and an optional batch-level mix, each with all its knobs.

    The knob arguments may be given as a mapping or as (name, value) pairs, and may leave knobs out; they are stored
    sorted by knob name with every knob present (defaults filled), so equal candidates compare and hash equal.
    """

    policy: str = "none"
    policy_args: tuple[tuple[str, Any], ...] = ()
    mix: str | None = None
    mix_args: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise DaqSearchError(f"unknown policy {self.policy!r}; allowed: {', '.join(POLICIES)}")
        object.__setattr__(self, "policy_args", _canonical_args(self.policy, POLICIES[self.policy], self.policy_args))
        if self.mix is None:
            if self.mix_args:
                raise DaqSearchError(f"mix_args {self.mix_args!r} given without a mix; allowed: mix args with a mix")
            object.__setattr__(self, "mix_args", ())
            return
        if self.mix not in MIXES:
            raise DaqSearchError(f"unknown mix {self.mix!r}; allowed: {', '.join(MIXES)} (or None for no mix)")
        object.__setattr__(self, "mix_args", _canonical_args(self.mix, MIXES[self.mix], self.mix_args))

    @property
    def id(self) -> str:
        """Canonical string, e.g. ``randaugment(magnitude=9,num_ops=2)+cutmix(alpha=1.0)``; parse it back with
        :func:`parse_candidate`."""
        text = _format_part(self.policy, self.policy_args)
        return text if self.mix is None else f"{text}+{_format_part(self.mix, self.mix_args)}"

    def knobs(self) -> dict[str, Any]:
        """Flat record for tables: ``{"policy": ..., "<policy>.<knob>": ..., "mix": name or "none",
        "<mix>.<knob>": ...}``."""
        record: dict[str, Any] = {"policy": self.policy}
        record.update({f"{self.policy}.{knob}": value for knob, value in self.policy_args})
        record["mix"] = self.mix or "none"
        record.update({f"{self.mix}.{knob}": value for knob, value in self.mix_args})
        return record


_PART = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*", re.DOTALL)


def _split_top_level(text: str) -> list[str]:
    """``text`` split at the '+' signs outside parentheses (a '+' inside, as in ``alpha=1e+0``, stays)."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "+" and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


def _parse_part(part: str) -> tuple[str, dict[str, str]]:
    """``name(knob=value,...)`` -> (name, {knob: value text})."""
    match = _PART.fullmatch(part)
    if match is None:
        raise DaqSearchError(f"cannot parse {part.strip()!r}; allowed: {CANDIDATE_GRAMMAR}")
    name, arg_text = match.group(1), match.group(2)
    raw: dict[str, str] = {}
    if arg_text is None or not arg_text.strip():
        return name, raw
    for item in arg_text.split(","):
        knob, equals, value = item.partition("=")
        knob, value = knob.strip(), value.strip()
        if not equals or not knob or not value:
            raise DaqSearchError(f"{name}: cannot parse {item.strip()!r}; allowed: knob=value")
        if knob in raw:
            raise DaqSearchError(f"{name}: knob {knob!r} given twice; allowed: each knob once")
        raw[knob] = value
    return name, raw


def _typed_args(owner: str, specs: Mapping[str, KnobSpec], raw: Mapping[str, str]) -> dict[str, Any]:
    """Knob value texts converted by their specs; unknown knobs rejected."""
    for knob in raw:
        if knob not in specs:
            allowed = ", ".join(sorted(specs)) or f"none ({owner} has no knobs)"
            raise DaqSearchError(f"{owner}: unknown knob {knob!r}; allowed: {allowed}")
    return {knob: specs[knob].from_text(text, f"{owner}.{knob}") for knob, text in raw.items()}


def parse_candidate(text: str) -> Candidate:
    """The candidate an id names (inverse of :attr:`Candidate.id`); missing knobs take their defaults, whitespace is
    ignored, and a mix named alone (``"cutmix"``) means ``none+cutmix``. DaqSearchError naming ``text`` on any error."""
    try:
        if not isinstance(text, str):
            raise DaqSearchError(f"not a string; allowed: {CANDIDATE_GRAMMAR}")
        if not text.strip():
            raise DaqSearchError(f"empty; allowed: {CANDIDATE_GRAMMAR}")
        parts = _split_top_level(text)
        if len(parts) > 2:
            raise DaqSearchError(f"more than one '+'; allowed: {CANDIDATE_GRAMMAR}")
        (policy, policy_raw), *mix_part = [_parse_part(part) for part in parts]
        if not mix_part and policy in MIXES:
            return Candidate("none", (), policy, _typed_args(policy, MIXES[policy], policy_raw))
        if policy in MIXES:
            raise DaqSearchError(f"{policy!r} is a mix and must come second; allowed: {CANDIDATE_GRAMMAR}")
        if policy not in POLICIES:
            raise DaqSearchError(
                f"unknown policy {policy!r}; allowed: {', '.join(POLICIES)} (or a mix alone: {', '.join(MIXES)})"
            )
        policy_args = _typed_args(policy, POLICIES[policy], policy_raw)
        if not mix_part:
            return Candidate(policy, policy_args)
        mix, mix_raw = mix_part[0]
        if mix not in MIXES:
            raise DaqSearchError(f"unknown mix {mix!r}; allowed: {', '.join(MIXES)}")
        return Candidate(policy, policy_args, mix, _typed_args(mix, MIXES[mix], mix_raw))
    except DaqSearchError as error:
        raise DaqSearchError(f"candidate {text!r}: {error}") from None

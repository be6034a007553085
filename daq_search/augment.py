"""Augmentation candidates: what they are, their string ids, the transforms they build, and search spaces over them.

A candidate is one image-level policy with its knobs plus, optionally, one batch-level mix with its knobs. Its id is a
string a reader can log, put in a table and parse back, e.g. ``randaugment(magnitude=9,num_ops=2)+cutmix(alpha=1.0)``.
Search spaces come from YAML files (see ``search_spaces/*.yaml``): either a fixed list of candidates or, per policy and
mix, the range of each knob, which Optuna samples define-by-run.
"""

from __future__ import annotations

import itertools
import numbers
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torchvision.transforms import v2

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


def _format_value(value: Any) -> str:
    """A knob value as written in an id: floats in their shortest round-tripping form (``repr``)."""
    return repr(value) if isinstance(value, float) else str(value)


def _format_part(name: str, args: tuple[tuple[str, Any], ...]) -> str:
    """``name`` or ``name(knob=value,...)``."""
    if not args:
        return name
    return f"{name}({','.join(f'{knob}={_format_value(value)}' for knob, value in args)})"


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


TRIVIALAUGMENT_TRANSLATE_FRACTION = 32 / 32
"""Largest TrivialAugment translation as a fraction of the image side: the wide space's 32 px on the 32x32 images
(CIFAR, SVHN) it was defined on."""


class ScaledTrivialAugmentWide(v2.TrivialAugmentWide):
    """TrivialAugment Wide with its translation relative to the image side.

    The wide space (Muller & Hutter, ICCV 2021; automl/trivialaugment ``aug_lib.py``) translates up to 32 px and was
    defined and evaluated on 32x32 images, i.e. up to the whole side; the authors' standard space likewise moves
    10 px on 32x32 images and 70 px on 224x224 ones (0.31 of the side at both sizes). torchvision keeps the 32 px
    at every size, which at 16x16 shifts the image wholly out of frame for about half of the 31 magnitudes.
    Here the largest translation is ``TRIVIALAUGMENT_TRANSLATE_FRACTION`` x the side, so 32x32 images get exactly
    torchvision's and the paper's magnitudes. Rotation (up to 135 degrees), shear (up to 0.99) and the colour ops
    are dimensionless and stay as they are.
    """

    _AUGMENTATION_SPACE = {
        **v2.TrivialAugmentWide._AUGMENTATION_SPACE,
        "TranslateX": (
            lambda num_bins, height, width: torch.linspace(0.0, TRIVIALAUGMENT_TRANSLATE_FRACTION * width, num_bins),
            True,
        ),
        "TranslateY": (
            lambda num_bins, height, width: torch.linspace(0.0, TRIVIALAUGMENT_TRANSLATE_FRACTION * height, num_bins),
            True,
        ),
    }


def _policy_transform(candidate: Candidate) -> v2.Transform | None:
    """The uint8 image-level transform of the candidate's policy (None for ``none`` and ``random_erasing``, which
    acts on float images)."""
    args = dict(candidate.policy_args)
    if candidate.policy == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy(args["policy"]))
    if candidate.policy == "randaugment":
        return v2.RandAugment(num_ops=args["num_ops"], magnitude=args["magnitude"])
    if candidate.policy == "trivialaugment":
        return ScaledTrivialAugmentWide()
    if candidate.policy == "augmix":
        return v2.AugMix(severity=args["severity"])
    return None


def build_train_transform(candidate: Candidate, bundle: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """Training transform: uint8 image [C,H,W] -> float32 normalised [C,H,W].

    Order: RandomCrop(bundle.image_size, padding=bundle.crop_padding), RandomHorizontalFlip if ``bundle.hflip``, the
    candidate's policy on uint8, ToDtype(float32, scale=True), RandomErasing if that is the policy, then
    Normalize(bundle.mean, bundle.std).
    """
    steps: list[v2.Transform] = [v2.RandomCrop(bundle.image_size, padding=bundle.crop_padding)]
    if bundle.hflip:
        steps.append(v2.RandomHorizontalFlip())
    policy = _policy_transform(candidate)
    if policy is not None:
        steps.append(policy)
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if candidate.policy == "random_erasing":
        steps.append(v2.RandomErasing(p=dict(candidate.policy_args)["p"]))
    steps.append(v2.Normalize(list(bundle.mean), list(bundle.std)))
    return v2.Compose(steps)


def build_eval_transform(bundle: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """Evaluation transform: uint8 image [C,H,W] -> float32 [C,H,W] scaled to [0, 1] and normalised by
    ``bundle.mean`` / ``bundle.std``."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(bundle.mean), list(bundle.std))])


def build_batch_mix(
    candidate: Candidate, num_classes: int
) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
    """The candidate's batch mix, or None without one: (images [B,C,H,W] float, labels [B] int64) -> (mixed images
    [B,C,H,W], soft targets [B, num_classes] float32 whose rows sum to 1). Each image is mixed with the one before it
    in the batch (torchvision's CutMix / MixUp)."""
    if candidate.mix is None:
        return None
    alpha = dict(candidate.mix_args)["alpha"]
    if candidate.mix == "cutmix":
        return v2.CutMix(alpha=alpha, num_classes=num_classes)
    return v2.MixUp(alpha=alpha, num_classes=num_classes)


@dataclass(frozen=True)
class KnobDomain:
    """The values a structured search space lets one knob take: listed ``choices`` (one choice = a fixed knob), or,
    when ``choices`` is empty, the range [low, high], sampled on a log scale if ``log``."""

    spec: KnobSpec
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False

    @property
    def fixed(self) -> bool:
        """True when the knob has a single value and is not searched."""
        return len(self.choices) == 1

    def describe(self) -> str:
        """The domain in words, e.g. ``integer in [1, 3]`` or ``one of cifar10, svhn``."""
        if self.choices:
            return "one of " + ", ".join(_format_value(value) for value in self.choices)
        kind = "integer" if self.spec.value_type is int else "float"
        return f"{kind} in [{self.low!r}, {self.high!r}]" + (", log scale" if self.log else "")

    def contains(self, value: Any) -> bool:
        """Whether ``value`` lies in the domain."""
        if self.choices:
            return value in self.choices
        return self.low <= value <= self.high

    def representatives(self) -> list[Any]:
        """The values :meth:`SearchSpace.candidates` lists: every choice, or for a range the knob's default clamped
        into [low, high]."""
        if self.choices:
            return list(self.choices)
        return [min(max(self.spec.default, self.low), self.high)]

    def suggest(self, trial: Any, name: str) -> Any:
        """A value for parameter ``name`` from an Optuna trial (suggest_categorical / suggest_int / suggest_float)."""
        if self.choices:
            return trial.suggest_categorical(name, list(self.choices))
        if self.spec.value_type is int:
            return trial.suggest_int(name, self.low, self.high, log=self.log)
        return trial.suggest_float(name, self.low, self.high, log=self.log)


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
                args[knob] = params[key]
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
                    f"{self.name}.{knob}={_format_value(args[knob])} is outside the space; allowed: {domain.describe()}"
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
RANGE_KEYS = ("low", "high", "log")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a mapping key given twice (plain PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path) -> Any:
    """The parsed YAML document at ``path``; a one-line DaqSearchError if it is missing or malformed."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DaqSearchError(f"{path}: no such file; allowed: a search-space YAML file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DaqSearchError(f"{path}: cannot read ({error}); allowed: a UTF-8 YAML file") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        problem = error.problem or error.context or "malformed"
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "document"
        allowed = "valid YAML, each key once"
        raise DaqSearchError(f"{path}: {where}: malformed YAML: {problem}; allowed: {allowed}") from None
    except yaml.YAMLError as error:
        problem = " ".join(str(error).split())
        raise DaqSearchError(f"{path}: malformed YAML: {problem}; allowed: a YAML mapping") from None


def _knob_domain(spec: KnobSpec, raw: Any, where: str) -> KnobDomain:
    """The domain a YAML knob value describes: a scalar fixes the knob, a list gives choices, a mapping
    ``{low, high, log}`` a numeric range."""
    shapes = f"a value, a list of values, or {{low, high, log}} within {spec.describe()}"
    if isinstance(raw, Mapping):
        if spec.value_type is str:
            allowed = f"a value or a list, {spec.describe()}"
            raise DaqSearchError(f"{where}: a range needs a numeric knob; allowed: {allowed}")
        unknown = [key for key in raw if key not in RANGE_KEYS]
        if unknown:
            raise DaqSearchError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(RANGE_KEYS)}")
        for key in ("low", "high"):
            if key not in raw:
                raise DaqSearchError(f"{where}: missing {key!r}; allowed: {{low, high, log}} within {spec.describe()}")
        low, high = spec.check(raw["low"], f"{where}.low"), spec.check(raw["high"], f"{where}.high")
        log = raw.get("log", False)
        if not isinstance(log, bool):
            raise DaqSearchError(f"{where}.log: {log!r} is not a boolean; allowed: true, false")
        if low > high:
            raise DaqSearchError(f"{where}: low {low!r} > high {high!r}; allowed: low <= high")
        if log and low <= 0:
            raise DaqSearchError(f"{where}.log: log scale needs low > 0, got {low!r}; allowed: low > 0 with log")
        if low == high:
            return KnobDomain(spec, choices=(low,))
        return KnobDomain(spec, low=low, high=high, log=log)
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
    document = _read_yaml(path)
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

"""Job specs (``jobs/*.yaml``) and winner files: validated once at load, then passed inside as typed objects.

Every problem with a file (missing, not YAML, an unknown key, a value out of range, a search space or candidate that
does not exist) raises :class:`~daq_search.errors.DaqSearchError` with one line naming the file, the field and what
is allowed, before any Ray work starts. Relative paths inside a job file (``search_space``, ``teacher.checkpoint``,
``data.root``, a ``data.val_pool`` folder) are resolved against the job file's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from .candidates import Candidate, parse_candidate
from .data import DATASETS, VAL_POOLS, DataBundle, DataSpec, load_student_data
from .errors import DaqSearchError
from .files import check_run_name, clip, read_yaml
from .metric import METRIC_MODES
from .models import list_models
from .quant import QUANT_METHODS
from .selection import (
    DEFAULT_BRANCH_AT,
    DEFAULT_EARLY_STOPPING,
    DEFAULT_FINALISTS,
    DEFAULT_FINALISTS_BY,
    DEFAULT_NUM_SAMPLES,
    DEFAULT_OBJECTIVE,
    DEFAULT_TRUNK,
    default_trial_epochs,
)
from .spaces import SearchSpace, load_search_space

MAX_EPOCHS = 10_000
MAX_NUM_SAMPLES = 100_000


def _one_of(value: str, allowed, what: str) -> str:
    """``value`` when it is one of ``allowed``; else ValueError ``unknown <what> 'value'; allowed: a, b, ...``."""
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(allowed)}")
    return value


def _run_name(name: str) -> str:
    try:
        return check_run_name(name)
    except DaqSearchError as err:
        raise ValueError(str(err).removeprefix("name: ")) from None


RunName = Annotated[str, AfterValidator(_run_name)]
"""A run name: the one rule of :func:`daq_search.files.check_run_name`."""


class _Strict(BaseModel):
    """A config section: unknown keys are errors, values are immutable after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    """Which data set, where it lives, and how it is split."""

    name: str = "digits"
    root: str | None = None
    image_size: StrictInt | None = Field(None, ge=8, le=512)
    train_per_class: StrictInt | None = Field(None, ge=1)
    val_per_class: StrictInt | None = Field(None, ge=1)
    seed: StrictInt = 0
    download: bool = False
    val_pool: str = Field("split", min_length=1)
    """``split`` (the split's own validation images), ``teacher_unused`` (those plus the teacher split's unused
    training images) or a folder of the user's labelled images, relative to the job file
    (:func:`daq_search.data.folder_validation`)."""

    @field_validator("name")
    @classmethod
    def _known_data_set(cls, name: str) -> str:
        return _one_of(name, DATASETS, "data set")

    def spec(self) -> DataSpec:
        """The data module's spec for this section."""
        return DataSpec(**self.model_dump())


class RecipeConfig(_Strict):
    """How a model is trained: epochs, batch size, optimiser and learning-rate schedule."""

    epochs: StrictInt = Field(10, ge=1, le=MAX_EPOCHS)
    batch_size: StrictInt = Field(128, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: Literal["cosine", "constant"] = "cosine"
    precision: Literal["fp32", "bf16"] = "fp32"


def _known_model(name: str) -> str:
    return _one_of(name, list_models(), "model")


def _valid_candidate(text: str) -> str:
    try:
        return parse_candidate(text).id
    except DaqSearchError as err:
        raise ValueError(str(err)) from None


ModelName = Annotated[str, AfterValidator(_known_model)]
CandidateId = Annotated[str, AfterValidator(_valid_candidate)]
"""A candidate's canonical id (any spelling that parses is accepted and normalised)."""


class TeacherConfig(_Strict):
    """The full-precision teacher: a checkpoint to load, or how to train it (once, then cached).

    ``train_per_class`` is the split of the job's data set the teacher is (or was) trained on when it is larger than
    the student's: that many images per class, drawn with the same ``data.seed``, so the student's training images
    are among the teacher's (a teacher that knows more than the student's data, as in patient distillation). The
    student then uses that split's normalisation and its test set, which holds no image either model trained on.
    """

    model: ModelName = "resnet8"
    width: float = Field(1.0, gt=0)
    checkpoint: str | None = None
    augment: CandidateId = "none"
    recipe: RecipeConfig = RecipeConfig(epochs=30)
    seed: StrictInt = 0
    train_per_class: StrictInt | None = Field(None, ge=1)


class StudentConfig(_Strict):
    """The student architecture and where its weights start: the teacher's (as in the paper) or from scratch."""

    model: ModelName = "resnet8"
    width: float = Field(1.0, gt=0)
    init: Literal["teacher", "scratch"] = "teacher"


class QuantConfig(_Strict):
    """Fake-quantisation of the student: method and bit widths (first conv and last linear get ``first_last_bits``)."""

    method: str = "lsq"
    wbits: StrictInt = Field(2, ge=2, le=8)
    abits: StrictInt = Field(2, ge=2, le=8)
    first_last_bits: StrictInt | None = Field(8, ge=2, le=8)

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        return _one_of(method, QUANT_METHODS, "quantizer")


class KDConfig(_Strict):
    """Loss ``gamma * CE + alpha * T^2 * KL(teacher || student)``; ``gamma = 0`` is SQAKD's label-free loss."""

    gamma: float = Field(1.0, ge=0)
    alpha: float = Field(2.0, ge=0)
    temperature: float = Field(4.0, gt=0)


class ScorerConfig(_Strict):
    """The DA score: CMI weight ``lam``, softmax temperature, and the seeded stratified scoring subset of train."""

    lam: float = Field(1.0, ge=0)
    temperature: float = Field(1.0, gt=0)
    subset: StrictInt = Field(512, ge=20)
    batch_size: StrictInt = Field(256, ge=1)
    t_stddev_group: StrictInt = Field(5, ge=1)
    t_stddev_epochs: StrictInt = Field(2, ge=1)


class SearcherConfig(_Strict):
    """Optuna TPE: seed, number of trials, and known-good candidates to evaluate first."""

    seed: StrictInt = 0
    num_samples: StrictInt = Field(DEFAULT_NUM_SAMPLES, ge=1, le=MAX_NUM_SAMPLES)
    points_to_evaluate: list[CandidateId] = []


class SchedulerConfig(_Strict):
    """ASHA early stopping on the objective; off by default (every trial runs its budget to the end, see
    :mod:`daq_search.selection`)."""

    enabled: bool = DEFAULT_EARLY_STOPPING
    grace_period: StrictInt = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)


class BranchConfig(_Strict):
    """Late-phase branching (``branch: {}``; the default is independent trials and finalists,
    :mod:`daq_search.selection`): a trunk student trains under ``trunk`` for ``at`` of ``final.recipe.epochs``, then
    each trial continues it under its candidate to the end of the schedule. A winner file also names the trunk's
    state (``checkpoint``), which the final training continues."""

    trunk: CandidateId = DEFAULT_TRUNK
    at: float = Field(DEFAULT_BRANCH_AT, gt=0, lt=1)
    checkpoint: str | None = None


class ResourcesConfig(_Strict):
    """What one trial reserves: CPUs and a (fractional) GPU share (0.25: four trials share one GPU).

    ``loader_workers`` overrides the number of DataLoader worker processes of a trial (default: one per reserved
    CPU beyond the first, which trains; see :func:`daq_search.kd.loader_workers`).
    """

    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    loader_workers: int | None = Field(None, ge=0)


class FinalConfig(_Strict):
    """The final distributed QAT+KD training of the winner."""

    recipe: RecipeConfig = RecipeConfig(epochs=30)
    workers: StrictInt = Field(2, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: bool = False
    baseline: CandidateId | None = "none"
    finalists: StrictInt = Field(DEFAULT_FINALISTS, ge=1)
    """How many of the search's candidates the final training trains to the end (no more than the search trained);
    the best on validation ships, the baseline included."""
    finalists_by: Literal["screen", "strength"] = DEFAULT_FINALISTS_BY
    """How the search names them (:mod:`daq_search.finalists`): ``screen``, the trials' winner and the best of each
    other strength tier; ``strength``, the candidates at the golden points of the strength order, whatever the
    trials read."""


class CalibrateRulesConfig(_Strict):
    """The rules a calibration chooses among: every objective in ``objectives`` (default: every metric a trial
    reports, :data:`~daq_search.metric.METRIC_MODES`) read after every budget in ``budgets`` (fractions of the
    anchors' full budget ``calibrate.epochs``; each budget is a short training with its own complete schedule)."""

    objectives: list[str] | None = None
    budgets: list[float] = [0.1, 0.25, 0.5]

    @field_validator("objectives")
    @classmethod
    def _known_objectives(cls, objectives: list[str] | None) -> list[str] | None:
        if objectives is None:
            return None
        if not objectives:
            raise ValueError("an empty list chooses nothing; allowed: leave it out (every rule) or name metrics")
        for objective in objectives:
            _one_of(objective, METRIC_MODES, "metric")
        return list(dict.fromkeys(objectives))

    @field_validator("budgets")
    @classmethod
    def _fractions(cls, budgets: list[float]) -> list[float]:
        if not budgets or any(not 0 < budget <= 1 for budget in budgets):
            raise ValueError("each budget is a fraction of calibrate.epochs; allowed: a non-empty list in (0, 1]")
        return budgets


class CalibrateConfig(_Strict):
    """A self-calibrating search (off unless the job has this section): ``anchors`` (candidates trained to their
    full budget first; default: three chosen from the search space, mild to strong, see
    :func:`daq_search.calibrate.default_anchors`), ``epochs`` (their full budget; default ``final.recipe.epochs``)
    and ``rules`` (the objectives and budgets to choose among)."""

    anchors: list[CandidateId] | None = None
    epochs: int | None = Field(None, ge=1)
    rules: CalibrateRulesConfig = CalibrateRulesConfig()

    @field_validator("anchors")
    @classmethod
    def _two_anchors(cls, anchors: list[str] | None) -> list[str] | None:
        if anchors is not None and len(set(anchors)) < 2:
            raise ValueError("a ranking needs at least 2 different anchors; allowed: 2 or more candidate ids")
        return None if anchors is None else list(dict.fromkeys(anchors))


class CalibrationRecord(_Strict):
    """What a calibration chose, as written into ``winner.yaml``: the search's objective (``rule``) and trial
    budget in epochs (``budget``), the rule's Kendall agreement with the anchors' final accuracy (None on a
    fallback), the anchors, why the job's own objective was kept (``fallback``, else None), the anchors' full
    budget (``anchor_epochs``) and each fully trained anchor's reusable checkpoint folder (``checkpoints``)."""

    rule: str
    budget: int = Field(ge=1)
    agreement: float | None = None
    anchors: list[str]
    fallback: str | None = None
    anchor_epochs: int = Field(ge=1)
    checkpoints: dict[str, str] = {}


class JobSpec(_Strict):
    """One daq-search job: what to search, how each trial trains, and how the winner is trained to the end.

    A winner file is the same spec with ``candidate`` set to the winning augmentation and
    ``teacher.checkpoint`` set to the teacher the search used.
    """

    name: RunName
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    quant: QuantConfig = QuantConfig()
    kd: KDConfig = KDConfig()
    search_space: str = "search_spaces/default.yaml"
    scorer: ScorerConfig = ScorerConfig()
    trial: RecipeConfig = RecipeConfig()
    searcher: SearcherConfig = SearcherConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    resources: ResourcesConfig = ResourcesConfig()
    max_concurrent_trials: StrictInt = Field(2, ge=1)
    max_failures: StrictInt = Field(0, ge=0)
    objective: str = DEFAULT_OBJECTIVE
    storage: str = "runs"
    final: FinalConfig = FinalConfig()
    candidate: CandidateId | None = None
    finalists: list[CandidateId] = []
    calibrate: CalibrateConfig | None = None
    calibration: CalibrationRecord | None = None
    branch: BranchConfig | None = None

    @field_validator("objective")
    @classmethod
    def _known_objective(cls, objective: str) -> str:
        return _one_of(objective, METRIC_MODES, "metric")

    @model_validator(mode="before")
    @classmethod
    def _default_selection(cls, data: Any) -> Any:
        """A job without a ``trial`` section trains the final recipe in each trial: with ``branch`` (each branch
        continues the trunk's schedule) to its end, without it (the default) for :func:`default_trial_epochs` of its
        epochs."""
        if not isinstance(data, dict) or "trial" in data:
            return data
        try:
            recipe = FinalConfig.model_validate(data.get("final", {})).recipe
        except ValidationError:
            return data  # the final section's own error is reported
        if data.get("branch") is None:
            recipe = recipe.model_copy(update={"epochs": default_trial_epochs(recipe.epochs)})
        return {**data, "trial": recipe.model_dump()}

    @model_validator(mode="after")
    def _branches_continue_the_final_recipe(self) -> JobSpec:
        if self.branch is None:
            return self
        if self.trial != self.final.recipe:
            raise ValueError(
                "trial: a branching search's trials continue the trunk under final.recipe; allowed: leave trial "
                "out, or set branch: null for independent trials"
            )
        if self.final.recipe.epochs < 2:
            raise ValueError("branch: needs final.recipe.epochs >= 2 (a trunk and a branch); allowed: branch: null")
        if self.scheduler.enabled:
            raise ValueError(
                "branch: branches are read at their end, not stopped early; allowed: scheduler.enabled: false"
            )
        if self.calibrate is not None:
            raise ValueError("branch: a calibrated search runs independent trials; allowed: branch: null")
        return self

    @model_validator(mode="after")
    def _student_matches_teacher(self) -> JobSpec:
        if self.student.init == "teacher" and (self.student.model, self.student.width) != (
            self.teacher.model,
            self.teacher.width,
        ):
            raise ValueError(
                f"student.init: 'teacher' needs the student to be the teacher's architecture "
                f"({self.teacher.model}, width {self.teacher.width}); use init: scratch for a different student"
            )
        return self

    @model_validator(mode="after")
    def _teacher_split_holds_the_students(self) -> JobSpec:
        wanted = self.teacher.train_per_class
        if wanted is not None and (self.data.train_per_class is None or wanted < self.data.train_per_class):
            raise ValueError(
                f"teacher.train_per_class: {wanted} must be at least data.train_per_class "
                f"({self.data.train_per_class}: all images when unset); allowed: a larger split, or leave it out"
            )
        return self

    @model_validator(mode="after")
    def _teacher_unused_needs_a_larger_teacher_split(self) -> JobSpec:
        wanted, own = self.teacher.train_per_class, self.data.train_per_class
        if self.data.val_pool == "teacher_unused" and (wanted is None or own is None or wanted <= own):
            raise ValueError(
                "data.val_pool: 'teacher_unused' needs teacher.train_per_class larger than data.train_per_class; "
                "allowed: split"
            )
        return self

    def teacher_data(self) -> DataConfig:
        """The split the teacher trains on: ``data`` with ``teacher.train_per_class`` images per class when set."""
        if self.teacher.train_per_class is None:
            return self.data
        return self.data.model_copy(update={"train_per_class": self.teacher.train_per_class})

    def load_data(self) -> DataBundle:
        """The student's data (:func:`daq_search.data.load_student_data` of ``data`` and :meth:`teacher_data`)."""
        return load_student_data(self.data.spec(), self.teacher_data().spec())

    @property
    def mode(self) -> str:
        """``min`` or ``max``: the direction in which the objective improves."""
        return METRIC_MODES[self.objective]

    def load_search_space(self) -> SearchSpace:
        """The search space this job names (its path was made absolute at load)."""
        return load_search_space(self.search_space)

    def winner_candidate(self) -> Candidate:
        """The candidate a winner file carries; an error when this spec is a plain job, not a winner."""
        if self.candidate is None:
            raise DaqSearchError(
                "candidate: not set; `daq-search train` takes a winner.yaml written by a search "
                "(or a job file with `candidate: <augmentation id>`)"
            )
        return parse_candidate(self.candidate)


def _format_error(source: str, err: ValidationError) -> str:
    """One line for the first validation problem: ``file: field.path: problem``."""
    first = err.errors()[0]
    loc = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        section: Any = JobSpec
        for part in first["loc"][:-1]:
            section = section.model_fields[part].annotation
            section = next((arg for arg in get_args(section) if hasattr(arg, "model_fields")), section)
        allowed = ", ".join(section.model_fields)
        return f"{source}: {loc}: unknown key; allowed: {allowed}"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] in ("missing",):
        return f"{source}: {loc}: required field is missing"
    return f"{source}: {loc}: {msg} (got {clip(first.get('input'))})"


def _resolve(base: Path, path: str | None) -> str | None:
    """``path`` made absolute against ``base`` (the job file's folder); None stays None."""
    if path is None:
        return None
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def job_from_dict(raw: Any, source: str, base_dir: Path) -> JobSpec:
    """Validate a parsed job mapping; ``source`` names it in errors and ``base_dir`` anchors relative paths."""
    if not isinstance(raw, dict):
        raise DaqSearchError(f"{source}: expected a YAML mapping of job fields at the top level")
    try:
        job = JobSpec.model_validate(raw)
    except ValidationError as err:
        raise DaqSearchError(_format_error(source, err)) from None
    job = job.model_copy(
        update={
            "search_space": _resolve(base_dir, job.search_space),
            "teacher": job.teacher.model_copy(update={"checkpoint": _resolve(base_dir, job.teacher.checkpoint)}),
            "data": job.data.model_copy(
                update={
                    "root": _resolve(base_dir, job.data.root),
                    "val_pool": job.data.val_pool
                    if job.data.val_pool in VAL_POOLS
                    else _resolve(base_dir, job.data.val_pool),
                }
            ),
        }
    )
    if not Path(job.search_space).is_file():
        raise DaqSearchError(f"{source}: search_space: no such file {job.search_space}")
    if job.teacher.checkpoint is not None and not Path(job.teacher.checkpoint).is_file():
        raise DaqSearchError(f"{source}: teacher.checkpoint: no such file {job.teacher.checkpoint}")
    space = job.load_search_space()
    for point in job.searcher.points_to_evaluate:
        try:
            space.params_of(parse_candidate(point))
        except DaqSearchError as err:
            raise DaqSearchError(f"{source}: searcher.points_to_evaluate: {err}") from None
    if job.calibrate is not None and job.calibrate.anchors is None and len(space.candidates()) < 2:
        raise DaqSearchError(
            f"{source}: calibrate.anchors: the search space has fewer than 2 candidates to rank; "
            "allowed: a space with 2 or more candidates"
        )
    for anchor in (job.calibrate.anchors or []) if job.calibrate is not None else []:
        try:
            space.params_of(parse_candidate(anchor))
        except DaqSearchError as err:
            raise DaqSearchError(f"{source}: calibrate.anchors: {err}") from None
    return job


def load_job(path: str | Path) -> JobSpec:
    """Read and validate a job (or winner) YAML file."""
    path = Path(path)
    raw = read_yaml(path, "a job YAML file")
    return job_from_dict(raw, str(path), path.resolve().parent)


def job_to_yaml(job: JobSpec) -> str:
    """The spec as YAML text that :func:`load_job` reads back to an equal spec (paths are absolute)."""
    return yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False)

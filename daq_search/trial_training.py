"""One trial's training, as a plain object: the quantized student distilled from the teacher under one candidate,
epoch by epoch, with the per-epoch metrics a search trial reports. Used by the search's Tune trials and by the
benchmark, so both measure the same pipeline."""

from __future__ import annotations

import time
from typing import Any

import torch

from .candidates import Candidate
from .config import KDConfig, QuantConfig, RecipeConfig, ScorerConfig, StudentConfig
from .data import DataBundle
from .kd import binomial_se, eval_loader, evaluate, make_optimizer, make_scheduler, place, run_epoch, train_loader
from .metric import score_candidate
from .student import build_student
from .transforms import build_batch_mix

EPOCH_SEED_STRIDE = 1_000_003
"""Epoch ``e`` of a trial with seed ``s`` draws its batch mixes with seed ``s * stride + e``; its order and image
augmentations come from the loader's per-image seeds (:func:`daq_search.kd.item_seed`)."""


class TrialTraining:
    """The student, optimiser and cosine (or constant) schedule of one trial over ``recipe.epochs`` epochs.

    ``student_seed`` seeds the student's initial weights (scratch init), ``seed`` the data order and augmentation
    randomness of every epoch; ``scoring_set`` is the subset the DA score is read on (None: no score), with its
    augmentation draws seeded by ``score_seed``. ``workers`` loader processes prepare the augmented batches (pinned
    memory on a GPU); the batches are the same whatever their number.
    """

    def __init__(
        self,
        *,
        teacher: torch.nn.Module,
        bundle: DataBundle,
        candidate: Candidate,
        student: StudentConfig,
        quant: QuantConfig,
        kd: KDConfig,
        recipe: RecipeConfig,
        scorer: ScorerConfig,
        scoring_set: Any,
        student_seed: int,
        seed: int,
        score_seed: int,
        device: Any = "cpu",
        workers: int = 0,
    ):
        self.bundle, self.candidate = bundle, candidate
        self.kd, self.recipe, self.scorer, self.scoring_set = kd, recipe, scorer, scoring_set
        self.seed, self.score_seed, self.device = seed, score_seed, device
        self.student = place(build_student(student, quant, bundle, teacher.cpu(), seed=student_seed), device)
        self.teacher = place(teacher, device)
        pin_memory = torch.device(device).type == "cuda"
        self.loader = train_loader(
            bundle.train, candidate, bundle, recipe.batch_size, seed, workers=workers, pin_memory=pin_memory
        )
        self.optimizer = make_optimizer(self.student.parameters(), recipe)
        self.scheduler = make_scheduler(self.optimizer, recipe, len(self.loader))
        self.mix = build_batch_mix(candidate, bundle.num_classes)
        self.val = eval_loader(bundle.val, bundle)

    def state_dict(self) -> dict:
        """Student, optimiser and schedule state (what a trial checkpoint holds besides its epoch)."""
        return {
            "model": self.student.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a :meth:`state_dict`."""
        self.student.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """Train epoch ``epoch`` (1-based); returns ``train_loss`` (nats), ``images``, ``images_per_s`` and
        ``train_seconds`` (wall)."""
        torch.manual_seed(self.seed * EPOCH_SEED_STRIDE + epoch)
        self.loader.sampler.set_epoch(epoch)
        stats = run_epoch(
            self.student,
            self.loader,
            self.optimizer,
            mix=self.mix,
            teacher=self.teacher,
            kd=self.kd,
            scheduler=self.scheduler,
            device=self.device,
            precision=self.recipe.precision,
        )
        return {
            "train_loss": stats.loss,
            "images": stats.images,
            "images_per_s": stats.images_per_s,
            "train_seconds": stats.seconds,
        }

    def read_metrics(self) -> dict[str, float]:
        """The student's per-epoch metrics now: ``val_acc`` (fraction) with its binomial standard error
        ``val_acc_se``, ``val_loss`` (nats) and, with a scoring set, the DA score terms ``score``, ``score_ce``,
        ``cmi``, ``align``, ``sample_ce`` (nats); ``read_seconds`` is their wall time."""
        start = time.perf_counter()
        val_acc, val_loss = evaluate(self.student, self.val, self.device)
        metrics = {"val_acc": val_acc, "val_acc_se": binomial_se(val_acc, len(self.bundle.val)), "val_loss": val_loss}
        if self.scoring_set is not None:
            da = score_candidate(
                self.student,
                self.scoring_set,
                self.candidate,
                bundle=self.bundle,
                lam=self.scorer.lam,
                temperature=self.scorer.temperature,
                batch_size=self.scorer.batch_size,
                seed=self.score_seed,
                device=self.device,
            )
            metrics.update(score=da.score, score_ce=da.score_ce, cmi=da.cmi, align=da.align, sample_ce=da.sample_ce)
        metrics["read_seconds"] = time.perf_counter() - start
        return metrics

"""The closed loop: refit a model's temperature on its live labels, prove the new version in shadow, promote it
or reject it, and roll back on request. Every decision is recorded with its evidence.

1. **Trigger**: ``POST /v1/models/{name}/recalibrate``, or the policy (``CALIBSERVE_RECALIBRATION=propose|auto``,
   every ``CALIBSERVE_RECALIBRATION_INTERVAL_SECONDS``) when the live label checks say warning or critical.
2. **Fit** (``service/training/recalibrate.py``): the live window's labels of the version serving now, split by
   label time (older fit, newer check), one factor on the served temperature. Guardrails: at least
   ``CALIBSERVE_RECALIBRATION_MIN_LABELS`` labels and ``CALIBSERVE_RECALIBRATION_MIN_PER_CLASS`` of every class
   seen; no fit while the older (fit) part of the window is still calibrated as served (the drift is younger
   than it); a refit whose check split still shows an ECE interval wholly above the warning threshold is rejected
   (temperature cannot repair that drift: the ranking itself changed), and so is one where the live accuracy
   drop is critical (a temperature cannot change accuracy).
3. **Build**: a new artifact version of the same graph, its card saying what it is, loaded through the same
   verification as any artifact, as the challenger ``<name>.recalibrated``.
4. **Prove**: it shadows the model: the same requests, scored by both, compared when labels arrive.
5. **Decide** when ``CALIBSERVE_RECALIBRATION_MIN_NEW_LABELS`` (n) labelled requests were scored by both, and
   if undecided at 2n and 4n (``MAX_LOOKS``, each look's paired NLL interval at 98.3%: Bonferroni, so an equally
   good challenger is promoted in at most 2.5% of cases over all looks): the challenger's NLL better with its
   interval excluding zero and its answers' classes identical → promoted (``auto``); worse → rejected and
   unloaded; still undecided after the last look (or with ``propose``) → kept in shadow for an operator.
6. **Rollback**: ``POST .../rollback`` loads the version that served before the last promotion, at once.

One recalibration per model at a time (a lock; a second is told so); the fit and the build run in a thread,
serving never waits on them. Decisions are appended to ``<data_dir>/recalibrations/<name>/decisions.jsonl``
beside the artifacts they made.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from service.errors import ConfigurationError, Conflict, ModelNotFound, ServiceError
from service.inference.artifact import resolve_model_path
from service.monitoring.comparison import compare_shadow
from service.repository import ModelRepository
from service.settings import Settings

logger = logging.getLogger("calibserve.recalibration")

Kind = Literal["refused", "fit", "proposal", "promotion", "rejection", "rollback"]
CHALLENGER_SUFFIX = ".recalibrated"
# Looks at the shadow evidence (at n, 2n, 4n new labels), and the level of each look's paired NLL interval:
# 0.05 spread over the looks (Bonferroni), so an equally good challenger is promoted in at most 2.5% of cases.
MAX_LOOKS = 3
PROMOTION_LEVEL = 1.0 - 0.05 / MAX_LOOKS


@dataclass(frozen=True, slots=True)
class Decision:
    """One step of the loop, with the evidence it was taken on."""

    id: str
    model: str
    kind: Kind
    at: float
    trigger: str  # "api", "policy"
    from_version: str
    to_version: str | None
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass
class Proposal:
    """A recalibrated version in shadow, waiting for its evidence."""

    challenger: str
    path: Path
    version: str
    from_version: str
    from_path: Path
    started: float
    looks: int = 0  # how often its evidence was judged inconclusive
    judged: bool = False  # kept for an operator: never judged again automatically


class DecisionLog:
    """Decisions of one data directory, one JSON line each, per model; read back in order."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()

    def append(self, decision: Decision) -> Decision:
        path = self.root / decision.model / "decisions.jsonl"
        with self._lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as out:
                out.write(json.dumps(asdict(decision), sort_keys=True) + "\n")
        logger.info("recalibration of %s: %s (%s)", decision.model, decision.kind, decision.reason)
        return decision

    def read(self, model: str) -> list[dict[str, Any]]:
        path = self.root / model / "decisions.jsonl"
        if not path.exists():
            return []
        with self._lock:
            return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class Recalibrator:
    def __init__(self, repository: ModelRepository, settings: Settings) -> None:
        self.repository = repository
        self.settings = settings
        self.root = settings.data_dir / "recalibrations"
        self.decisions = DecisionLog(self.root)
        self.proposals: dict[str, Proposal] = {}
        self.previous: dict[str, tuple[Path, str]] = {}  # model -> (path, version) before the last promotion
        self._locks: dict[str, asyncio.Lock] = {}
        self._task: asyncio.Task[None] | None = None

    # -- the policy ------------------------------------------------------------------------------------
    def unsupported(self) -> str | None:
        """Why this server cannot recalibrate (None: it can): the loop's state lives in one process."""
        if self.settings.repository_poll_seconds is not None:
            return (
                "recalibration cannot run with CALIBSERVE_REPOSITORY_POLL_SECONDS: the poll would replace a "
                "promoted version with the repository's file"
            )
        if self.settings.workers > 1:
            return "recalibration needs CALIBSERVE_WORKERS=1: each worker would refit and promote on its own"
        return None

    async def start(self) -> None:
        """Restore promotions that outlived a restart, then start the policy (if on). A policy that cannot run
        here is a configuration error at start-up, not a silent no-op."""
        if self.settings.recalibration != "off":
            why = self.unsupported()
            if why is not None:
                raise ConfigurationError(f"CALIBSERVE_RECALIBRATION={self.settings.recalibration}: {why}")
        if self.unsupported() is None:
            await self._restore()
        if self.settings.recalibration != "off":
            self._task = asyncio.create_task(self._policy(self.settings.recalibration_interval_seconds))

    async def _restore(self) -> None:
        """A promoted version serves again after a restart: the model's last promotion (not rolled back since)
        whose artifact is still there and whose original is the version loaded now."""
        for served in list(self.repository.serving()):
            steps = [d for d in self.decisions.read(served.name) if d["kind"] in ("promotion", "rollback")]
            if not steps or steps[-1]["kind"] != "promotion" or steps[-1]["from_version"] != served.version:
                continue
            promoted = steps[-1]
            directory = self.root / served.name / str(promoted["to_version"])[:16]
            if not (directory / "model.onnx").is_file():
                logger.warning(
                    "recalibration of %s: promoted artifact %s is gone; serving the original", served.name, directory
                )
                continue
            original = (served.path, served.version)
            await self.repository.load(served.name, directory)
            self.previous[served.name] = original
            logger.info("recalibration of %s: restored promoted version %s", served.name, promoted["to_version"][:12])

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _policy(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await self.step()
            except Exception:
                logger.exception("recalibration policy step failed; trying again in %.0f s", seconds)

    async def step(self) -> None:
        """One pass of the policy over every served model (a test or the demo may call it directly)."""
        for served in self.repository.serving():
            name = served.name
            if name.endswith(CHALLENGER_SUFFIX) or self._lock(name).locked():
                continue
            if name in self.proposals:
                await self.decide(name, trigger="policy")
            elif await asyncio.to_thread(self._needs_recalibration, name):  # reads the store: off the loop
                try:
                    await self.recalibrate(name, trigger="policy")
                except ServiceError as exc:
                    logger.warning("recalibration of %s not started: %s", name, exc.message)

    def _needs_recalibration(self, name: str) -> bool:
        """The live ECE check says warning or critical, and if this version's last attempt was refused or
        rejected, half a live window of labels has arrived since (the same labels would be refused again; a
        window that mixed labels from before and after a drift has by then moved on)."""
        served = self.repository.resolve(name)
        health = served.monitor.health()
        if not any(r.code == "live_ece" and r.status in ("warning", "critical") for r in health.reasons):
            return False
        recent = [d for d in self.decisions.read(name) if d["from_version"] == served.version]
        if not recent or recent[-1]["kind"] not in ("refused", "rejection"):
            return True
        newest = float(recent[-1]["evidence"].get("newest_label", 0.0))
        log = self.repository.log
        assert log is not None
        _, _, times = log.labelled_with_times(
            name, served.version, served.engine.card.classes, self.settings.window_labels, self._since()
        )
        return int(np.sum(times > newest)) >= max(1, self.settings.window_labels // 2)

    def _since(self) -> float | None:
        """The live window's time limit: the refit sees the labels the alarm was raised on."""
        hours = self.settings.window_hours
        return None if hours is None else time.time() - hours * 3600

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    # -- fit, build, shadow -----------------------------------------------------------------------------
    async def recalibrate(self, name: str, trigger: str = "api") -> Decision:
        lock = self._lock(name)
        if lock.locked():
            raise Conflict(f"a recalibration of {name!r} is in flight: one at a time", {"model": name})
        async with lock:
            if name.endswith(CHALLENGER_SUFFIX):
                raise Conflict(f"{name!r} is itself a recalibration challenger", {"model": name})
            if self.repository.log is None:
                raise Conflict("prediction logging is off (CALIBSERVE_LOG_PREDICTIONS=false): no labels to fit on")
            why = self.unsupported()
            if why is not None:
                raise Conflict(why)
            if name in self.proposals:
                await self._drop_proposal(name)
            return await self._recalibrate(name, trigger)

    async def _recalibrate(self, name: str, trigger: str) -> Decision:
        from service.training import recalibrate as fit

        served = self.repository.resolve(name)
        card, settings, log = served.engine.card, self.settings, self.repository.log
        assert log is not None
        probs, labels, times = await asyncio.to_thread(
            log.labelled_with_times, name, served.version, card.classes, settings.window_labels, self._since()
        )
        live = fit.live_labels(probs, labels, times)
        base = {"n_labels": int(live.labels.size), "newest_label": float(live.times.max()) if live.times.size else 0.0}
        why = fit.check_enough(
            live, card.n_classes, settings.recalibration_min_labels, settings.recalibration_min_per_class
        )
        if why is not None:
            return self._record(name, "refused", trigger, served.version, None, why, base)
        health = await asyncio.to_thread(served.monitor.health)
        drop = next((r for r in health.reasons if r.code == "live_accuracy_drop"), None)
        if drop is not None and drop.status == "critical":
            reason = f"live accuracy fell by {drop.value:.3f} (critical): a temperature cannot change accuracy"
            return self._record(name, "rejection", trigger, served.version, None, reason, base)
        found = await asyncio.to_thread(fit.refit, card, live, settings.recalibration_check_fraction)
        evidence = base | _refit_evidence(found)
        if found.fit_ece_before < settings.ece_warning:
            reason = (
                f"the older {found.fit_rows.stop} labels (the fit part) are still calibrated as served (ECE "
                f"{found.fit_ece_before:.3f} < warning {settings.ece_warning:g}): the drift is younger than them, "
                "and a fit on them would not see it; waiting for newer labels"
            )
            return self._record(name, "refused", trigger, served.version, None, reason, evidence)
        after = found.check_after.ece
        if after.lower >= settings.ece_warning:  # the interval for the true ECE lies above the warning threshold
            reason = (
                f"the refit (T {found.served_temperature:.4g} -> {found.temperature:.4g}) leaves the check split's "
                f"ECE at {after.value:.3f}, its interval [{after.lower:.3f}, {after.upper:.3f}] above the warning "
                f"threshold {settings.ece_warning:g}: temperature cannot repair this drift"
            )
            return self._record(name, "rejection", trigger, served.version, None, reason, evidence)
        model_bytes = await asyncio.to_thread(resolve_model_path(served.path).read_bytes)
        new_bytes, new_card = await asyncio.to_thread(fit.build_artifact, model_bytes, card, live, found)
        directory = self.root / name / new_card.version[:16]
        path = await asyncio.to_thread(fit.write_artifact, directory, new_bytes, new_card)
        self._record(
            name, "fit", trigger, served.version, new_card.version,
            f"T {found.served_temperature:.4g} -> {found.temperature:.4g} on {found.fit_rows.stop} labels; check "
            f"ECE {found.check_before.ece.value:.3f} -> {after.value:.3f}, NLL {found.check_before.nll.value:.3f} -> "
            f"{found.check_after.nll.value:.3f} on the newest {found.check_rows.stop - found.check_rows.start}",
            evidence | {"artifact": str(path)},
        )  # fmt: skip
        challenger = name + CHALLENGER_SUFFIX
        await self.repository.load(challenger, path.parent)
        self.repository.set_shadow(name, challenger)
        self.proposals[name] = Proposal(
            challenger, path.parent, new_card.version, served.version, served.path, time.time()
        )
        return self._record(
            name, "proposal", trigger, served.version, new_card.version,
            f"{challenger} shadows {name}: promoted once {settings.recalibration_min_new_labels} labelled requests "
            "show its NLL better (paired interval excluding 0)",
            evidence,
        )  # fmt: skip

    # -- decide, promote, roll back ---------------------------------------------------------------------
    async def decide(self, name: str, trigger: str = "policy") -> Decision | None:
        """Judge the proposal in shadow: promote (auto), keep waiting, or reject. None while the evidence is short."""
        proposal = self.proposals.get(name)
        if proposal is None or proposal.judged:
            return None
        champion, challenger = self.repository.resolve(name), self.repository.resolve(proposal.challenger)
        scorer = self.repository.shadow_of(name)
        if scorer is not None:
            await asyncio.to_thread(scorer.drain, 2.0)
        window = self.settings.shadow_window
        needed = self.settings.recalibration_min_new_labels * 2**proposal.looks
        comparison = await asyncio.to_thread(
            compare_shadow, champion.monitor, challenger.monitor, window, PROMOTION_LEVEL
        )
        paired = comparison.labelled
        if paired is None or paired.n < needed:
            return None
        nll = paired.nll.difference
        agreement = comparison.unlabelled.agreement if comparison.unlabelled is not None else 1.0
        evidence = {
            "paired_labels": paired.n,
            "nll_champion": paired.nll.champion.value,
            "nll_challenger": paired.nll.challenger.value,
            "nll_difference": [nll.value, nll.lower, nll.upper],
            "ece_champion": paired.ece.champion.value,
            "ece_challenger": paired.ece.challenger.value,
            "accuracy_difference": paired.accuracy.difference.value,
            "class_agreement": agreement,
            "verdict": paired.verdict,
        }
        if agreement != 1.0 or paired.accuracy.difference.value != 0.0:
            await self._drop_proposal(name)
            return self._record(
                name, "rejection", trigger, proposal.from_version, proposal.version,
                f"the challenger's classes differ from the champion's on {1 - agreement:.2%} of requests", evidence,
            )  # fmt: skip
        if nll.lower > 0.0:
            await self._drop_proposal(name)
            return self._record(
                name, "rejection", trigger, proposal.from_version, proposal.version,
                f"the challenger's NLL is worse by {nll.value:.4f} [{nll.lower:.4f}, {nll.upper:.4f}] on {paired.n} "
                "labelled requests", evidence,
            )  # fmt: skip
        if nll.upper < 0.0 and self.settings.recalibration == "auto":
            return await self._promote(name, trigger, evidence)
        # At most MAX_LOOKS looks, at n, 2n, 4n new labels, each at level 1 - 0.05 / MAX_LOOKS (Bonferroni): the
        # chance of promoting a challenger that is no better stays within 2.5% over all of them (looking on every
        # pass until the interval happened to exclude 0 would promote it sooner or later).
        proposal.looks += 1
        words = "better" if nll.upper < 0.0 else "not significantly different"
        last = proposal.looks >= MAX_LOOKS or self.settings.recalibration != "auto"
        proposal.judged = last
        then = (
            "kept in shadow for an operator to promote (POST .../recalibrations/promote) or replace "
            "(POST .../recalibrate)"
            if last
            else f"looking again at {needed * 2} labelled requests"
        )
        return self._record(
            name, "proposal", trigger, proposal.from_version, proposal.version,
            f"look {proposal.looks} of {MAX_LOOKS} on {paired.n} labelled requests: NLL {words} ({nll.value:+.4f} "
            f"[{nll.lower:+.4f}, {nll.upper:+.4f}], {PROMOTION_LEVEL:.1%} paired interval); {then}",
            evidence,
        )  # fmt: skip

    async def promote(self, name: str) -> Decision:
        """Promote the proposal now (an operator's decision; evidence as it stands)."""
        async with self._lock(name):
            if name not in self.proposals:
                raise ModelNotFound(f"{name!r} has no recalibration proposal to promote", {"model": name})
            return await self._promote(name, "api", {})

    async def _promote(self, name: str, trigger: str, evidence: dict[str, Any]) -> Decision:
        proposal = self.proposals[name]
        await self.repository.load(name, proposal.path)
        self.previous[name] = (proposal.from_path, proposal.from_version)
        await self._drop_proposal(name)
        return self._record(
            name, "promotion", trigger, proposal.from_version, proposal.version,
            f"version {proposal.version[:12]} (recalibrated) now serves {name}; rollback restores "
            f"{proposal.from_version[:12]}",
            evidence,
        )  # fmt: skip

    async def rollback(self, name: str) -> Decision:
        async with self._lock(name):
            before = self.previous.get(name)
            if before is None:
                raise ModelNotFound(f"{name!r} has no promotion to roll back", {"model": name})
            served = self.repository.resolve(name)
            path, version = before
            await self.repository.load(name, path)
            del self.previous[name]
            return self._record(
                name, "rollback", "api", served.version, version,
                f"version {version[:12]} serves {name} again (was {served.version[:12]})", {},
            )  # fmt: skip

    async def _drop_proposal(self, name: str) -> None:
        proposal = self.proposals.pop(name, None)
        if proposal is None:
            return
        self.repository.clear_shadow(name)
        await self.repository.remove(proposal.challenger)

    def _record(
        self,
        name: str,
        kind: Kind,
        trigger: str,
        from_version: str,
        to_version: str | None,
        reason: str,
        evidence: dict[str, Any],
    ) -> Decision:
        decision = Decision(
            uuid.uuid4().hex, name, kind, time.time(), trigger, from_version, to_version, reason, evidence
        )
        return self.decisions.append(decision)

    def state(self, name: str) -> dict[str, Any]:
        proposal = self.proposals.get(name)
        return {
            "model": name,
            "mode": self.settings.recalibration,
            "in_flight": self._lock(name).locked(),
            "proposal": None
            if proposal is None
            else {"challenger": proposal.challenger, "version": proposal.version, "since": proposal.started},
            "can_roll_back_to": None if name not in self.previous else self.previous[name][1],
            "decisions": self.decisions.read(name),
        }


def _refit_evidence(found: Any) -> dict[str, Any]:
    before, after = found.check_before, found.check_after
    return {
        "served_temperature": found.served_temperature,
        "temperature": found.temperature,
        "factor": found.factor,
        "n_fit": found.fit_rows.stop - found.fit_rows.start,
        "n_check": found.check_rows.stop - found.check_rows.start,
        "fit_nll": [found.fit_nll_before, found.fit_nll_after],
        "fit_ece_before": found.fit_ece_before,
        "check_ece_before": [before.ece.value, before.ece.lower, before.ece.upper],
        "check_ece_after": [after.ece.value, after.ece.lower, after.ece.upper],
        "check_nll_before": [before.nll.value, before.nll.lower, before.nll.upper],
        "check_nll_after": [after.nll.value, after.nll.lower, after.nll.upper],
        "check_accuracy": after.accuracy.value,
    }

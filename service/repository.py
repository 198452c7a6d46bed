"""The model repository: every served model by name, loaded, replaced and unloaded while serving.

Why one place: a model's engine, monitor and predictor (with its micro-batcher and inference thread) are
built together from one artifact and must be replaced together. ``ModelRepository`` holds one
``ServedVersion`` per name and swaps it atomically:

* a new version is loaded and verified (the artifact's own checks, then one prediction) beside the old one;
  only then do new requests go to it. A request holds a ``lease`` on the version it started with, so it
  finishes there; the old version's micro-batcher is closed when its last lease ends. A broken artifact
  leaves the old version serving; the failure is logged, counted in /metrics and kept as the model's
  ``reason`` (``GET /v2/repository/index``).
* models are isolated: each has its own micro-batcher and inference thread and its own queue limit, so a
  slow or broken model never blocks another.
* layout: ``CALIBSERVE_MODEL_REPOSITORY/<name>/model.onnx`` (each subdirectory one model), or
  ``CALIBSERVE_MODEL_PATH`` (a repository of one, named by its card). Two versions side by side are two
  names (``digits`` and ``digits-v2``): a card's version is the graph's sha256, known only once it is built,
  so it cannot name a directory ahead of time as Triton's numbered versions do, and each name keeps one
  live window and one card to judge it by.
* shadow scoring: a champion's predictor hands every scored batch to ``offer_shadow``; the challenger
  scores it on its own thread (``service.shadow``), bounded, never on the request path.

The event loop is the only writer of the table; threads (inference, shadow) only read a version reference.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from service.errors import ArtifactError, MalformedRequest, ModelNotFound, ModelNotReady, ServiceError
from service.inference.artifact import MODEL_FILE, load_artifact
from service.inference.engine import BatchPrediction, InferenceEngine
from service.inference.inputs import FREE
from service.monitoring import prometheus as metrics
from service.monitoring.log import PredictionLog
from service.monitoring.monitor import Monitor, MonitorConfig, open_log
from service.prediction import Predictor
from service.request_context import SERVED_MODEL
from service.settings import Settings
from service.shadow import ShadowScorer

logger = logging.getLogger("calibserve.repository")

ModelState = Literal["loading", "ready", "unavailable"]
Fingerprint = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """What ``/v2/repository/index`` and ``/v1/models`` say of one model name."""

    name: str
    version: str | None  # the serving version's card version; None when none serves
    state: ModelState
    reason: str | None  # why it is unavailable, or why the last (re)load failed while the old one serves


class ServedVersion:
    """One loaded artifact serving under a name, and the requests still using it."""

    def __init__(
        self,
        name: str,
        path: Path,
        fingerprint: Fingerprint,
        engine: InferenceEngine,
        monitor: Monitor,
        predictor: Predictor,
    ) -> None:
        self.name = name
        self.path = path
        self.fingerprint = fingerprint
        self.engine = engine
        self.monitor = monitor
        self.predictor = predictor
        self.loaded_at = time.time()
        self.leases = 0
        self.retired = False
        self.closing = False

    @property
    def version(self) -> str:
        return self.engine.card.version

    async def close(self) -> None:
        """Answer what is queued, then stop the inference thread (called once no request holds a lease)."""
        await self.predictor.close()


class _Entry:
    """A model name's slot: the version serving it, and the outcome of the last load."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self.current: ServedVersion | None = None
        self.state: ModelState = "loading"
        self.reason: str | None = None
        self.failed_fingerprint: Fingerprint | None = None
        self.lock = asyncio.Lock()

    def status(self) -> ModelStatus:
        version = None if self.current is None else self.current.version
        return ModelStatus(self.name, version, self.state, self.reason)


def fingerprint(path: Path) -> Fingerprint:
    """Name, size and modification time of each file of an artifact: a change is a new version to load."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    found = []
    for file in files:
        try:
            stat = file.stat()
        except OSError:
            continue
        found.append((file.name, stat.st_size, stat.st_mtime_ns))
    return tuple(found)


def smoke_input(engine: InferenceEngine) -> NDArray[Any]:
    """One all-zero instance of the model's input (a free dimension: length 1), to prove the graph runs."""
    shape = tuple(1 if dim == FREE else dim for dim in engine.signature.instance_shape)
    return np.zeros((1, *shape), dtype=engine.signature.dtype)


def load_engine(settings: Settings, path: Path | None = None, name: str | None = None) -> InferenceEngine:
    """An engine for the artifact at ``path`` (default: ``CALIBSERVE_MODEL_PATH``) served as ``name`` (default:
    its card's name), with the settings' abstention, conformal and threading options."""
    return InferenceEngine(
        load_artifact(settings.model_path if path is None else path),
        name=name,
        abstain_below=settings.abstain_below,
        target_accuracy=settings.target_accuracy,
        min_bin_support=settings.min_bin_support,
        conformal_guarantee=settings.conformal_guarantee,
        threads=settings.inference_threads,
    )


class ModelRepository:
    def __init__(
        self, settings: Settings, log: PredictionLog | None = None, on_change: Callable[[], None] | None = None
    ) -> None:
        """``on_change`` hears every swap and unload (the API drops its cached OpenAPI document)."""
        self.settings = settings
        self.on_change = on_change
        self.log = log if log is not None else open_log(settings)
        self.monitor_config = MonitorConfig.from_settings(settings)
        self._entries: dict[str, _Entry] = {}
        self._shadows: dict[str, ShadowScorer] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None
        self.started = False
        self.default: str | None = None  # set by start()

    # -- sources -------------------------------------------------------------------------------------
    def sources(self) -> dict[str, Path]:
        """Model name -> artifact path, as the repository directory holds them now."""
        root = self.settings.model_repository
        if root is None:
            single = self.settings.model_path
            return {entry.name: entry.path for entry in self._entries.values()} or {"": single}
        try:
            # Hidden directories are an operator's staging area (copy in as .name.new, then rename): never models.
            children = sorted(
                p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / MODEL_FILE).is_file()
            )
        except OSError as error:
            logger.error("model repository %s cannot be read: %s", root, error)
            return {name: entry.path for name, entry in self._entries.items()}
        return {child.name: child for child in children}

    # -- start and stop ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load every model; start-up fails if none loads, or if the default model does not."""
        for name, path in self.sources().items():
            try:
                await self.load(name or None, path)
            except ServiceError:
                if self.settings.model_repository is None:
                    raise  # a repository of one: its model must load
        ready = [status.name for status in self.statuses() if status.state == "ready"]
        if not ready:
            raise ArtifactError(
                f"no model could be loaded from {self.settings.model_repository}: "
                + "; ".join(f"{s.name}: {s.reason}" for s in self.statuses())
            )
        default = self.settings.default_model
        if default is not None and default not in ready:
            raise ArtifactError(f"CALIBSERVE_DEFAULT_MODEL={default!r} is not loaded; loaded: {', '.join(ready)}")
        # The only model at start-up stays the default: a model added later must not turn every request that
        # names none (every client of a one-model server) into a 400.
        self.default = default if default is not None else ready[0] if len(ready) == 1 else None
        for champion, challenger in self.settings.shadow_pairs:
            self.set_shadow(champion, challenger)
        self.started = True
        if self.settings.repository_poll_seconds is not None:
            self._poller = asyncio.create_task(self._poll(self.settings.repository_poll_seconds))

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        for scorer in self._shadows.values():
            scorer.close()
        self._shadows.clear()
        for entry in self._entries.values():
            if entry.current is not None:
                self._retire(entry.current)
                entry.current = None
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        if self.log is not None:
            self.log.close()  # drains the queue: every acknowledged prediction is committed

    # -- lookups (event loop and threads) -----------------------------------------------------------
    def statuses(self) -> list[ModelStatus]:
        """Every model the repository holds or has tried to load, by name."""
        statuses = {name: entry.status() for name, entry in self._entries.items()}
        for name in self.sources():
            if name and name not in statuses:
                statuses[name] = ModelStatus(name, None, "unavailable", "not loaded")
        return [statuses[name] for name in sorted(statuses)]

    def serves_several(self) -> bool:
        """More than one model serving (the request path asks this on every unnamed request: no sorting)."""
        return sum(1 for entry in self._entries.values() if entry.current is not None) > 1

    def ready_names(self) -> list[str]:
        return sorted(name for name, entry in self._entries.items() if entry.current is not None)

    def current(self, name: str) -> ServedVersion | None:
        entry = self._entries.get(name)
        return None if entry is None else entry.current

    def serving(self) -> list[ServedVersion]:
        return [entry.current for _, entry in sorted(self._entries.items()) if entry.current is not None]

    def default_name(self) -> str:
        """The model a request that names none goes to: CALIBSERVE_DEFAULT_MODEL, or the only model at start-up,
        or the only model now."""
        if self.default is not None:
            return self.default
        ready = self.ready_names()
        if len(ready) == 1:
            return ready[0]
        if not ready:
            raise ModelNotReady("no model is loaded", {"retry": True})
        raise MalformedRequest(
            f"this server serves {len(ready)} models and has no default (CALIBSERVE_DEFAULT_MODEL): name one "
            f"({', '.join(ready)}) in the path (/v1/models/{{name}}/predict) or in the request's 'model'",
            {"field": "model", "available": ready},
        )

    def default_or_none(self) -> str | None:
        try:
            return self.default_name()
        except (MalformedRequest, ModelNotReady):
            return None

    def resolve(self, name: str | None) -> ServedVersion:
        """The version serving ``name`` (or the default model), or ``ModelNotFound`` naming what is served."""
        name = self.default_name() if name is None else name
        entry = self._entries.get(name)
        if entry is not None and entry.current is not None:
            return entry.current
        raise self._not_found(name)

    def _not_found(self, name: str) -> ModelNotFound:
        entry = self._entries.get(name)
        ready = self.ready_names()
        why = f" ({entry.state}: {entry.reason})" if entry is not None and entry.reason else ""
        return ModelNotFound(
            f"model {name[:200]!r} is not loaded{why}; this server serves {', '.join(map(repr, ready)) or 'none'}",
            {"model": name[:200], "available": ready},
        )

    @contextmanager
    def lease(self, name: str | None) -> Iterator[ServedVersion]:
        """The version serving ``name``, kept open until the block ends even if a reload replaces it."""
        served = self.resolve(name)
        served.leases += 1
        SERVED_MODEL.set((served.name, served.version[:12]))
        try:
            yield served
        finally:
            served.leases -= 1
            if served.retired and served.leases == 0:
                self._close_later(served)

    # -- loading -------------------------------------------------------------------------------------
    async def load(self, name: str | None, path: Path | None = None) -> ModelStatus:
        """Load (or reload) a model and swap it in once verified; a failure leaves the old version serving.

        ``name`` None: the repository of one, named by its card. Raises ``ModelNotFound`` for a name the
        repository does not hold, and the load's own error (``ArtifactError``...) when it fails."""
        if path is None:
            path = self.sources().get(name or "")
            if path is None:
                raise ModelNotFound(
                    f"model {str(name)[:200]!r} is not in the repository {self.settings.model_repository}",
                    {"model": str(name)[:200], "available": sorted(n for n in self.sources() if n)},
                )
        key = name or ""
        entry = self._entries.get(key) or _Entry(key, path)
        if key:
            self._entries.setdefault(key, entry)  # a first load shows as "loading" in the index meanwhile
        async with entry.lock:
            if entry.current is None:
                entry.state, entry.reason = "loading", None
            stamp = fingerprint(path)
            try:
                built = await asyncio.to_thread(self._build, name, path, stamp)
            except Exception as error:
                self._record_failure(entry, name or str(path), stamp, error)
                raise
            if not key:  # the repository of one takes its card's name
                key = built.name
                entry = self._entries.get(key) or entry
                entry.name = key
            self._entries[key] = entry
            old, entry.current = entry.current, built
            entry.path, entry.state, entry.reason, entry.failed_fingerprint = path, "ready", None, None
            self._changed()
            metrics.MODEL_LOADS.labels(model=key, outcome="loaded").inc()
            metrics.MODEL_READY.labels(model=key, version=built.version[:12]).set(1)
            if old is not None:
                metrics.MODEL_READY.labels(model=key, version=old.version[:12]).set(0)
                self._retire(old)
                logger.info("model %s: version %s replaced %s", key, built.version[:12], old.version[:12])
            else:
                logger.info("model %s: serving version %s from %s", key, built.version[:12], path)
            return entry.status()

    def _build(self, name: str | None, path: Path, stamp: Fingerprint) -> ServedVersion:
        """Load, verify and wire one version (in a worker thread: it reads and compiles the graph)."""
        settings = self.settings
        engine = load_engine(settings, path, name)
        served_name = engine.name
        (outcome,) = engine.predict_many([(smoke_input(engine), engine.default_coverage)])
        if not isinstance(outcome, BatchPrediction) or not np.all(np.isfinite(outcome.probabilities)):
            raise ArtifactError(f"{path}: the model does not answer a plain input ({outcome})", {"path": str(path)})
        monitor = Monitor(served_name, engine.card, self.log, self.monitor_config)
        predictor = Predictor(
            engine,
            monitor,
            max_batch_rows=settings.batch_max_rows,
            max_batch_wait_s=settings.batch_max_wait_ms / 1000,
            max_queue_rows=settings.max_queue_rows,
            queue_timeout_s=settings.queue_timeout_ms / 1000,
            on_scored=lambda ids, features: self.offer_shadow(served_name, ids, features),
        )
        return ServedVersion(served_name, path, stamp, engine, monitor, predictor)

    def _record_failure(self, entry: _Entry, name: str, stamp: Fingerprint, error: Exception) -> None:
        reason = error.message if isinstance(error, ServiceError) else f"{type(error).__name__}: {error}"
        entry.reason, entry.failed_fingerprint = reason, stamp
        if entry.current is None:
            entry.state = "unavailable"
        metrics.MODEL_LOADS.labels(model=name, outcome="failed").inc()
        serving = "" if entry.current is None else f"; version {entry.current.version[:12]} keeps serving"
        logger.error("model %s: load failed: %s%s", name, reason, serving)

    async def unload(self, name: str) -> ModelStatus:
        entry = self._entries.get(name)
        if entry is None:
            raise self._not_found(name)
        async with entry.lock:
            if entry.current is not None:
                metrics.MODEL_READY.labels(model=name, version=entry.current.version[:12]).set(0)
                self._retire(entry.current)
                entry.current = None
            entry.state, entry.reason = "unavailable", "unloaded"
            self._changed()
            metrics.MODEL_LOADS.labels(model=name, outcome="unloaded").inc()
            logger.info("model %s: unloaded", name)
            return entry.status()

    async def remove(self, name: str) -> None:
        """Unload ``name`` and forget it (a recalibration's challenger, once decided): it leaves the index."""
        if name in self._entries:
            await self.unload(name)
            self._entries.pop(name, None)
            self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _retire(self, old: ServedVersion) -> None:
        old.retired = True
        if old.leases == 0:
            self._close_later(old)

    def _close_later(self, old: ServedVersion) -> None:
        if old.closing:
            return
        old.closing = True
        task = asyncio.get_running_loop().create_task(old.close())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    # -- polling -------------------------------------------------------------------------------------
    async def sync(self) -> None:
        """One poll: load new and changed artifacts, unload removed ones (Triton's poll mode)."""
        found = self.sources()
        for name, path in found.items():
            entry = self._entries.get(name)
            stamp = fingerprint(path)
            if entry is not None and stamp in (entry.failed_fingerprint, _served_stamp(entry)):
                continue
            with suppress(ServiceError):  # recorded: the old version (if any) serves on
                await self.load(name or None, path)
        if self.settings.model_repository is not None:
            for name, entry in list(self._entries.items()):
                if name not in found and entry.current is not None:
                    await self.unload(name)

    async def _poll(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await self.sync()
            except Exception:
                logger.exception("model repository poll failed; trying again in %.1f s", seconds)

    # -- shadow scoring ------------------------------------------------------------------------------
    def set_shadow(self, champion: str, challenger: str) -> None:
        """Score every request ``champion`` answers with ``challenger`` too, off the request path."""
        if champion == challenger:
            raise MalformedRequest("a model cannot shadow itself", {"field": "challenger"})
        classes = [list(self.resolve(name).engine.card.classes) for name in (champion, challenger)]
        if classes[0] != classes[1]:
            raise MalformedRequest(
                f"{challenger!r} cannot shadow {champion!r}: their classes differ",
                {"field": "challenger", "champion": classes[0], "challenger": classes[1]},
            )
        self.clear_shadow(champion)
        self._shadows[champion] = ShadowScorer(champion, challenger, self.current, self.settings.shadow_queue_rows)
        logger.info("shadow: %s scores every request %s answers", challenger, champion)

    def clear_shadow(self, champion: str) -> None:
        scorer = self._shadows.pop(champion, None)
        if scorer is not None:
            scorer.close()

    def shadow_of(self, champion: str) -> ShadowScorer | None:
        return self._shadows.get(champion)

    def offer_shadow(self, champion: str, ids: list[str], features: NDArray[Any]) -> None:
        """On the champion's inference thread: hand a scored batch to its challenger, if it has one."""
        scorer = self._shadows.get(champion)
        if scorer is not None:
            scorer.offer(ids, features)


def _served_stamp(entry: _Entry) -> Fingerprint | None:
    return None if entry.current is None else entry.current.fingerprint

"""Which stages run for which kind of item, in which order, and under which result keys.

The registry in `workers` lists the stages; this module turns it into job specs: the probe
first (it decides the kind), then every stage that accepts that kind once its required stages
have results.

A stage's key is (name, version, config hash), where the config hash covers its options and
the keys of the results it reads. So a new keyframes version gives the hashes of videos a new
key too (they hash other frames), while the hashes of photos, which read no keyframes, keep
theirs. A stage that reads nothing keeps the plain hash of its options.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from evidence.records import CurrentKeys, JobSpec, LeasedJob, ResultKey
from pipelines.config import QarinaConfig
from workers import STAGES
from workers.base import Kind, Stage, StageConfig
from workers.transcript import TranscriptConfig


def _configured(config: StageConfig, settings: QarinaConfig | None) -> StageConfig:
    """Stage options set at run time: which Whisper model and which language. They change
    the output, so they enter the config hash and a changed choice means new results."""
    if settings is None or not isinstance(config, TranscriptConfig):
        return config
    model = str(settings.whisper_model) if settings.whisper_model else config.model
    return replace(config, model=model, language=settings.transcript_language)


def derived_hash(options_hash: str, upstream: Iterable[ResultKey]) -> str:
    """The config hash of a stage's key: its options' hash, and the keys of what it reads."""
    reads = sorted(upstream)
    if not reads:
        return options_hash
    canonical = json.dumps(
        {"options": options_hash, "reads": [key.as_json() for key in reads]},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Plan:
    """The stages of this run with their options, keyed by name.

    `reads` holds registered stages the run does not execute but whose current results its
    stages read (a plan of the transcript stage alone still reads the probe's results, and
    must name the probe key it reads).
    """

    stages: dict[str, Stage[Any, Any]]
    reads: Mapping[str, Stage[Any, Any]] = field(default_factory=dict)

    @classmethod
    def default(
        cls, only: Iterable[str] | None = None, settings: QarinaConfig | None = None
    ) -> Plan:
        """The registered stages (or `only` those), with the options `settings` choose."""
        wanted = set(only) if only is not None else None
        every = {
            stage_class.name: stage_class(_configured(config, settings))
            for stage_class, config in STAGES
        }
        run = {name: stage for name, stage in every.items() if wanted is None or name in wanted}
        return cls(run, {name: stage for name, stage in every.items() if name not in run})

    def stage(self, name: str) -> Stage[Any, Any]:
        """The stage of that name with this plan's options, whether run or only read."""
        stage = self.stages.get(name) or self.reads.get(name)
        if stage is None:
            raise KeyError(f"stage {name} is neither in the plan nor read by it")
        return stage

    def _requires(self, name: str, kind: Kind | None) -> tuple[str, ...]:
        stage = self.stage(name)
        return stage.requires if kind is None else stage.requires_for(kind)

    def key(self, name: str, kind: Kind | None = None) -> ResultKey:
        """The key a result of `name` on an item of `kind` is stored under by this plan
        (`kind` None: with every stage it may require)."""
        stage = self.stage(name)
        options: StageConfig = stage.config
        upstream = [self.key(required, kind) for required in self._requires(name, kind)]
        return ResultKey(name, stage.version, derived_hash(options.config_hash(), upstream))

    def spec(self, name: str, kind: Kind | None = None) -> JobSpec:
        """The job spec of a stage; for an item of `kind`, with what that kind requires."""
        key = self.key(name, kind)
        requires = tuple(self.key(required, kind) for required in self._requires(name, kind))
        return JobSpec(key.stage, key.stage_version, key.config_hash, requires)

    def spec_for(self, job: LeasedJob) -> JobSpec:
        """The spec this plan gives a leased job's stage for the job's item kind."""
        return self.spec(job.stage, Kind(job.kind) if job.kind else None)

    def keys(self, name: str) -> frozenset[ResultKey]:
        """Every key this plan stores results of `name` under: one per kind it accepts that
        reads different upstream results."""
        stage = self.stage(name)
        return frozenset(self.key(name, kind) for kind in stage.kinds)

    def current_keys(self) -> CurrentKeys:
        """Per stage (run or read), the keys readers should call current."""
        return {name: self.keys(name) for name in [*self.stages, *self.reads]}

    def initial_jobs(self) -> list[JobSpec]:
        """Stages that need nothing before them: the probe."""
        return [self.spec(name) for name, stage in self.stages.items() if not stage.requires]

    def follow_ups(self, finished: str, kind: str | None) -> list[JobSpec]:
        """Stages that become possible once `finished` has a result on an item of `kind`."""
        if kind is None:
            return []
        item_kind = Kind(kind)
        return [
            self.spec(name, item_kind)
            for name, stage in self.stages.items()
            if item_kind in stage.kinds and finished in stage.requires_for(item_kind)
        ]

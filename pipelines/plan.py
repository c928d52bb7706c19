"""Which stages run for which kind of item, and in which order.

The registry in `workers` lists the stages; this module turns it into job specs: the probe
first (it decides the kind), then every stage that accepts that kind once its required stages
have results.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from evidence.records import JobSpec
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


@dataclass(frozen=True)
class Plan:
    """The stages of this run with their options, keyed by name."""

    stages: dict[str, Stage[Any, Any]]

    @classmethod
    def default(
        cls, only: Iterable[str] | None = None, settings: QarinaConfig | None = None
    ) -> Plan:
        """The registered stages (or `only` those), with the options `settings` choose."""
        wanted = set(only) if only is not None else None
        return cls(
            {
                stage_class.name: stage_class(_configured(config, settings))
                for stage_class, config in STAGES
                if wanted is None or stage_class.name in wanted
            }
        )

    def spec(self, name: str, kind: Kind | None = None) -> JobSpec:
        """The job spec of a stage; for an item of `kind`, with what that kind requires."""
        stage = self.stages[name]
        config: StageConfig = stage.config
        requires = stage.requires if kind is None else stage.requires_for(kind)
        return JobSpec(name, stage.version, config.config_hash(), requires)

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

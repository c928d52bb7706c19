"""The stages, and the one explicit registry of them.

A stage's name is a storage key (jobs and results are keyed by it), so the registry checks the
names are unique when it is built. There is no directory scanning and no entry points: a reader
greps this tuple to find every stage.
"""

from __future__ import annotations

from typing import Any

from workers.archives import ExpandConfig, ExpandStage
from workers.base import Stage, StageConfig
from workers.hashes import HashesConfig, HashesStage
from workers.keyframes import KeyframesConfig, KeyframesStage
from workers.metadata import MetadataConfig, MetadataStage
from workers.probe import ProbeConfig, ProbeStage
from workers.transcript import TranscriptConfig, TranscriptStage

#: Every stage with its default options, in pipeline order (a stage after those it requires).
STAGES: tuple[tuple[type[Stage[Any, Any]], StageConfig], ...] = (
    (ProbeStage, ProbeConfig()),
    (ExpandStage, ExpandConfig()),
    (MetadataStage, MetadataConfig()),
    (KeyframesStage, KeyframesConfig()),
    (HashesStage, HashesConfig()),
    (TranscriptStage, TranscriptConfig()),
)


def _check_registry() -> None:
    names = [stage.name for stage, _ in STAGES]
    if len(names) != len(set(names)):
        raise RuntimeError(f"stage names must be unique, got {names}")
    seen: set[str] = set()
    for stage, _ in STAGES:
        missing = set(stage.requires) - seen
        if missing:
            raise RuntimeError(
                f"stage {stage.name} requires {sorted(missing)} registered before it"
            )
        seen.add(stage.name)
    deciders = [stage.name for stage, _ in STAGES if stage.decides_kind]
    if len(deciders) != 1:
        raise RuntimeError(f"exactly one stage must decide an item's kind, got {deciders}")


_check_registry()

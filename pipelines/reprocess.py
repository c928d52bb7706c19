"""`qarina reprocess`: bring a stage's results up to the key the current plan names.

The plan decides the key (stage version, options such as the Whisper model, and the keys of
the upstream results read); the store does the queueing and the custody. Here the two meet:
one job spec per kind the stage serves (hashes of photos and of videos read different
upstream results, so they have different keys), and a plain account of why a new key differs
from an old one, for the custody record.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from evidence.records import JobSpec, ResultKey
from evidence.reprocess import Explain, ReprocessReport, Request, reprocess
from evidence.store import Store
from pipelines.plan import Plan


def specs_by_kind(plan: Plan, stage: str) -> list[tuple[str | None, JobSpec]]:
    """The stage's current job spec per item kind. A stage that reads nothing (the probe)
    has one key for every item, including those whose kind is not decided yet."""
    accepted = plan.stages[stage].kinds
    if not plan.stages[stage].requires:
        return [(None, plan.spec(stage))]
    return [(kind.value, plan.spec(stage, kind)) for kind in sorted(accepted)]


def changes(plan: Plan, stage: str) -> Explain:
    """How an old result of `stage` differs from what the plan would make now, from the old
    result's provenance: version, option values, upstream results read."""
    current = plan.stages[stage]
    options = dataclasses.asdict(current.config)

    def explain(provenance: Mapping[str, Any] | None, old: ResultKey, spec: JobSpec) -> list[str]:
        found = []
        if old.stage_version != current.version:
            found.append(f"stage_version: {old.stage_version} -> {current.version}")
        if provenance is None:
            return found or ["no result under the old key to compare with"]
        before = provenance.get("params", {})
        found += [
            f"option {name}: {before.get(name)} -> {options.get(name)}"
            for name in sorted(set(before) | set(options))
            if before.get(name) != options.get(name)
        ]
        reads = provenance.get("reads", {})
        for upstream in spec.requires:
            was = reads.get(upstream.stage)
            now = f"{upstream.stage_version}/{upstream.config_hash}"
            if was is None:
                found.append(f"reads {upstream.stage}: unrecorded -> {now}")
            elif f"{was['stage_version']}/{was['config_hash']}" != now:
                found.append(
                    f"reads {upstream.stage}: {was['stage_version']}/{was['config_hash']} -> {now}"
                )
        return found

    return explain


def reprocess_stage(
    store: Store, plan: Plan, stage: str, request: Request, dry_run: bool = False
) -> ReprocessReport:
    """Queue `stage` under its current keys for the selected items whose jobs of it were
    made under other keys; their dependants follow as each new result is stored."""
    if stage not in plan.stages:
        raise KeyError(stage)
    return reprocess(
        store.database, specs_by_kind(plan, stage), request, changes(plan, stage), dry_run
    )

"""The Stage interface every worker implements, and the vocabulary it shares with the store.

A stage is a pure function of one original: it reads the file at a store path, may write
derived files into a scratch folder it is given, and returns a small frozen dataclass. It knows
nothing of Ray or the database, so it can be run and tested alone on a file from a prompt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar


class Kind(StrEnum):
    """What an item is, decided from its bytes by the probe stage, never from its name."""

    PHOTO = "photo"
    VIDEO = "video"
    AUDIO = "audio"
    #: A zip or tar (plain, gzip or xz): its members become items of their own.
    ARCHIVE = "archive"
    OTHER = "other"


class FailureReason(StrEnum):
    """The failure taxonomy: every failed job carries exactly one of these.

    The split between final and retryable matters for a backlog of millions: retrying a corrupt
    file wastes a worker forever, while a timeout on a loaded node often passes the second time.
    """

    UNSUPPORTED_TYPE = "unsupported_type"
    CORRUPT_MEDIA = "corrupt_media"
    DECODE_ERROR = "decode_error"
    TOOL_TIMEOUT = "tool_timeout"
    TOOL_CRASH = "tool_crash"
    RESOURCE_LIMIT = "resource_limit"
    MODEL_ERROR = "model_error"
    STORE_ERROR = "store_error"
    INTEGRITY_ERROR = "integrity_error"
    #: An exception in our own stage code: a bug, final (a retry runs the same code on the
    #: same bytes) and counted apart, so that bugs show instead of hiding among crashes.
    STAGE_ERROR = "stage_error"

    @property
    def retryable(self) -> bool:
        """Whether another attempt could plausibly succeed on the same bytes, by default:
        a StageError may say otherwise (a bomb judged from its header is final)."""
        return self in _RETRYABLE


_RETRYABLE = frozenset(
    {
        FailureReason.TOOL_TIMEOUT,
        FailureReason.TOOL_CRASH,
        FailureReason.RESOURCE_LIMIT,
        FailureReason.MODEL_ERROR,
        FailureReason.STORE_ERROR,
    }
)


class StageError(Exception):
    """A classified failure of one stage on one item; it becomes a failed job, never a crash.

    `detail` is shown to operators and stored, so it must never contain a file name, GPS or
    transcript text: stages only ever see store paths, and tool stderr is trimmed.
    `retryable` overrides the reason's default where the cause is known: a decompression bomb
    judged from its header is a resource_limit that no retry can pass, unlike a memory kill.
    """

    def __init__(
        self, reason: FailureReason, detail: str, *, retryable: bool | None = None
    ) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail[:500]
        self.retryable = reason.retryable if retryable is None else retryable


class StageSkipped(Exception):
    """The stage does not apply to this item (a video with no audio): a skip, not a failure.

    `reason` is a short code (`no_audio`) recorded with the skip.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Resources:
    """What one actor of a stage asks the Ray scheduler for.

    Fractional CPUs are deliberate for stages whose real work happens in a child process
    (exiftool, ffprobe) or in I/O: Ray would otherwise leave cores idle.
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_mb: int = 1024
    #: GPUs asked for only when the cluster has some (transcription); such an actor then
    #: needs one CPU to feed the GPU rather than `num_cpus` to do the work itself.
    gpus_when_available: float = 0.0
    #: A node group (a custom resource nodes are started with) to run on when the cluster has
    #: one: decoding and hashing belong on CPU nodes, leaving GPU nodes to transcription.
    prefers: str | None = None

    def on_cluster(self, cluster: Mapping[str, float]) -> Resources:
        """What to ask of a cluster with these total resources (Ray's names: CPU, GPU, ...)."""
        gpus = cluster.get("GPU", 0.0)
        prefers = self.prefers if self.prefers and cluster.get(self.prefers, 0.0) > 0 else None
        if self.gpus_when_available and gpus >= self.gpus_when_available:
            return Resources(1.0, self.gpus_when_available, self.memory_mb, prefers=prefers)
        return dataclasses.replace(self, gpus_when_available=0.0, prefers=prefers)


#: The custom resource CPU worker nodes are started with (see cluster.yaml).
CPU_NODE = "qarina_cpu_node"


@dataclass(frozen=True)
class StageEnvironment:
    """Where a worker finds what lives outside any one item: shared model files, device choice.

    Kept apart from StageConfig on purpose: the folder a data root is mounted at, or the device
    a node has, must not change a result's idempotency key, while the options that change
    output (which model, which language) belong in the config.
    """

    models_dir: Path
    #: `auto` uses a GPU when the process sees one; `cpu` or `cuda` force it.
    device: str = "auto"
    #: The speech engine: `auto`, `ctranslate2` or `torch` (models/whisper.choose_device).
    engine: str = "auto"


class JsonRecord:
    """Base of a frozen dataclass stored as plain JSON data: a stage result, or a part of one.

    Why typed records rather than `dataclasses.asdict` and look-ups in the stored dict: a stage
    that reads `upstream["probe"]["duration_s"]` breaks at run time when the field is renamed,
    one that reads `ProbeResult.from_json(...).duration_s` breaks in mypy. And the stored form is
    evidence: results are hashed into the custody chain, so `to_json` must give the same bytes
    for the same result forever, which a part that leaves out keys (a hash entry) ensures by
    overriding it. The defaults suit records of JSON values and of nested records; a record
    that nests records overrides `from_json` to rebuild them.
    """

    #: Set by @dataclass on every subclass; declared so that mypy sees a dataclass.
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def to_json(self) -> dict[str, Any]:
        """The record as plain JSON data (new containers: changing them leaves it alone)."""
        return {entry.name: _plain(getattr(self, entry.name)) for entry in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """The record from its JSON data; an unknown key, or a missing one that has no
        default, raises."""
        return cls(**data)


def _plain(value: Any) -> Any:
    if isinstance(value, JsonRecord):
        return value.to_json()
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


J = TypeVar("J", bound=JsonRecord)


@dataclass(frozen=True)
class StageInput:
    """One item as a stage sees it: a read-only store path and what earlier stages found.

    `upstream` maps a required stage's name to its stored result (plain JSON data), so a stage
    that needs the probe's streams does not probe again; `upstream_result` reads one typed.
    `artifacts` maps the SHA-256 of each file those stages derived (a keyframe) to its
    read-only store path.
    """

    sha256: str
    path: Path
    kind: Kind
    upstream: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    artifacts: Mapping[str, Path] = field(default_factory=dict)
    #: How many archives deep the item was found: 0 when it arrived as itself, 1 inside an
    #: archive that did, and so on (the archive stage caps nesting with it).
    depth: int = 0

    def upstream_result(self, stage: str, result: type[J]) -> J | None:
        """The result of the required `stage`, typed; None when the item came without it, as
        at a Python prompt, so a stage says what it does without (never an empty mapping)."""
        data = self.upstream.get(stage)
        return None if data is None else result.from_json(data)


@dataclass(frozen=True)
class ArtifactFile:
    """A derived file a stage wrote into its scratch folder; the runtime stores it by content."""

    path: Path
    media_type: str
    role: str
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MemberFile:
    """A file an archive holds, extracted into the scratch folder: the runtime stores it by
    content and registers it as an item, with `inner_path` (the raw bytes the archive names
    it by, which may be in any encoding) kept as where it came from."""

    path: Path
    inner_path: bytes


R = TypeVar("R")


@dataclass(frozen=True)
class StageOutput(Generic[R]):
    """A stage's typed result plus the derived files it made, and, for an archive, the
    originals found inside it (which become items, not artifacts: they are evidence)."""

    result: R
    artifacts: tuple[ArtifactFile, ...] = ()
    members: tuple[MemberFile, ...] = ()


@dataclass(frozen=True)
class StageConfig:
    """Base of every stage's typed options; its hash is part of the result's idempotency key."""

    def config_hash(self) -> str:
        """A short, stable hash of the options, so changed options mean a new result key."""
        canonical = json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


C = TypeVar("C", bound=StageConfig)


class Stage(ABC, Generic[C, R]):
    """One processing step. Construct cheaply (it is pickled to workers); load heavy things later.

    Heavy things (processes, models) belong in setup(), run once per worker.
    Subclasses set the class attributes below; `name` is a storage key and must stay unique and
    stable, `version` changes whenever the output for the same input would change.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    kinds: ClassVar[frozenset[Kind]]
    requires: ClassVar[tuple[str, ...]] = ()
    resources: ClassVar[Resources] = Resources()
    #: True for the one stage whose result's `kind` field decides the item's kind (the probe);
    #: when it fails, the item is recorded as `other`.
    decides_kind: ClassVar[bool] = False
    #: Items handed to one call; small files take milliseconds and a Ray call costs about 1 ms.
    batch_size: ClassVar[int] = 1
    #: True for a stage whose `run_many` makes items share work (transcription packs several
    #: short recordings into one model window): the runtime hands it a batch at once.
    shares_work: ClassVar[bool] = False

    def __init__(self, config: C) -> None:
        self.config = config

    @classmethod
    def requires_for(cls, kind: Kind) -> tuple[str, ...]:
        """The stages whose results an item of `kind` needs first: `requires` unless a stage
        needs less for some kinds (a photo has no keyframes to wait for)."""
        return cls.requires

    def setup(self, env: StageEnvironment | None = None) -> None:  # optional, empty on purpose
        """Start long-lived helpers (exiftool, models) once per worker, never per item.

        `env` says where shared files live; stages that need nothing outside the item run
        without one (at a prompt, in an evaluation).
        """

    def teardown(self) -> None:  # an optional hook, empty on purpose
        """Stop what setup() started."""

    def tool_versions(self) -> dict[str, str]:
        """Versions of the external tools and libraries this stage used, for provenance."""
        return {}

    def run_many(
        self, items: Sequence[tuple[StageInput, Path]]
    ) -> list[StageOutput[R] | Exception]:
        """Process several items, each with its own scratch folder, at once: for stages
        that share work between items (`shares_work`). One item's exception (a StageError, a
        StageSkipped or a bug) stands in its place in the list, so it never costs the others."""
        outcomes: list[StageOutput[R] | Exception] = []
        for item, workdir in items:
            try:
                outcomes.append(self.run(item, workdir))
            except Exception as error:  # the item's own outcome, classified by the caller
                outcomes.append(error)
        return outcomes

    @abstractmethod
    def run(self, item: StageInput, workdir: Path) -> StageOutput[R]:
        """Process one item; raise StageError or StageSkipped for classified outcomes.

        Anything else raised is a bug in stage code: the runtime records it as stage_error,
        final, with a fingerprint of where it was raised (OSError and MemoryError, which
        come from the node rather than the code, are retried a bounded number of times).
        """


def result_to_json(result: object) -> dict[str, Any]:
    """A stage result as plain JSON data, as it is stored and hashed."""
    if not isinstance(result, JsonRecord):
        raise TypeError(f"stage results must be JsonRecord dataclasses, got {type(result)!r}")
    return result.to_json()

"""The contract every stage honours, as a base class its test class inherits (STYLE habit 10).

python-threatexchange gives every signal type the same harness; ours gives every stage the
same checks of the rules the runtime relies on: stable names and config hashes (they are
storage keys), a stage that pickles before setup (Ray ships it to workers), classified
outcomes on input it does not handle, results that go to JSON and back unchanged, and
originals left alone.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from workers.base import Stage, StageConfig, StageError, StageInput, StageSkipped, result_to_json

_NAME_PATTERN = r"^[a-z][a-z0-9_]*$"


class StageContract:
    """Subclass in a test module and set the hooks; pytest collects the inherited tests.

    Hooks:
        stage_class / config: the stage under test and its options.
        expected_name: the storage key the stage must keep.
        supported_item(tmp_path): an item the stage handles, as a StageInput.
        unsupported_item(tmp_path): an item it must refuse with a classified outcome.
    """

    stage_class: ClassVar[type[Stage[Any, Any]]]
    config: ClassVar[StageConfig]
    expected_name: ClassVar[str]

    def supported_item(self, tmp_path: Path) -> StageInput:
        raise NotImplementedError

    def unsupported_item(self, tmp_path: Path) -> StageInput:
        raise NotImplementedError

    @pytest.fixture
    def stage(self) -> Iterator[Stage[Any, Any]]:
        stage = self.stage_class(self.config)
        stage.setup()
        try:
            yield stage
        finally:
            stage.teardown()

    def test_name_and_version_are_set_and_stable(self) -> None:
        import re

        assert self.stage_class.name == self.expected_name
        assert re.match(_NAME_PATTERN, self.stage_class.name)
        assert isinstance(self.stage_class.version, str) and self.stage_class.version
        assert self.stage_class.kinds, "a stage must accept at least one kind"
        assert self.stage_class.batch_size >= 1

    def test_config_hash_is_stable(self) -> None:
        first = self.config.config_hash()
        again = type(self.config)().config_hash()
        assert first == again == pickle.loads(pickle.dumps(self.config)).config_hash()
        assert len(first) == 16

    def test_pickles_before_setup(self) -> None:
        stage = self.stage_class(self.config)
        clone = pickle.loads(pickle.dumps(stage))
        assert type(clone) is type(stage)
        assert clone.config == stage.config

    def test_unsupported_item_is_classified(
        self, stage: Stage[Any, Any], tmp_path: Path
    ) -> None:
        item = self.unsupported_item(tmp_path)
        workdir = tmp_path / "work"
        workdir.mkdir()
        with pytest.raises((StageError, StageSkipped)):
            stage.run(item, workdir)

    def test_result_is_json_serialisable(self, stage: Stage[Any, Any], tmp_path: Path) -> None:
        item = self.supported_item(tmp_path)
        workdir = tmp_path / "work"
        workdir.mkdir()
        output = stage.run(item, workdir)
        data = result_to_json(output.result)
        assert json.loads(json.dumps(data)) == data
        assert str(item.path) not in json.dumps(data), "results must not carry the store path"
        # What a later stage reads back is the result it was given, and stores the same bytes.
        again = type(output.result).from_json(json.loads(json.dumps(data)))
        assert again == output.result
        assert result_to_json(again) == data

    def test_never_writes_next_to_the_original(
        self, stage: Stage[Any, Any], tmp_path: Path
    ) -> None:
        item = self.supported_item(tmp_path)
        folder = tmp_path / "originals"
        folder.mkdir()
        original = folder / item.path.name
        shutil.copyfile(item.path, original)
        original.chmod(0o444)
        before = {entry.name: os.stat(entry).st_mtime_ns for entry in folder.iterdir()}
        content = original.read_bytes()
        workdir = tmp_path / "work"
        workdir.mkdir()
        stage.run(
            StageInput(item.sha256, original, item.kind, item.upstream), workdir
        )
        after = {entry.name: os.stat(entry).st_mtime_ns for entry in folder.iterdir()}
        assert after == before
        assert original.read_bytes() == content

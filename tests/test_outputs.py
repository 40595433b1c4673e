"""Output paths checked before the work that fills them (``thinktuning.outputs``): what each check refuses, and
that checking creates nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from thinktuning.errors import OutputPathError, RunFolderError
from thinktuning.outputs import check_output_dir, check_output_file


def test_a_writable_file_path_passes_and_nothing_is_created(tmp_path):
    out = tmp_path / "new" / "deeper" / "res.json"
    assert check_output_file(out, "--output", "res.json") == out
    assert list(tmp_path.iterdir()) == []  # neither the folders nor a probe file stay
    existing = tmp_path / "old.json"
    existing.write_text("keep")
    assert check_output_file(existing, "--output", "res.json") == existing
    assert existing.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["old.json"]


def test_a_folder_where_a_file_belongs_is_refused_with_an_example(tmp_path):
    with pytest.raises(OutputPathError) as info:
        check_output_file(tmp_path, "--output", "res.json")
    example = tmp_path / "res.json"
    assert str(info.value) == f"--output {tmp_path} is a folder; give a file path, e.g. --output {example}"
    assert isinstance(info.value, RunFolderError)  # the CLI prints it as one line


def test_a_parent_that_is_a_file_is_named(tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    with pytest.raises(OutputPathError, match=rf"^--output {blocker}/a/b.json cannot be created: {blocker} is a file"):
        check_output_file(blocker / "a" / "b.json", "--output", "b.json")
    with pytest.raises(OutputPathError, match=rf"^--output-dir {blocker}/run cannot be created: {blocker} is a file, "
                                              "not a folder. Choose another --output-dir$"):
        check_output_dir(blocker / "run", "--output-dir")


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux's /sys, where even root cannot create files")
def test_a_place_where_nothing_can_be_written_is_refused_even_for_root():
    with pytest.raises(OutputPathError, match=r"^--output /sys/kernel/x/r.json cannot be created: nothing can be "
                                              r"written in /sys/kernel \("):
        check_output_file("/sys/kernel/x/r.json", "--output", "r.json")
    with pytest.raises(OutputPathError, match=r"^--output-dir /sys/kernel: nothing can be written in it \("):
        check_output_dir("/sys/kernel", "--output-dir")


def test_an_existing_or_creatable_folder_passes(tmp_path):
    assert check_output_dir(tmp_path, "--output-dir") == tmp_path
    assert check_output_dir(tmp_path / "a" / "b", "--output-dir") == tmp_path / "a" / "b"
    assert list(tmp_path.iterdir()) == []

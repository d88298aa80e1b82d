"""User errors end as a message and exit 2; every other exception keeps its traceback."""

from __future__ import annotations

import pytest

from qualitune.errors import EXIT_USER_ERROR, QualituneError
from qualitune.media import MediaError
from qualitune.stages import stage_main


def _params_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("demo: {}\n")
    return str(path)


def test_a_user_error_is_a_message_and_exit_2(tmp_path, capsys):
    def body(params):
        raise QualituneError("ingest.root data/x does not exist; point it at your dataset")

    assert stage_main("ingest", body, ["--params", _params_file(tmp_path)]) == EXIT_USER_ERROR == 2
    err = capsys.readouterr().err
    assert "ingest stage: error: ingest.root data/x does not exist" in err
    assert "Traceback" not in err


def test_a_bug_keeps_its_traceback(tmp_path):
    def body(params):
        return int("not a number")  # a library ValueError: a bug, not bad input

    with pytest.raises(ValueError, match="invalid literal"):
        stage_main("ingest", body, ["--params", _params_file(tmp_path)])


def test_the_domain_errors_are_user_errors_and_still_value_errors():
    from qualitune.annotators.base import AnnotatorError, UnknownAnnotatorError
    from qualitune.pipeline.train import TrackingFailed
    from qualitune.validate import GateFailed

    for cls in (MediaError, AnnotatorError, UnknownAnnotatorError, GateFailed, TrackingFailed):
        assert issubclass(cls, QualituneError) and issubclass(cls, ValueError), cls


def test_the_cli_prints_a_user_error_and_exits_2(tmp_path, capsys):
    from qualitune.cli import main

    assert main(["score", "--model", str(tmp_path / "no-such-scorer"), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "qualitune score: error: no media files found" in err and "Traceback" not in err

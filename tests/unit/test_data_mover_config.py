"""spec.dataMoverConfig: the keys Velero sets (WriteSparseFiles, ParallelFilesUpload/-Download) and
Barge's own (barge.io/on-unreadable, barge.io/restore-privileged); a bad value is one message naming
the key and what to write."""

from __future__ import annotations

import pytest

from barge.control.naming import (
    PARALLEL_FILES_DOWNLOAD_KEY,
    PARALLEL_FILES_UPLOAD_KEY,
    data_mover_config_problem,
    parallel_files,
    restore_privileged,
    write_sparse_files,
)
from coordinator.decide import decide
from coordinator.model import Phase, SetPhase
from tests.coordinator_world import download_cr, observed, upload_cr


@pytest.mark.parametrize(
    ("value", "sparse"), [("false", False), ("true", True), ("TRUE", True), ("False", False)]
)
def test_write_sparse_files_is_a_boolean_in_any_case(value: str, sparse: bool) -> None:
    assert write_sparse_files((("WriteSparseFiles", value),)) is sparse


def test_privileged_entries_are_restored_only_when_asked() -> None:
    assert restore_privileged(()) is False
    assert restore_privileged((("barge.io/restore-privileged", "TRUE"),)) is True
    assert restore_privileged((("barge.io/restore-privileged", "false"),)) is False


def test_velero_defaults_when_keys_are_absent() -> None:
    assert write_sparse_files(()) is False  # Velero writes "false" anyway; Barge's default agrees
    assert parallel_files((), PARALLEL_FILES_UPLOAD_KEY) is None
    assert parallel_files((("ParallelFilesDownload", "8"),), PARALLEL_FILES_DOWNLOAD_KEY) == 8
    assert data_mover_config_problem((("WriteSparseFiles", "false"), ("ParallelFilesUpload", "16"))) == ""


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ((("WriteSparseFiles", "1"),), "spec.dataMoverConfig WriteSparseFiles='1': use 'true' or 'false'"),
        ((("WriteSparseFiles", ""),), "spec.dataMoverConfig WriteSparseFiles='': use 'true' or 'false'"),
        (
            (("ParallelFilesUpload", "0"),),
            "spec.dataMoverConfig ParallelFilesUpload='0': use a positive whole number",
        ),
        (
            (("ParallelFilesDownload", "+4"),),
            "spec.dataMoverConfig ParallelFilesDownload='+4': use a positive whole number",
        ),
        (
            (("ParallelFilesDownload", "9" * 5000),),
            "use a positive whole number",
        ),
        (
            (("barge.io/on-unreadable", "ignore"),),
            "spec.dataMoverConfig barge.io/on-unreadable='ignore': use 'fail' or 'skip'",
        ),
        (
            (("barge.io/restore-privileged", "1"),),
            "spec.dataMoverConfig barge.io/restore-privileged='1': use 'true' or 'false'",
        ),
    ],
)
def test_a_bad_value_is_one_message_naming_the_key(config: tuple[tuple[str, str], ...], message: str) -> None:
    assert data_mover_config_problem(config).endswith(message)


def test_a_bad_parallel_files_upload_fails_the_data_upload_before_anything_is_exposed() -> None:
    cr = upload_cr(data_mover_config=(("ParallelFilesUpload", "many"),))
    actions = decide(observed(cr))
    (step,) = [action for action in actions if isinstance(action, SetPhase)]
    assert step.phase is Phase.FAILED
    assert step.message == "spec.dataMoverConfig ParallelFilesUpload='many': use a positive whole number"


def test_a_bad_restore_privileged_fails_the_data_download_before_anything_is_exposed() -> None:
    cr = download_cr(data_mover_config=(("barge.io/restore-privileged", "always"),))
    (step,) = [action for action in decide(observed(cr)) if isinstance(action, SetPhase)]
    assert step.phase is Phase.FAILED
    assert step.message == "spec.dataMoverConfig barge.io/restore-privileged='always': use 'true' or 'false'"


def test_a_bad_write_sparse_files_fails_the_data_download_before_anything_is_exposed() -> None:
    cr = download_cr(data_mover_config=(("WriteSparseFiles", "maybe"),))
    actions = decide(observed(cr))
    (step,) = [action for action in actions if isinstance(action, SetPhase)]
    assert step.phase is Phase.FAILED
    assert step.message == "spec.dataMoverConfig WriteSparseFiles='maybe': use 'true' or 'false'"

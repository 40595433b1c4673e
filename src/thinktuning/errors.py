"""The errors a user can cause, at the ground floor so that every layer can raise them without importing another.

The CLI turns each of these into one ``error: ...`` line and exit status 2 (:data:`USER_ERRORS`); anything else is
a bug and keeps its traceback. Each message names the cause and the fix.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A user-caused configuration problem; the message names the field and the allowed values."""


class DatasetError(ValueError):
    """A data problem the user can fix; the message names the file/row/column and says how."""


class NotUtf8Error(DatasetError):
    """A text file holding bytes that are not UTF-8. ``path``, ``line`` and ``detail`` are kept apart so that a
    caller reading a file this tool wrote (a run log) can word its own cause and fix."""

    def __init__(self, path: str, line: int, detail: str) -> None:
        super().__init__(f"{path}: line {line} is not UTF-8 text ({detail}). Re-save the file as UTF-8 (in your "
                         "editor, or with iconv -f <its encoding> -t utf-8)")
        self.path, self.line, self.detail = path, line, detail


class ModelNotFoundError(FileNotFoundError):
    """The spec matched no form we know; the message lists what was tried and how to get the model."""


class ModelError(ValueError):
    """A model or tokenizer that loads but cannot be used here (no chat template, no end-of-turn token)."""


class RunFolderError(RuntimeError):
    """The output folder cannot be used as asked (exists from another run, not a run folder, ...)."""


class ReportError(RunFolderError):
    """A folder given to ``report`` is not a readable run folder."""


class OutputPathError(RunFolderError):
    """An output file or folder that cannot be written (a folder where a file belongs, a parent that is a file, no
    permission), found before the work whose results it would hold."""


class PushError(RunFolderError):
    """Sharing a run failed at the Hub's end (no token, an upload refused or cut); reported like a RunFolderError."""


class CheckpointError(RuntimeError):
    """Saving or loading a checkpoint failed; the message says why and what was left intact."""


class RewardFunctionError(ValueError):
    """A user reward function (``reward.functions``) that cannot be imported or is not callable."""


class CompareError(ValueError):
    """An argument of ``compare`` that is not an eval results file or a run folder holding one."""


class EvalError(RuntimeError):
    """An evaluation whose results mean nothing (every request to the server failed); its results file is still
    written, marked incomplete."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DatasetError, ModelNotFoundError, ModelError, RunFolderError, CheckpointError,
    RewardFunctionError, CompareError, EvalError,
)
"""What the CLI reports as one line (ReportError and OutputPathError are RunFolderErrors, NotUtf8Error a
DatasetError)."""

"""The errors expo-data raises on purpose, under one root.

Everything a command can report as one clear message derives from :class:`ExpoDataError`; the CLI
catches that root at a single boundary (``flows.cli``) and prints the message, with credentials
masked, instead of a traceback. Anything else that escapes is a bug and keeps its traceback.

- :class:`UserError`: the person running the command can fix it (a config key, a file, a folder, a
  flag): exit status 2.
- Other :class:`ExpoDataError`: the work failed for a reason the message explains (an engine crash,
  a shard that failed every try, the Hub refusing a commit): exit status 1; rerunning resumes.
"""

from __future__ import annotations

#: Where a message names the switch that starts a run over: the same error reaches a user through
#: the command line (a flag) or through a flow or deployment (a parameter), and names the one they use.
START_OVER = "<start-over>"


class ExpoDataError(Exception):
    """Root of every error expo-data raises on purpose."""

    exit_code = 1

    def __str__(self) -> str:
        return super().__str__().replace(START_OVER, "the parameter force_new=true of the flow or deployment")

    def for_command_line(self) -> str:
        """The message as the command line prints it."""
        return super().__str__().replace(START_OVER, "--force-new")


class UserError(ExpoDataError):
    """Input the user can fix: the message names the key, file, row or flag."""

    exit_code = 2


# -- input -----------------------------------------------------------------------------------------


class ConfigError(UserError):
    """A config that cannot run, with a message meant for the person who wrote it."""


class SourceNotFoundError(UserError):
    """A path that is neither a file, a folder nor a Hub id."""


class ProblemsError(UserError):
    """A problem source as a whole cannot be used (missing column, nothing valid)."""


class SchemaError(UserError):
    """A table does not match the schema its reader expects."""


class ModelError(UserError):
    """A model folder or id that cannot serve (missing, no chat template)."""


class InputFileError(UserError):
    """A user's file for `expo-data verify` that cannot be read as rows with the named fields."""


# -- run dirs and their documents ------------------------------------------------------------------


class RunDirError(UserError):
    """A folder that is not a (finished) run dir, or a run.json that cannot be read."""


class RunDirConflictError(RunDirError):
    """The run dir holds a run made with a config that would produce different rows."""


# -- orchestration ---------------------------------------------------------------------------------


class ServerRequiredError(UserError):
    """A command that needs a real Prefect server (its scheduler) found none configured."""


# -- training --------------------------------------------------------------------------------------


class TrainDataError(UserError):
    """Training data that cannot be used, naming the source and what is wrong."""


class TrainedAlreadyError(UserError):
    """The output folder holds a finished training run."""


# -- failures of the work itself -------------------------------------------------------------------


class EngineError(ExpoDataError):
    """The engine itself failed (not one request): the shard is retried with a fresh engine."""


class ShardFailedError(ExpoDataError):
    """A shard failed on every try; the message names it and its problems."""


class PublishError(ExpoDataError):
    """A publish that cannot proceed, with a message free of credentials."""


class VerifierError(ExpoDataError):
    """The verifier's worker processes could not be started."""

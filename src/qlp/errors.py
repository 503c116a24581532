"""One error hierarchy. Messages are written for the person who will read them."""

from __future__ import annotations


class QLPError(Exception):
    """Base of every error QLP raises on purpose. `exit_code` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UserInputError(QLPError):
    """The request itself is wrong (bad argument, unknown id, bad file)."""

    exit_code = 2


class ConfigError(UserInputError):
    """A setting is missing or invalid; the message names the variable."""


class NotFoundError(UserInputError):
    """An id or file the user named does not exist."""


class StoreError(QLPError):
    """The database could not be reached, started or migrated."""


class LLMError(QLPError):
    """A model call failed after retries, timed out, or the provider refused it."""


class ScriptExhaustedError(LLMError):
    """The scripted provider has no unused answer that matches the call."""


class InvalidAnswerError(QLPError):
    """A model answer did not satisfy its contract (bad JSON, schema, DAG, paths)."""


class PlanError(QLPError):
    """The planner could not produce a valid plan within its attempts."""


class BudgetExceededError(QLPError):
    """The intent spent its token budget. `response`: the answer whose usage went over it,
    when one came back (its own problems are the real cause to report; see ask_structured)."""

    response: object | None = None


class UnsafePathError(InvalidAnswerError):
    """An agent asked to write a path outside the project or otherwise unsafe."""


class NotRegularFileError(UnsafePathError):
    """Something other than a regular file stands where QLP reads one from a tree that
    untrusted code can touch (the workspace): a FIFO, a socket, a device, a symlink, a
    folder. `path` and `kind` ("a FIFO") name them; nothing was read from it."""

    def __init__(self, path: str, kind: str, expected: str = "a regular file") -> None:
        super().__init__(f"{path} is {kind}, not {expected}")
        self.path = path
        self.kind = kind


class SandboxError(QLPError):
    """The sandbox backend is unavailable or failed to start a session."""


class AuthError(UserInputError):
    """Credentials are missing, wrong, expired or revoked (HTTP 401). The message never says
    which of those, so it cannot be used to probe accounts or tokens."""


class PermissionDeniedError(UserInputError):
    """The caller is known but may not do this (HTTP 403)."""


class ConflictError(UserInputError):
    """The request clashes with the current state (HTTP 409): a taken username, an intent that
    is not in a state that allows the action."""


class TransitionError(ConflictError):
    """A state move the rules refuse (HTTP 409, code `invalid_state`): cancelling a completed
    intent, deciding on one that is not waiting for review, or losing a race to another
    request that moved it first. `current` is the state found, when one was read."""

    def __init__(self, message: str, current: str | None = None) -> None:
        super().__init__(message)
        self.current = current


class LimitExceededError(UserInputError):
    """A rate or quota limit was hit (HTTP 429); `retry_after_s` says when to try again."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, retry_after_s)


class IntentBusyError(ConflictError):
    """Another QLP process holds the intent (it runs it now, or is stopped while it did);
    a job meeting this waits and tries again."""


class LeaseLostError(ConflictError):
    """This process's lease on an intent ended (it was paused or cut off long enough for
    another process to take the intent over): the write was refused, and the run stops."""

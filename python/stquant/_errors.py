"""stquant's exceptions: one class per kind of failure, carrying the message the command line
prints after "stquant: error: " (naming the file and the tensor). `exit_code` is the CLI's."""


class Error(Exception):
    """Every failure stquant reports."""

    exit_code = 1


class InputError(Error, ValueError):
    """Bad input (exit code 2): impossible arguments, a malformed or unsupported model or file."""

    exit_code = 2


class InvalidArgumentError(InputError):
    """The caller asked for something impossible (a bad type, mode, group size, path...)."""


class InvalidInputError(InputError):
    """An input file or directory is malformed or inconsistent."""


class UnsupportedError(InputError):
    """The input is well formed but uses a feature stquant does not handle (GPTQ, AWQ, ...)."""


class IOFailureError(Error, OSError):
    """The operating system failed (exit code 3): permissions, a full disk, a failed read."""

    exit_code = 3


class InternalError(Error, RuntimeError):
    """A bug in stquant (exit code 1)."""

    exit_code = 1


# stquant::StatusCode (include/stquant/status.h) -> class.
_BY_CODE = {
    1: InvalidArgumentError,
    2: InvalidInputError,
    3: UnsupportedError,
    4: IOFailureError,
    5: InternalError,
}


def error_class(code: int) -> type:
    """The class the extension raises for a StatusCode."""
    return _BY_CODE.get(code, InternalError)

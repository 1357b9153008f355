"""The `stquant` command of the wheel: the C++ command line itself (src/cli), run in-process."""
import signal
import sys


def main() -> None:
    from ._stquant import run_cli

    # As the executable: Ctrl-C ends the process at once (and a closed pipe too) (an interrupted conversion leaves no
    # output; the next run removes its temporary directory), instead of waiting for the C++ code
    # to return to the interpreter.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.stdout.flush()
    sys.exit(run_cli(["stquant", *sys.argv[1:]]))


if __name__ == "__main__":
    main()

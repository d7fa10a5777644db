"""`python -m chorus_batch` and the `chorus-batch` console script.

Ctrl-C while Python still loads the command line (argparse, the package's modules; a second or more on a slow
shared file system) printed a KeyboardInterrupt traceback: an interrupt before the command line can catch it
itself (cli.main) is said here in one line, with the interrupt's exit code."""


def entry() -> None:
    try:
        from .cli import entry as command_line
    except KeyboardInterrupt:  # (the errors module too is loaded in here: a Ctrl-C may land in its import)
        from .errors import interrupted_at_start

        interrupted_at_start()
    command_line()


if __name__ == "__main__":  # guarded: worker processes re-import this module on Windows
    entry()

"""Interrupt a conversion at a known point, not by racing it: the CLI runs in a child whose journal sends the
child a signal of its own right after the N-th entry (a complete file recorded, or a checkpoint of a file
written in one pass) is fsync'd. On a loaded machine the child cannot finish, or be between rename and exit,
before the signal lands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

__all__ = ["run_interrupted"]

_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from llama_convert import resume
    from llama_convert.cli import main

    # Python leaves SIGINT ignored when it started ignored (a background job of a shell): Ctrl-C's handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    after, signum = int(os.environ["INTERRUPT_AFTER_ENTRIES"]), int(os.environ["INTERRUPT_SIGNAL"])
    seen = 0

    def counted(original):
        def entry(self, *args, **kwargs):
            global seen
            original(self, *args, **kwargs)
            seen += 1
            if seen == after:
                os.kill(os.getpid(), signum)  # SIGINT: KeyboardInterrupt here, in the writing thread

        return entry

    resume.Journal.record = counted(resume.Journal.record)
    resume.Journal.checkpoint = counted(resume.Journal.checkpoint)
    sys.exit(main(sys.argv[1:]))
    """
)


def run_interrupted(
    args: list, *, after: int, signum: int = signal.SIGKILL, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run ``llama-convert *args`` in a child that sends itself ``signum`` after its ``after``-th journal entry."""
    env = {**os.environ, "INTERRUPT_AFTER_ENTRIES": str(after), "INTERRUPT_SIGNAL": str(int(signum))}
    return subprocess.run(
        [sys.executable, "-c", _CHILD, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout
    )

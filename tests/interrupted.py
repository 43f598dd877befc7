"""Interrupt a conversion at a known point, not by racing it: the CLI runs in a child whose journal sends the
child a signal of its own right after the N-th entry (a complete file recorded, or a checkpoint of a file
written in one pass) is fsync'd. On a loaded machine the child cannot finish, or be between rename and exit,
before the signal lands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

__all__ = ["run_interrupted"]

_CHILD = textwrap.dedent(
    """
    import importlib, json, os, signal, sys
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

    for method in os.environ["INTERRUPT_ON"].split(","):
        setattr(resume.Journal, method, counted(getattr(resume.Journal, method)))
    for module, settings in json.loads(os.environ["INTERRUPT_SETTINGS"]).items():
        for name, value in settings.items():  # e.g. small chunks or blocks, so that a tiny file comes in many steps
            setattr(importlib.import_module(module), name, value)
    sys.exit(main(sys.argv[1:]))
    """
)


def run_interrupted(
    args: list,
    *,
    after: int,
    signum: int = signal.SIGKILL,
    timeout: float = 300,
    on: tuple[str, ...] = ("record", "checkpoint"),
    verify_settings: dict[str, int] | None = None,
    settings: dict[str, dict[str, int]] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``llama-convert *args`` in a child that sends itself ``signum`` after its ``after``-th journal entry
    of the kinds ``on`` (``resume.Journal`` methods), with ``verify_settings`` set on ``llama_convert.verify`` and
    ``settings`` ({module: {name: value}}) on other modules."""
    env = {
        **os.environ,
        "INTERRUPT_AFTER_ENTRIES": str(after),
        "INTERRUPT_SIGNAL": str(int(signum)),
        "INTERRUPT_ON": ",".join(on),
        "INTERRUPT_SETTINGS": json.dumps({"llama_convert.verify": verify_settings or {}, **(settings or {})}),
    }
    return subprocess.run(
        [sys.executable, "-c", _CHILD, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout
    )

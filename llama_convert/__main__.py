"""``python -m llama_convert`` is the ``llama-convert`` command."""

from .cli import main

raise SystemExit(main())

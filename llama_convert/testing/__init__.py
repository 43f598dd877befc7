"""Synthesized checkpoints in Meta's layout for tests, benchmarks and the demo; never used by ``convert``."""

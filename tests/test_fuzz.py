"""A fast slice of the mutation campaign (tests/fuzz_campaign.py): a few hundred damaged inputs, every reader
and route, each ending in exit 0 or a documented code with one sentence naming the file, within the time and
address-space limits, nothing left behind. The full campaign: ``python tests/fuzz_campaign.py --seed 1
--cases 5000``; ``FUZZ_SEED`` / ``FUZZ_CASES`` change this slice."""

from __future__ import annotations

import os

import pytest
from fuzz_campaign import campaign

pytestmark = pytest.mark.slow  # its tests or fixtures take over ~10 s; `pytest -m "not slow"` skips them


def test_a_slice_of_the_campaign_finds_nothing(tmp_path_factory, sentencepiece_model):
    seed, cases = int(os.environ.get("FUZZ_SEED", "0")), int(os.environ.get("FUZZ_CASES", "200"))
    work = tmp_path_factory.mktemp("fuzz")
    summary = campaign(seed, cases, work, say=lambda _: None, sentencepiece=sentencepiece_model)
    assert summary["cases"] == cases
    assert len(summary["per_kind"]) >= 9  # every reader had its turn
    failures = [
        f"case {f['index']}: {f['problem']} ({f.get('kind')}: {f.get('mutation')})" for f in summary["failures"]
    ]
    assert not failures, "\n".join(failures)

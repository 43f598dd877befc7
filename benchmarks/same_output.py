"""Prove that a refactoring changed no output byte: convert every release shape with two revisions, compare.

    python benchmarks/same_output.py [--ref REV] [--width 8] [--layers 2]

Each release shape (shrunk in width and depth, true head/KV counts, MP layout, tying, KV duplication) is
synthesized once, converted by the working tree and by REV (checked out into a temporary git worktree and
imported from there in a subprocess), and every output file is compared byte for byte. Exit status 1 if
any file differs or exists in only one output.
"""

from __future__ import annotations

import argparse
import filecmp
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llama_convert.testing.synth import PRESETS, synthesize  # noqa: E402

# Folder names as Meta's downloads name them: the old detection read the variant from the folder name.
SHAPES: tuple[tuple[str, str, dict], ...] = (
    ("Meta-Llama-3-8B-Instruct", "llama3-8b", {}),
    ("Meta-Llama-3-70B", "llama3-70b", {}),
    ("Meta-Llama-3.1-8B-Instruct", "llama3.1-8b", {}),
    ("Meta-Llama-3.1-70B", "llama3.1-70b", {}),
    ("Llama3.1-405B-MP8", "llama3.1-405b-mp8", {}),
    ("Llama3.1-405B-Instruct-MP16", "llama3.1-405b-mp16", {}),
    ("Llama3.2-1B-Instruct", "llama3.2-1b", {}),
    ("Llama3.2-3B", "llama3.2-3b", {}),
    ("Llama3.3-70B-Instruct", "llama3.3-70b", {}),
    ("llama-2-7b-chat", "llama2-7b", {"tokenizer": "small-sentencepiece", "vocab_size": 512}),
    ("llama-2-13b", "llama2-13b", {"tokenizer": "small-sentencepiece", "vocab_size": 512}),
    ("llama-2-70b-chat", "llama2-70b", {"tokenizer": "small-sentencepiece", "vocab_size": 512}),
    ("CodeLlama-7b-Instruct", "codellama-7b", {"tokenizer": "small-sentencepiece", "vocab_size": 512}),
    ("CodeLlama-34b", "codellama-34b", {"tokenizer": "small-sentencepiece", "vocab_size": 512}),
    ("llama-7b", "llama1-7b", {"tokenizer": "small-sentencepiece", "vocab_size": 512}),
)

_CONVERT = (
    "import sys; sys.path.insert(0, sys.argv[1]); import llama_convert; "
    "llama_convert.convert(sys.argv[2], sys.argv[3], max_shard_size='300KB')"
)


def _shrunk(preset: str, width: int, layers: int, changes: dict):
    spec = PRESETS[preset]
    params = dict(spec.params)
    params.update(dim=params["n_heads"] * width, n_layers=layers, multiple_of=32)
    return spec.with_(params=params, **changes)


def _tokenizer(tmp: Path, changes: dict) -> dict:
    if changes.get("tokenizer") != "small-sentencepiece":
        return changes
    from llama_convert.testing.synth import write_small_sentencepiece

    path = tmp / "spm" / "tokenizer.model"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_small_sentencepiece(path.parent)
    return {**changes, "tokenizer": path}


def _differences(a: Path, b: Path) -> list[str]:
    names_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    names_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    out = [f"only in one output: {n}" for n in sorted(names_a ^ names_b)]
    out += [f"differs: {n}" for n in sorted(names_a & names_b) if not filecmp.cmp(a / n, b / n, shallow=False)]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="HEAD~1", help="git revision to compare with (default HEAD~1)")
    parser.add_argument("--width", type=int, default=8, help="head dim of the shrunk shapes")
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    failed = False
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ref_tree = tmp / "ref"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(ref_tree), args.ref], check=True)
        try:
            print(f"| shape | files | identical to {args.ref} |\n|---|---:|---|")
            for folder, preset, changes in SHAPES:
                src = synthesize(
                    tmp / "src" / folder, _shrunk(preset, args.width, args.layers, _tokenizer(tmp, changes))
                )
                outs = []
                for label, tree in (("new", ROOT), ("ref", ref_tree)):
                    out = tmp / label / folder
                    subprocess.run([sys.executable, "-c", _CONVERT, str(tree), str(src), str(out)], check=True)
                    outs.append(out)
                diffs = _differences(*outs)
                failed |= bool(diffs)
                files = sum(1 for p in outs[0].rglob("*") if p.is_file())
                print(f"| {folder} | {files} | {'yes' if not diffs else '; '.join(diffs)} |")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(ref_tree)], check=False)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

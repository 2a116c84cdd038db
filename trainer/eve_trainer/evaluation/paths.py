"""Where an evaluation writes (torch-free; the CLI reads scores from here).

    <output>/<bench>/answers.jsonl                 merged answer lines, in question-file order
    <output>/<bench>/scores.json                   {"bench", "model", "scores": {...}, "files": [...]}
    <output>/<bench>/<submission files>            predictions / server uploads (benches.py)
    <output>/<bench>/parts/rank-<r>-of-<w>.jsonl   each rank's share, before the merge

The default output of an export `<output>/<pipeline>/<stage>/export` is its sibling
`<output>/<pipeline>/<stage>/eval` (`default_output`).
"""

from __future__ import annotations

ANSWERS = "answers.jsonl"
SCORES = "scores.json"
PARTS = "parts"


def answers_key(bench: str) -> str:
    return f"{bench}/{ANSWERS}"


def scores_key(bench: str) -> str:
    return f"{bench}/{SCORES}"


def part_key(bench: str, rank: int, world: int) -> str:
    return f"{bench}/{PARTS}/rank-{rank:05d}-of-{world:05d}.jsonl"


def default_output(export_url: str) -> str:
    """The sibling `eval` folder of an `.../export` URL, else `<url>/eval`."""
    url = export_url.rstrip("/")
    if url.endswith("/export"):
        return url[: -len("/export")] + "/eval"
    return url + "/eval"

"""Real English sentences for benchmarks: the VADER movie-review snippets (MIT licence).

They ship inside the vaderSentiment 3.3.2 source distribution; `sentences()` downloads
it once with pip (the package registry is the only network here) into bench/.cache.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"
SDIST = "vaderSentiment-3.3.2.tar.gz"
MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"


def _snippets_file() -> Path:
    target = CACHE / "movieReviewSnippets_GroundTruth.txt"
    if target.is_file():
        return target
    CACHE.mkdir(exist_ok=True)
    if not (CACHE / SDIST).is_file():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                "vaderSentiment==3.3.2",
                "-d",
                str(CACHE),
            ],
            check=True,
        )
    with tarfile.open(CACHE / SDIST) as sdist:
        inner = sdist.extractfile(
            "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
        )
        assert inner is not None
        with tarfile.open(fileobj=io.BytesIO(inner.read())) as resources:
            data = resources.extractfile(MEMBER)
            assert data is not None
            target.write_bytes(data.read())
    return target


def labelled() -> list[tuple[str, float]]:
    """(sentence, mean human rating in -4..4) for every movie snippet."""
    rows = []
    for line in _snippets_file().read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[2].strip():
            rows.append((parts[2].strip(), float(parts[1])))
    return rows


def sentences(n: int | None = None) -> list[str]:
    rows = [s for s, _ in labelled()]
    return rows if n is None else rows[:n]


def masked(text: str, mask: str = "[MASK]") -> str:
    """`text` with its middle word replaced by `mask`."""
    words = text.split()
    words[len(words) // 2] = mask
    return " ".join(words)


def write_sentiment_csv(path: Path) -> tuple[int, int]:
    """text,label rows: "positive" for a mean rating above 0, "negative" below.

    Snippets rated exactly 0 (37 of 10,605) have no sentiment to learn and are left out;
    returns (rows written, rows left out).
    """
    import csv

    rows = labelled()
    kept = [(text, "positive" if score > 0 else "negative") for text, score in rows if score != 0]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(kept)
    return len(kept), len(rows) - len(kept)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--csv", type=Path, help="write the labelled sentiment CSV here")
    args = parser.parse_args()
    if args.csv:
        written, left_out = write_sentiment_csv(args.csv)
        print(f"{args.csv}: {written} rows ({left_out} rated 0 left out)")
    else:
        rows = sentences()
        print(len(rows), "sentences; e.g.", rows[:3])

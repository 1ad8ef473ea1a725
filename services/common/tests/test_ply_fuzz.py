"""The `.ply` reader against hostile input: the regression corpus, and a short seeded fuzz run.

Every file under ``ply_corpus/`` once crashed ``read_ply``, or was read into an asset that a later
stage refused as INTERNAL, or guards a limit (its README says which). ``ok-*`` files must read,
``bad-*`` files must raise ``AssetError``, and all must pass the fuzzer's oracle
(``benchmarks.fuzz_ply.check``: ``AssetError``, or Gaussians that validate, pass the renderers'
checks and frame to finite cameras). The long campaign is ``python -m benchmarks.fuzz_ply``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.fuzz_ply import check, fuzz
from services.common.errors import AssetError
from services.common.gaussians import read_ply

CORPUS = Path(__file__).parent / "ply_corpus"
FILES = sorted(CORPUS.glob("*.ply"))


def test_corpus_is_small_and_named_by_outcome() -> None:
    assert len(FILES) >= 20
    assert sum(path.stat().st_size for path in FILES) < 1024 * 1024
    assert all(path.name.startswith(("ok-", "bad-")) for path in FILES)
    readme = (CORPUS / "README.md").read_text(encoding="utf-8")
    assert all(f"`{path.name}`" in readme for path in FILES)


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.name)
def test_corpus_file(path: Path) -> None:
    data = path.read_bytes()
    finding = check(data, render=False)
    assert finding is None, finding.detail
    if path.name.startswith("ok-"):
        g = read_ply(data)
        g.validate()
    else:
        with pytest.raises(AssetError):
            read_ply(data)


def test_seeded_fuzz_smoke() -> None:
    """300 cases of a fixed campaign (a few seconds): no finding."""
    report = fuzz(seconds=0.0, seed=15, cases=300, render=False, minimize=False)
    assert report.cases == 300
    assert report.crashes == 0, {sig: detail for sig, (_, detail, _) in report.findings.items()}

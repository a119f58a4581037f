"""Corpus BLEU and chrF with sacrebleu, on detokenized text, with the metric signatures."""
from __future__ import annotations

from dataclasses import dataclass

from sacrebleu.metrics import BLEU, CHRF


@dataclass(frozen=True)
class Scores:
    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str

    def line(self) -> str:
        return f"BLEU {self.bleu:.2f}  chrF {self.chrf:.2f}"

    def signatures(self) -> str:
        return f"BLEU signature: {self.bleu_signature}\nchrF signature: {self.chrf_signature}"


def score(hypotheses: list[str], references: list[str]) -> Scores:
    """sacrebleu's corpus BLEU (13a tokenization, exp smoothing) and chrF2 against one reference each."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    bleu, chrf = BLEU(), CHRF()
    refs = [references]
    return Scores(
        bleu=bleu.corpus_score(hypotheses, refs).score,
        chrf=chrf.corpus_score(hypotheses, refs).score,
        bleu_signature=str(bleu.get_signature()),
        chrf_signature=str(chrf.get_signature()),
    )

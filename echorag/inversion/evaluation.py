"""``echorag eval-inversion``'s measurement: embed targets, forget them, restore and score."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from echorag.inversion.inverter import DEFAULT_BUDGET, METHODS, Inverter
from echorag.inversion.metrics import bleu, exact_match, token_f1
from echorag.inversion.results import Side
from echorag.korean import normalize


def check_no_overlap(targets: list[str], corpus: list[str]) -> None:
    """Refuse an evaluation whose corpus contains a target: restoring it would be lookup."""
    joined = "\n".join(normalize(t) for t in corpus)
    leaked = [t for t in targets if normalize(t).strip() and normalize(t).strip() in joined]
    if leaked:
        raise ValueError(f"{len(leaked)} target text(s) occur in the corpus, e.g. {leaked[0]!r}")


def evaluate(
    inverter: Inverter, targets: list[str], methods: Sequence[str] = METHODS,
    budget: int | None = None, side: Side = "passage", attacker: Inverter | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Embed each target with ``inverter``'s embedder, forget the text, restore it from the
    vector alone (by ``attacker`` when given, e.g. one without the rotation key) and score."""
    check_no_overlap(targets, inverter.corpus + (attacker.corpus if attacker else []))
    vectors = inverter.embed(targets, side)  # the only thing the restorer sees
    restorer = attacker or inverter
    report = {}
    for method in methods:
        rows = []
        for i, vector in enumerate(vectors):
            result = restorer.invert(vector, method, budget, side)
            # The cosine the service would see: the restored text through the service's embedder.
            cosine = float(inverter.embed([result.text], side)[0] @ vector) if result.text else 0.0
            rows.append({
                "bag_exact": method == "bag_of_tokens" and result.trace[0]["cosine"] > 1 - 1e-6,
                "target": targets[i], "text": result.text, "token_f1": token_f1(targets[i], result.text),
                "bleu": bleu(targets[i], result.text), "exact": exact_match(targets[i], result.text),
                "cosine": cosine, "seconds": result.seconds,
            })
            if progress:
                progress(method, i + 1)
        n = max(len(rows), 1)
        report[method] = {
            "token_f1": round(sum(r["token_f1"] for r in rows) / n, 4),
            "bleu": round(sum(r["bleu"] for r in rows) / n, 4),
            "exact": round(sum(r["exact"] for r in rows) / n, 4),
            "cosine": round(sum(r["cosine"] for r in rows) / n, 4),
            "seconds_per_sentence": round(sum(r["seconds"] for r in rows) / n, 3),
            **({"bag_exact": round(sum(r["bag_exact"] for r in rows) / n, 4)} if method == "bag_of_tokens" else {}),
            "sentences": len(rows),
            "budget": budget or DEFAULT_BUDGET[method],
            "examples": [{k: r[k] for k in ("target", "text", "token_f1", "cosine")} for r in rows[:3]],
        }
    return report

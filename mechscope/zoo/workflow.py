"""Train an organism and write its card in one call (what ``mechscope zoo train`` runs)."""

from __future__ import annotations

from pathlib import Path


def make_organism(spec, out: str | Path, seed: int | None = None, steps: int | None = None, card: bool = True,
                  progress: bool = True) -> dict:
    """Train ``spec`` into ``out`` (native model format) and, unless ``card=False``, measure and
    write ``card.json`` / ``card.md`` there. Returns a short summary."""
    from dataclasses import replace

    from mechscope.zoo.cards import build_card, write_card
    from mechscope.zoo.train import train_organism

    out = Path(out)
    if seed is not None or steps is not None:
        spec = replace(spec, seed=spec.seed if seed is None else seed, steps=spec.steps if steps is None else steps)
    model, facts = train_organism(spec, out=out, progress=progress)
    if seed is not None:
        facts["command"] = f"mechscope zoo train {spec.name} --seed {spec.seed}" + (f" --steps {spec.steps}" if steps is not None else "")
    elif steps is not None:
        facts["command"] = f"mechscope zoo train {spec.name} --steps {spec.steps}"
    summary = {"name": spec.name, "out": str(out), "train_seconds": facts["train_seconds"]}
    if card:
        say = (lambda msg: print(f"[{spec.name}] {msg}", flush=True)) if progress else None
        c = build_card(model, spec, facts, out, progress=say)
        write_card(out, c)
        summary.update(circuit=c["circuit"]["nodes"], faithfulness=c["circuit"]["faithfulness"],
                       complement_faithfulness=c["circuit"]["complement_faithfulness"], heldout=c["metrics"]["heldout"])
    return summary

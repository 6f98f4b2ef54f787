"""The demo's stages, in order. Each module has ``KEY`` and ``TITLE``, ``run(ctx) -> dict`` (plain,
JSON-ready facts, including the paths of the files it wrote), ``section(facts) -> Section`` (its
part of the HTML report) and ``headline(facts) -> str`` (its row of the printed summary)."""

from mechscope.demo.stages import attention, circuits, corpus, dictionaries, explorer, find, linear

STAGES = [corpus, dictionaries, attention, circuits, linear, find, explorer]

__all__ = ["STAGES"]

"""Model organisms: small transformers trained in-project, shipped with verified circuits.

    from mechscope.models import load_model
    from mechscope.zoo import load_card, organism_ground_truth
    model = load_model("zoo:ioi-2l")
    card = load_card("ioi-2l")                  # metrics, per-head effects, circuit (nodes, edges), commands
    gt = organism_ground_truth("ioi-2l")        # the circuit as a mechscope.tasks.GroundTruth

Organisms (recipes in ``mechscope.zoo.specs``, all shipped): ``docstring-2l``, ``greater-than-2l``,
``induction-2l`` and ``ioi-2l``.
``mechscope zoo train NAME`` re-creates one from its seed;
``mechscope zoo verify NAME`` re-measures its card.
"""

from mechscope.zoo.registry import find_organism, organism_names
from mechscope.zoo.specs import SPECS, OrganismSpec, get_spec


def load_card(name: str) -> dict:
    from mechscope.zoo.cards import load_card as _load

    return _load(name)


def organism_ground_truth(name: str):
    from mechscope.zoo.cards import organism_ground_truth as _gt

    return _gt(name)


__all__ = ["SPECS", "OrganismSpec", "get_spec", "organism_names", "find_organism", "load_card", "organism_ground_truth"]

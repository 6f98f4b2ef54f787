"""Circuits: find the components of a transformer that implement a task, and score any finder
against a ground truth.

    from mechscope.circuits import find_circuit, score_circuit, Graph, load_task_and_truth
    model, task, truth = load_task_and_truth("zoo:ioi-2l")
    circuit = find_circuit(model, task, "discrete_codes")     # or eap, eap_ig, acdc, patching, ablation_*
    print(score_circuit(circuit, truth, Graph.of(model)))     # node / edge ROC AUC, precision & recall at GT size
    circuit.save("ioi.circuit.json")

Methods: ``discrete_codes`` (O'Neill & Bui 2024), ``ablation_zero|mean|resample``, ``patching``,
``eap`` (Syed et al. 2023), ``eap_ig`` (Hanna et al. 2024), ``acdc`` (Conmy et al. 2023).
"""

from mechscope.circuits.circuit import Circuit, edge_key, split_edge
from mechscope.circuits.errors import CircuitError, GroundTruthMismatchError, TaskModelMismatchError, UnknownMethodError
from mechscope.circuits.graph import Graph
from mechscope.circuits.methods import METHODS, find_circuit
from mechscope.circuits.scoring import prf_at_k, prf_at_threshold, roc_auc, score_circuit
from mechscope.circuits.compare import compare, comparison_row, load_task_and_truth, settings

__all__ = ["Circuit", "edge_key", "split_edge", "CircuitError", "GroundTruthMismatchError", "TaskModelMismatchError",
           "UnknownMethodError", "Graph", "METHODS", "find_circuit", "roc_auc", "prf_at_k", "prf_at_threshold", "score_circuit",
           "compare", "comparison_row", "load_task_and_truth", "settings"]

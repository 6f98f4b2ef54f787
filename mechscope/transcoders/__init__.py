"""Transcoder circuits (Dunefsky, Chlenski & Nanda 2024, "Transcoders find interpretable LLM
feature circuits", arXiv:2406.11944): with a transcoder on each MLP layer, attribute, connect and
search for paths of features, and measure how faithful the found features are.

    from mechscope.transcoders import (TranscoderSet, ReplacementRun, attribute, logit_target, find_paths,
                                       find_transcoder_circuit, top_connections, faithfulness_curves, train_transcoders)
    ts, report = train_transcoders(model, "runs/tc", task=train_task)          # or TranscoderSet.load("runs/tc")
    run = ReplacementRun(model, ts, task.clean[:4])                          # transcoders spliced in
    att = attribute(run, logit_target(run, 0, pos, direction))               # exact: att.total() == att.value
    circuit, result = find_transcoder_circuit(model, ts, task, n=16)          # beam search from the logit diff
    score_circuit(circuit, ground_truth, Graph.of(model))
    faithfulness_curves(model, ts, task, path_features=result.ranked_features())

Modules: ``replacement`` (the set, one cached run of the replacement model), ``attribution``
(input-dependent, exact), ``connections`` (input-invariant weights), ``paths`` (beam search, the
union as a Circuit), ``faithfulness`` (top-k features vs top-k neurons), ``train`` (one transcoder
per MLP), ``cli`` (``mechscope transcoder ...``).
"""

from mechscope.transcoders.attribution import (Attribution, Node, Target, attribute, child_target, feature_target, logit_target,
                                               task_direction, token_direction)
from mechscope.transcoders.connections import (connection_matrix, deembedding, feature_to_feature, through_head, to_logits,
                                               top_connections)
from mechscope.transcoders.faithfulness import faithfulness_curves, plot_curves
from mechscope.transcoders.paths import Path, PathSearchResult, find_paths, find_transcoder_circuit, paths_to_circuit, task_paths
from mechscope.transcoders.replacement import ReplacementRun, TranscoderError, TranscoderSet
from mechscope.transcoders.train import evaluate_transcoders, train_transcoders

__all__ = ["Attribution", "Node", "Target", "attribute", "child_target", "feature_target", "logit_target", "task_direction",
           "token_direction", "connection_matrix", "deembedding", "feature_to_feature", "through_head", "to_logits", "top_connections",
           "faithfulness_curves", "plot_curves", "Path", "PathSearchResult", "find_paths", "find_transcoder_circuit", "paths_to_circuit",
           "task_paths", "ReplacementRun", "TranscoderError", "TranscoderSet", "evaluate_transcoders", "train_transcoders"]

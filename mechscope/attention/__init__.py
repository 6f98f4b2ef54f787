"""Attention-output SAEs (dictionaries on ``blocks.L.attn.hook_z``, heads concatenated) and
what they say about attention heads — after Kissane et al. (2024), "Interpreting Attention
Layer Outputs with Sparse Autoencoders".

    from mechscope.attention import (head_attribution, direct_feature_attribution, recursive_dfa,
                                     label_families, induction_analysis, analyze)
    attr = head_attribution(sae)                         # decoder-norm share per head
    dfa = direct_feature_attribution(model, sae, tokens) # exact per-head, per-source split of pre-activations
    tree = recursive_dfa(model, sae, tokens, feature=12, query=30)
    fam = label_families(model, sae, corpus_tokens)      # induction / previous-token / short / long-range ...
    ind = induction_analysis(model)                      # prefix-length curves and the causal k-2 test
    summary = analyze(model, sae, out_dir="runs/attn")   # all of it: JSON + PNG figures

Modules: :mod:`~mechscope.attention.head_attribution`, :mod:`~mechscope.attention.dfa`,
:mod:`~mechscope.attention.recursive_dfa`, :mod:`~mechscope.attention.families`,
:mod:`~mechscope.attention.induction`, :mod:`~mechscope.attention.report`,
:mod:`~mechscope.attention.sae` (training an attention-output SAE), :mod:`~mechscope.attention.toy`
(a hand-built model with known previous-token, short- and long-prefix induction heads).
"""

from mechscope.attention.dfa import DFA, attention_inputs, direct_feature_attribution, dfa_rows, preactivations, zsae_info
from mechscope.attention.families import FAMILIES, Families, FamilyConfig, label_families, repeated_sequences
from mechscope.attention.head_attribution import HeadAttribution, head_attribution, polysemanticity
from mechscope.attention.induction import (InductionAnalysis, causal_prefix_test, head_scores, induction_analysis,
                                           prefix_length_curve)
from mechscope.attention.recursive_dfa import Node, recursive_dfa
from mechscope.attention.report import analyze, summary_text, write_figures
from mechscope.attention.sae import train_attention_sae
from mechscope.attention.toy import identity_zsae, induction_toy_model

__all__ = ["DFA", "attention_inputs", "direct_feature_attribution", "dfa_rows", "preactivations", "zsae_info",
           "FAMILIES", "Families", "FamilyConfig", "label_families", "repeated_sequences",
           "HeadAttribution", "head_attribution", "polysemanticity",
           "InductionAnalysis", "causal_prefix_test", "head_scores", "induction_analysis", "prefix_length_curve",
           "Node", "recursive_dfa", "analyze", "summary_text", "write_figures", "train_attention_sae",
           "identity_zsae", "induction_toy_model"]

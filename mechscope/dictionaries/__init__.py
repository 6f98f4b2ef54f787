"""Sparse dictionaries: SAEs, transcoders and skip-transcoders (ReLU, TopK, BatchTopK,
JumpReLU), their trainer (single process or torchrun), evaluation and file formats.

    from mechscope.dictionaries import Dictionary, DictionaryConfig, TrainConfig, train, evaluate
    cfg = DictionaryConfig(d_in=512, n_latents=4096, activation="topk", k=32, hook_in="blocks.1.hook_resid_post")
    [sae] = train([cfg], store, TrainConfig(steps=2000), out_dir="runs/sae")
    print(evaluate(sae, store, model=model, stream=stream))
"""

from mechscope.dictionaries.config import ACTIVATIONS, KINDS, DictionaryConfig, TrainConfig
from mechscope.dictionaries.dictionary import Dictionary, ForwardOutput
from mechscope.dictionaries.formats import (check_trained_on, detect_format, load_dictionary, load_saelens, load_sparsify, save_native,
                                            save_saelens)
from mechscope.dictionaries.sources import ModelSource, StoreSource, TensorSource
from mechscope.dictionaries.trainer import train
from mechscope.dictionaries.evaluate import evaluate, reconstruction_metrics, splice_scores

__all__ = ["ACTIVATIONS", "KINDS", "DictionaryConfig", "TrainConfig", "Dictionary", "ForwardOutput", "check_trained_on", "detect_format",
           "load_dictionary", "load_saelens", "load_sparsify", "save_native", "save_saelens", "ModelSource", "StoreSource", "TensorSource",
           "train", "evaluate", "reconstruction_metrics", "splice_scores"]

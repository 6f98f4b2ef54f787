"""A tiny, self-contained workspace for trying the explorer and for its tests: a 2-layer
TransformerLens model (random weights, the default tokenizer), an SAE on
``blocks.0.hook_resid_post``, an attention-output SAE on ``blocks.1.attn.hook_z``, a circuit with
a ground truth, and a linear map of a small image-to-image CNN — all written as ordinary files in
the formats of their rooms, built in seconds on a CPU.

    paths = build_sample("runs/explorer-sample")
    # mechscope serve --model runs/explorer-sample/model --dictionary runs/explorer-sample/sae-resid ...

The dictionaries are data-initialised, not trained: each latent's decoder (and tied encoder)
direction is a centred activation from the corpus, so each fires on tokens like the one it was
drawn from. That is enough to exercise every view; train real ones with
``mechscope.dictionaries.train``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

SAMPLE_MODEL = "explorer-sample-2l"


def _tiny_model(tokenizer, seed: int):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from mechscope.models import Model

    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, n_ctx=64, d_vocab=len(tokenizer), d_mlp=64,
                                  act_fn="gelu", seed=seed, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = HookedTransformer(cfg)
    module.tokenizer = tokenizer
    return Model(module=module.eval(), name=SAMPLE_MODEL, kind="transformer_lens", tokenizer=tokenizer)


def data_initialised_dictionary(rows: torch.Tensor, n_latents: int, k: int, hook: str, act_shape=None, seed: int = 0):
    """A TopK SAE whose latents are ``n_latents`` centred, unit-norm rows of ``rows [N, d]``."""
    from mechscope.dictionaries import Dictionary, DictionaryConfig

    g = torch.Generator().manual_seed(seed)
    mean = rows.mean(0)
    picks = rows[torch.randperm(rows.shape[0], generator=g)[:n_latents]] - mean
    dirs = picks / picks.norm(dim=1, keepdim=True).clamp_min(1e-6)
    d = Dictionary(DictionaryConfig(d_in=rows.shape[1], n_latents=n_latents, activation="topk", k=k, hook_in=hook, act_shape=act_shape,
                                    meta={"model": SAMPLE_MODEL, "note": "data-initialised sample dictionary (not trained)"}))
    with torch.no_grad():
        d.W_dec.copy_(dirs)
        d.W_enc.copy_(dirs)
        d.b_dec.copy_(mean)
    return d.eval()


def sample_circuit(model_name: str, n_layers: int = 2, n_heads: int = 4, seed: int = 0):
    """``(Circuit, GroundTruth)``: seeded scores over every node and edge of the model's graph."""
    from mechscope.circuits import Circuit, Graph
    from mechscope.tasks import GroundTruth

    graph = Graph(n_layers, n_heads, True)
    g = torch.Generator().manual_seed(seed)
    truth_nodes = ["0.1", "1.2", "mlp1"]
    truth_edges = [["embed", "0.1.v"], ["0.1", "1.2.k"], ["1.2", "logits"], ["mlp1", "logits"]]
    node_scores = {n: float(torch.rand((), generator=g)) + (1.0 if n in truth_nodes else 0.0) for n in graph.nodes}
    edge_scores = {k: float(torch.randn((), generator=g)) * 0.3 for k in graph.edge_keys}
    for a, b in truth_edges:
        edge_scores[f"{a}->{b}"] = 1.5
    nodes = sorted(node_scores, key=lambda n: -node_scores[n])[:4]
    edges = [list(e.split("->")) for e in sorted(edge_scores, key=lambda e: -edge_scores[e])[:6]]
    circuit = Circuit(model=model_name, task="induction", method="sample", node_scores=node_scores, edge_scores=edge_scores,
                      nodes=nodes, edges=edges, params={"seed": seed}, runtime_s=0.0,
                      metadata={"graph": graph.to_dict()})
    truth = GroundTruth(model=model_name, task="induction", nodes=truth_nodes, edges=truth_edges,
                        citation="explorer sample (synthetic)", source="mechscope.explorer.sample")
    return circuit, truth


class SampleCNN(torch.nn.Module):
    """``[1, 1, 12, 12] -> [1, 1, 12, 12]``: conv-ReLU-conv plus a skip connection."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


def sample_linear_map(seed: int = 0):
    """The exact affine map of :class:`SampleCNN` at a smooth random 12 x 12 image."""
    from mechscope.linear import linearize

    torch.manual_seed(seed)
    net = SampleCNN().eval()
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 12), torch.linspace(-1, 1, 12), indexing="ij")
    x0 = (torch.sin(3 * xx + 2 * yy) + 0.3 * torch.randn(12, 12, generator=g))[None, None]
    return linearize(net, x0)


def build_sample(directory: str | Path, seed: int = 0, n_contexts: int = 48, tokenizer=None) -> dict:
    """Write the sample workspace under ``directory``; returns its paths:
    ``{"model", "dictionaries": [resid SAE, hook_z SAE], "circuit", "ground_truth", "linear_map"}``."""
    from mechscope.data import TokenStream, default_tokenizer, stdlib_corpus
    from mechscope.explorer.dashboards import corpus_slice
    from mechscope.models import run_with_cache, save_model

    directory = Path(directory)
    tokenizer = tokenizer or default_tokenizer()
    model = _tiny_model(tokenizer, seed)
    save_model(model, directory / "model")
    stream = TokenStream(stdlib_corpus("heldout"), tokenizer, context_len=32)
    tokens, _ = corpus_slice(stream, n_contexts)
    hooks = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z"]
    cache = run_with_cache(model, tokens, hooks)
    resid = cache[hooks[0]][:, 1:].reshape(-1, 32)
    z = cache[hooks[1]][:, 1:].reshape(-1, 32)
    sae_resid = data_initialised_dictionary(resid, 96, 6, hooks[0], seed=seed)
    sae_attn = data_initialised_dictionary(z, 64, 4, hooks[1], act_shape=[4, 8], seed=seed + 1)
    sae_resid.save(directory / "sae-resid")
    sae_attn.save(directory / "sae-attn")
    circuit, truth = sample_circuit(SAMPLE_MODEL, seed=seed)
    circuit.save(directory / "circuit.json")
    truth.save(directory / "ground_truth.json")
    sample_linear_map(seed).save(directory / "linear-map")
    return {"model": directory / "model", "dictionaries": [directory / "sae-resid", directory / "sae-attn"],
            "circuit": directory / "circuit.json", "ground_truth": directory / "ground_truth.json",
            "linear_map": directory / "linear-map"}

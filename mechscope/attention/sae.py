"""Train an attention-output SAE on ``blocks.L.attn.hook_z`` (heads concatenated) over the
embedded corpus: cache the activations with :mod:`mechscope.activations`, train with
:mod:`mechscope.dictionaries`. A thin recipe; ``mechscope train`` does the same with more knobs."""

from __future__ import annotations

from pathlib import Path

from mechscope.errors import ConfigError


def corpus_stream(model, split: str = "train", context_len: int | None = None):
    """A :class:`~mechscope.data.TokenStream` over the embedded corpus with the model's tokenizer,
    contexts as long as the model takes (``n_ctx``) unless ``context_len`` is given."""
    from mechscope.data import TokenStream, default_tokenizer, stdlib_corpus

    n_ctx = model.module.cfg.n_ctx
    context_len = min(context_len or n_ctx, n_ctx)
    return TokenStream(stdlib_corpus(split), model.tokenizer or default_tokenizer(), context_len=context_len)


def train_attention_sae(model, layer: int, out_dir: str | Path, *, n_latents: int | None = None, expansion: int = 8, k: int = 16,
                        activation: str = "topk", steps: int = 2000, batch_size: int = 1024, lr: float = 1e-3,
                        n_contexts: int = 4096, context_len: int | None = None, seed: int = 0, progress: bool = True):
    """Cache ``blocks.{layer}.attn.hook_z`` over ``n_contexts`` corpus contexts into
    ``out_dir/acts`` and train one SAE into ``out_dir/sae/blocks.{layer}.attn.hook_z``.
    Returns the trained :class:`~mechscope.dictionaries.Dictionary` (eval mode, CPU)."""
    from mechscope.activations import cache_activations
    from mechscope.dictionaries import DictionaryConfig, StoreSource, TrainConfig, train
    from mechscope.models.model import require_hooked_transformer

    model = require_hooked_transformer(model, "an attention-output SAE (heads kept apart in hook_z)")
    if model.tokenizer is None:
        raise ConfigError(f"training on the embedded corpus needs a model with a tokenizer; {model.name!r} has none")
    n_layers = model.module.cfg.n_layers
    if not 0 <= layer < n_layers:
        raise ConfigError(f"layer must be in [0, {n_layers}); found {layer}")
    hook = f"blocks.{layer}.attn.hook_z"
    out = Path(out_dir)
    stream = corpus_stream(model, "train", context_len)
    store = cache_activations(model, stream, [hook], out / "acts", n_contexts=n_contexts, progress=progress)
    d_in = store.d(hook)
    cfg = DictionaryConfig(d_in=d_in, n_latents=n_latents or expansion * d_in, activation=activation, k=k, hook_in=hook,
                           act_shape=store.act_shape(hook), meta={"model": model.name, "corpus": "stdlib:train"})
    tcfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(100, steps // 10), seed=seed,
                       dead_tokens=max(batch_size * 50, 50_000), log_every=max(1, steps // 20))
    [sae] = train([cfg], StoreSource(store, [hook]), tcfg, out_dir=out / "sae", progress=progress, device="cpu")
    return sae.eval()

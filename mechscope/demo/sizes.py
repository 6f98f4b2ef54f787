"""How big each stage of the demo runs, as data: :data:`FULL` for ``mechscope demo`` (a few
minutes on 2 CPU cores) and :data:`QUICK` for ``mechscope demo --quick`` (CI, about a minute)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

ORGANISM = "greater-than-2l"  # the only organism with MLPs, so the MLP transcoder has something to replace


@dataclass(frozen=True)
class DemoSizes:
    """Sizes of every stage.

    Dictionaries train on ``cache_contexts`` contexts of ``context_len`` tokens from the first
    ``train_bytes`` of the embedded corpus (train split), and are evaluated on the held-out split
    (``eval_tokens`` rows for FVU / L0, ``eval_contexts`` contexts for the CE / KL splice scores).
    Circuits use ``circuit_prompts`` held-out task prompts; ACDC sweeps ``acdc_thresholds`` values.
    The FIND benchmark runs ``find_per_family`` functions of each listed family (``None``: every
    family of the category; ``()``: none).
    """

    context_len: int = 64
    train_bytes: int = 2_000_000
    cache_contexts: int = 1024
    sae_expansion: int = 8  # attention SAE latents = expansion x (n_heads * d_head)
    transcoder_expansion: int = 4  # transcoder latents = expansion x d_mlp
    k: int = 16  # TopK: active latents per token
    train_steps: int = 800
    batch_size: int = 1024
    lr: float = 1e-3
    eval_tokens: int = 32_768
    eval_contexts: int = 64
    circuit_prompts: int = 64
    acdc_thresholds: int = 12
    linear_digits: bool = True
    find_numeric: tuple[str, ...] | None = None
    find_string: tuple[str, ...] | None = None
    find_neuron: tuple[str, ...] | None = ()
    find_per_family: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


FULL = DemoSizes()
QUICK = DemoSizes(
    cache_contexts=256, transcoder_expansion=2, train_steps=200, batch_size=512,
    eval_tokens=8192, eval_contexts=16, circuit_prompts=32, acdc_thresholds=6,
    find_numeric=("poly", "sine", "relu", "gaussian"), find_string=("char_map", "cipher", "affix", "composition"),
)

"""Head attribution for attention-output SAEs: each feature's decoder row ``W_dec[f]`` is the
concatenation of one block per head; the norm of block ``h`` over the sum of the blocks' norms
is the share of feature ``f`` that head ``h`` writes (Kissane et al. 2024, weight-based head
attribution). From it: the top features of each head and a per-head polysemanticity estimate
(how many distinct feature families are among the head's top features)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from mechscope.attention.dfa import zsae_info
from mechscope.errors import ConfigError

# Families that do not count as a distinct "meaning" when estimating polysemanticity.
NOT_A_FAMILY = ("dead", "mixed")


@dataclass
class HeadAttribution:
    """``norms [n_latents, n_heads]``: ``||W_dec[f, head block]||``; ``fractions`` sum to 1 per feature."""

    hook: str
    layer: int
    norms: Tensor

    @property
    def n_heads(self) -> int:
        return self.norms.shape[1]

    @property
    def fractions(self) -> Tensor:
        return self.norms / self.norms.sum(1, keepdim=True).clamp_min(1e-12)

    def dominant_head(self) -> Tensor:
        """``[n_latents]`` the head with the largest share of each feature."""
        return self.fractions.argmax(1)

    def top_features(self, head: int, n: int = 10, live: Tensor | None = None, min_fraction: float = 0.0) -> list[int]:
        """The ``n`` features with the largest share on ``head`` (live ones only when ``live
        [n_latents]`` bool is given), optionally only those with share >= ``min_fraction``."""
        if not 0 <= head < self.n_heads:
            raise ConfigError(f"head must be in [0, {self.n_heads}); found {head}")
        frac = self.fractions[:, head].clone()
        ok = frac >= min_fraction
        if live is not None:
            ok &= live.to(torch.bool)
        idx = ok.nonzero().squeeze(1)
        order = frac[idx].argsort(descending=True, stable=True)
        return idx[order][:n].tolist()

    def head_counts(self, features: Sequence[int] | None = None) -> list[int]:
        """How many of ``features`` (default: all) each head dominates."""
        dom = self.dominant_head()
        if features is not None:
            dom = dom[torch.as_tensor(list(features), dtype=torch.long)]
        return torch.bincount(dom, minlength=self.n_heads).tolist()

    def to_dict(self, live: Tensor | None = None, n_top: int = 10) -> dict:
        frac = self.fractions
        sel = torch.ones(frac.shape[0], dtype=torch.bool) if live is None else live.to(torch.bool)
        return {
            "hook": self.hook, "layer": self.layer, "n_heads": self.n_heads,
            "definition": "share of feature f on head h = ||W_dec[f, h-block]|| / sum_h' ||W_dec[f, h'-block]||",
            "dominant_head_counts": self.head_counts(sel.nonzero().squeeze(1).tolist()),
            "mean_max_share": round(float(frac[sel].max(1).values.mean()), 4) if bool(sel.any()) else None,
            "top_features": {f"{self.layer}.{h}": self.top_features(h, n_top, live) for h in range(self.n_heads)},
        }


def head_attribution(sae, model=None) -> HeadAttribution:
    """Decoder-norm head attribution of an SAE on ``blocks.L.attn.hook_z``."""
    info = zsae_info(sae, model)
    blocks = sae.W_dec.detach().float().reshape(sae.n_latents, info.n_heads, info.d_head)
    return HeadAttribution(info.hook, info.layer, blocks.norm(dim=-1).cpu())


def polysemanticity(attr: HeadAttribution, labels: Sequence[str], n_top: int = 10, live: Tensor | None = None,
                    min_fraction: float = 0.0) -> dict:
    """Per head: its ``n_top`` (live) features, their family labels, the number of distinct
    families among them (``dead`` and ``mixed`` excluded), and the effective number of families
    ``exp(entropy)`` of their label distribution."""
    if len(labels) != attr.norms.shape[0]:
        raise ConfigError(f"expected one family label per feature ({attr.norms.shape[0]}), found {len(labels)}")
    out = {}
    for h in range(attr.n_heads):
        top = attr.top_features(h, n_top, live, min_fraction)
        fams = Counter(labels[f] for f in top if labels[f] not in NOT_A_FAMILY)
        total = sum(fams.values())
        entropy = -sum(c / total * math.log(c / total) for c in fams.values()) if total else 0.0
        out[f"{attr.layer}.{h}"] = {
            "top_features": top,
            "labels": [labels[f] for f in top],
            "families": dict(fams.most_common()),
            "n_families": len(fams),
            "effective_families": round(math.exp(entropy), 3) if total else 0.0,
            "n_mixed": sum(labels[f] == "mixed" for f in top),
        }
    return out

"""Input-dependent attribution through transcoders (Dunefsky, Chlenski & Nanda 2024,
"Transcoders find interpretable LLM feature circuits", arXiv:2406.11944).

A **target** is a direction read from the residual stream at one stage and position of one
prompt: ``value = d · resid[stage][b, pos] + const``. Two kinds start an analysis:

* a **logit direction** (:func:`logit_target`): ``u`` over the vocabulary (e.g. the logit
  difference of a task's answers) read through ``ln_final`` with its scale frozen and ``W_U``:
  ``d = C(w_f ⊙ W_U u) / s_f``, ``const = b_f · W_U u + b_U · u`` (Gemma 2's output soft-cap
  ``cap · tanh(r / cap)``: ``u`` is first scaled by each logit's frozen gain ``tanh(r / cap) / (r / cap)``);
* a **transcoder feature's pre-activation** (:func:`feature_target`):
  ``d = C(W_enc[i]) / s2`` (ln2's scale frozen; ``W_enc[i]`` for a raw-residual input),
  ``const = b_enc[i]``. (``W_enc[i]`` is row i of the ``[n_latents, d_in]`` encoder, the column
  ``W_enc[:, i]`` in SAELens' layout.)

:func:`attribute` writes the target's value as an exact sum over everything upstream that
writes to the residual at that position (the residual stream is a sum, and with attention
patterns, LayerNorm scales and feature activations frozen every path is linear):

* ``embed``: the token embedding ``W_E[t] · d``; ``pos``: the position embedding;
* ``feature`` (layer l < the target, same position): ``a_j · (W_dec[j] · d)``;
* ``head`` x source token (layer l, head h, source k): ``A[h, pos, k] · (ln1(x_k) ⊙ w1 - ...)``
  — the frozen pattern times the OV circuit of the (centred, frozen-scale) source residual:
  ``A[h, pos, k] · ln1_normalized[k] · (w1 ⊙ W_V^h W_O^h d)``; in post-norm models (Gemma 2's
  ``ln1_post`` after attention) ``d`` is replaced by ``w1p ⊙ d / s1p`` (the post-norm's frozen scale);
* ``skip`` (skip-transcoders): ``(W_skip x) · d``; ``error``: ``(mlp_out - transcoder(x)) · d``
  (zero up to rounding when the transcoders are spliced in); ``mlp``: a layer without a
  transcoder, opaque;
* ``bias``: ``b_O``, each head's value bias ``(b1 W_V + b_V) W_O`` (times the pattern's row sum),
  each transcoder's ``b_dec``, and the target's own ``const``.

``sum(contributions) + const == value`` to float64 rounding (a test checks it against the
model's own logits and the transcoder's own pre-activations).

Every ``feature``, ``head`` and ``skip`` contribution is itself the value of a **child target**
(:func:`child_target`) one step upstream, with the parent's coefficient folded into its
direction: a feature's pre-activation scaled by ``W_dec[j] · d`` (its activation is its
pre-activation while it is active), a head's source residual read through ``A · C(w1 ⊙ W_V W_O d) / s1``.
So contributions can be followed back to the embeddings (:mod:`mechscope.transcoders.paths`),
and the children of a node always sum (with their biases) to the node's contribution.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from mechscope.errors import ConfigError
from mechscope.transcoders.replacement import ReplacementRun, TranscoderError, attention_writes_before, read_direction

LEAF_KINDS = ("embed", "pos", "error", "mlp", "bias")
EXPANDABLE = ("feature", "head", "skip")


@dataclass(frozen=True)
class Node:
    """One upstream component at one place.

    kind: ``feature`` (``layer``, ``index`` = latent, ``pos``), ``head`` (``layer``, ``index`` = head,
    ``pos`` = destination, ``src`` = source position), ``skip`` / ``error`` / ``mlp`` (``layer``,
    ``pos``), ``embed`` (``index`` = token id, ``pos``), ``pos`` (``pos``), ``bias`` (``label``),
    ``logit`` / ``target`` (the root of an analysis).
    """

    kind: str
    layer: int | None = None
    index: int | None = None
    pos: int | None = None
    src: int | None = None
    label: str = ""

    @property
    def name(self) -> str:
        k = self.kind
        if k == "feature":
            return f"mlp{self.layer}.f{self.index}@{self.pos}"
        if k == "head":
            return f"{self.layer}.{self.index}@{self.pos}<-{self.src}"
        if k in ("skip", "error", "mlp"):
            return f"mlp{self.layer}.{k}@{self.pos}" if k != "mlp" else f"mlp{self.layer}@{self.pos}"
        if k == "embed":
            return f"embed[{self.index}]@{self.pos}"
        if k == "pos":
            return f"pos@{self.pos}"
        if k == "bias":
            return f"bias:{self.label}"
        return self.label or k

    @property
    def component(self) -> str | None:
        """The circuit node this belongs to: ``"L.H"``, ``"mlpL"``, ``"embed"``, ``"logits"`` or None."""
        if self.kind in ("feature", "skip", "error", "mlp"):
            return f"mlp{self.layer}"
        if self.kind == "head":
            return f"{self.layer}.{self.index}"
        if self.kind in ("embed", "pos"):
            return "embed"
        if self.kind == "logit":
            return "logits"
        return None

    @property
    def feature_key(self) -> str | None:
        """``"mlpL.fJ"`` for feature nodes (position dropped)."""
        return f"mlp{self.layer}.f{self.index}" if self.kind == "feature" else None

    @property
    def expandable(self) -> bool:
        return self.kind in EXPANDABLE

    def to_dict(self) -> dict:
        return {k: v for k, v in {"kind": self.kind, "layer": self.layer, "index": self.index, "pos": self.pos, "src": self.src,
                                  "label": self.label, "name": self.name}.items() if v not in (None, "")}


@dataclass
class Target:
    """``value = direction · resid[stage][batch, pos] + const`` (see the module docstring)."""

    batch: int
    stage: int
    pos: int
    direction: Tensor  # [d_model] float64
    const: float
    node: Node

    def value(self, run: ReplacementRun) -> float:
        """The target's value on ``run``, read straight off the cached residual stream."""
        return float(self.direction @ run.resid[self.stage][self.batch, self.pos]) + self.const


def logit_target(run: ReplacementRun, batch: int, pos: int, vocab_direction: Tensor, label: str = "logit") -> Target:
    """A direction ``u [vocab]`` over the logits at ``(batch, pos)``; value = ``u · logits`` (frozen
    ln_final scale; with an output soft-cap, each logit's gain ``tanh(r / cap) / (r / cap)`` frozen too)."""
    u = vocab_direction.detach().double().cpu()
    if u.shape != (run.cfg.d_vocab_out,):
        raise ConfigError(f"vocab_direction must be [{run.cfg.d_vocab_out}]; found {list(u.shape)}")
    _check_place(run, batch, pos)
    cap = float(getattr(run.cfg, "output_logits_soft_cap", 0.0) or 0.0)
    if cap > 0:  # logits = cap tanh(raw / cap): freeze each logit's gain tanh(raw / cap) / (raw / cap) at this input
        raw = run.raw_logits(batch, pos)
        ratio = raw / cap
        u = u * torch.where(ratio == 0, 1.0, torch.tanh(ratio) / ratio)
    W_U, b_U = run.w("W_U"), run.w("b_U")
    r = W_U @ u  # [d_model]
    d = read_direction(run.w("lnf_w") * r, run.cfg, run.lnf_scale[batch, pos])
    const = float(run.w("lnf_b") @ r + b_U @ u)
    return Target(batch, run.final_stage, pos, d, const, Node("logit", pos=pos, label=label))


def token_direction(run: ReplacementRun, good: list[int] | Tensor, bad: list[int] | Tensor | None = None) -> Tensor:
    """``mean(e_good) - mean(e_bad)`` over the vocabulary (the logit-difference direction)."""
    u = torch.zeros(run.cfg.d_vocab_out, dtype=torch.float64)
    good = torch.as_tensor(good, dtype=torch.long).flatten()
    u[good] += 1.0 / len(good)
    if bad is not None and len(torch.as_tensor(bad).flatten()):
        bad = torch.as_tensor(bad, dtype=torch.long).flatten()
        u.index_add_(0, bad, torch.full((len(bad),), -1.0 / len(bad), dtype=torch.float64))
    return u


def task_direction(run: ReplacementRun, task, batch: int) -> Tensor:
    """The task's logit-difference direction for prompt ``batch`` of ``run`` (row ``batch`` of ``task``):
    set tasks (greater-than): mean logit of the correct candidates minus mean of the incorrect
    ones; otherwise logit(answer) - logit(the wrong answer the model ranks highest on this
    prompt — the max is frozen at this input). Either way it equals ``task.logit_diff``."""
    if task.is_set_task:
        good = task.correct[batch]
        cand = task.candidate_ids
        return token_direction(run, cand[good], cand[~good])
    wrong = task.wrong_ids[batch]
    logits = run.logits[batch, int(task.answer_pos[batch])]
    top_wrong = int(wrong[logits[wrong].argmax()])
    return token_direction(run, [int(task.answer_ids[batch])], [top_wrong])


def feature_target(run: ReplacementRun, layer: int, feature: int, batch: int, pos: int) -> Target:
    """Transcoder feature ``feature`` of ``layer``'s pre-activation at ``(batch, pos)``."""
    _check_place(run, batch, pos)
    d = run.ts[layer]
    if not 0 <= feature < d.n_latents:
        raise ConfigError(f"feature {feature} is out of range for layer {layer}'s transcoder ({d.n_latents} latents)")
    direction = run.encoder_direction(layer, feature, batch, pos)
    return Target(batch, 2 * layer + 1, pos, direction, float(run.tc(layer, "b_enc")[feature]),
                  Node("target", layer=layer, index=feature, pos=pos, label=f"mlp{layer}.f{feature}@{pos} (pre-activation)"))


def _check_place(run: ReplacementRun, batch: int, pos: int) -> None:
    B, P = run.tokens.shape
    if not (0 <= batch < B and 0 <= pos < P):
        raise ConfigError(f"(batch, pos) = ({batch}, {pos}) is outside the run's tokens [{B}, {P}]")


@dataclass
class Attribution:
    """Every upstream contribution to one target (see the module docstring). Tensors are float64.

    heads: ``{layer: [n_heads, pos + 1]}`` (source positions 0..pos); features: ``{layer: [n_latents]}``
    (zero where inactive); skip / error / mlp: ``{layer: float}``; bias: ``{label: float}``.
    """

    target: Target
    value: float
    embed: float
    pos_embed: float
    heads: dict[int, Tensor] = field(default_factory=dict)
    features: dict[int, Tensor] = field(default_factory=dict)
    skip: dict[int, float] = field(default_factory=dict)
    error: dict[int, float] = field(default_factory=dict)
    mlp: dict[int, float] = field(default_factory=dict)
    bias: dict[str, float] = field(default_factory=dict)
    token: int = 0

    def total(self) -> float:
        """Sum of every contribution plus the target's constant (equals :attr:`value`)."""
        s = self.embed + self.pos_embed + self.target.const
        s += sum(float(t.sum()) for t in self.heads.values()) + sum(float(t.sum()) for t in self.features.values())
        s += sum(self.skip.values()) + sum(self.error.values()) + sum(self.mlp.values()) + sum(self.bias.values())
        return s

    def entries(self, include_bias: bool = True) -> list[tuple[Node, float]]:
        """Every contribution as ``(Node, value)`` (features only where active)."""
        t = self.target
        out: list[tuple[Node, float]] = [(Node("embed", index=self.token, pos=t.pos), self.embed)]
        if self.pos_embed:
            out.append((Node("pos", pos=t.pos), self.pos_embed))
        for l, m in self.heads.items():
            for h in range(m.shape[0]):
                for k in range(m.shape[1]):
                    out.append((Node("head", l, h, t.pos, k), float(m[h, k])))
        for l, v in self.features.items():
            for j in torch.nonzero(v).flatten().tolist():
                out.append((Node("feature", l, j, t.pos), float(v[j])))
        for kind, dct in (("skip", self.skip), ("error", self.error), ("mlp", self.mlp)):
            for l, v in dct.items():
                out.append((Node(kind, l, pos=t.pos), v))
        if include_bias:
            out += [(Node("bias", label=k), v) for k, v in self.bias.items()]
        return out

    def top(self, k: int = 10, include_bias: bool = False, kinds: tuple[str, ...] | None = None) -> list[tuple[Node, float]]:
        """The ``k`` largest contributions by absolute value (optionally only some kinds)."""
        items = [(n, v) for n, v in self.entries(include_bias) if kinds is None or n.kind in kinds]
        items.sort(key=lambda nv: -abs(nv[1]))
        return items[:k]

    def by_component(self) -> dict[str, float]:
        """Contributions summed per circuit node (``"L.H"``, ``"mlpL"``, ``"embed"``); biases left out."""
        out: dict[str, float] = {"embed": self.embed + self.pos_embed}
        for l, m in self.heads.items():
            for h in range(m.shape[0]):
                out[f"{l}.{h}"] = float(m[h].sum())
        for dct in (self.features, self.skip, self.error, self.mlp):
            for l, v in dct.items():
                out[f"mlp{l}"] = out.get(f"mlp{l}", 0.0) + float(v.sum() if isinstance(v, Tensor) else v)
        return out

    def to_dict(self, k: int = 20) -> dict:
        return {"target": self.target.node.name, "value": self.value, "sum_of_contributions": self.total(), "const": self.target.const,
                "by_component": {n: round(v, 6) for n, v in self.by_component().items()},
                "bias": {n: round(v, 6) for n, v in self.bias.items()},
                "top": [{**n.to_dict(), "contribution": v} for n, v in self.top(k)]}


def attribute(run: ReplacementRun, target: Target) -> Attribution:
    """Decompose ``target`` into every upstream contribution (module docstring)."""
    b, p, s, d = target.batch, target.pos, target.stage, target.direction
    cfg = run.cfg
    tok = int(run.tokens[b, p])
    att = Attribution(target=target, value=target.value(run), embed=float(run.embed[b, p] @ d),
                      pos_embed=float(run.pos_embed[b, p] @ d), token=tok)
    for l in range(cfg.n_layers):
        if attention_writes_before(cfg, l, s):
            W_V, W_O = run.w("W_V", l), run.w("W_O", l)  # [h, dm, dh], [h, dh, dm]
            da = run.attention_read(l, d, b, p)
            od = W_O @ da  # [h, dh]
            u = torch.einsum("hmd,hd->hm", W_V, od) * run.w("ln1_w", l)  # [h, dm]
            A = run.pattern[l][b, :, p, : p + 1]  # [h, k]
            att.heads[l] = A * (run.ln1[l][b, : p + 1] @ u.T).T  # [h, k]
            vbias = (run.w("ln1_b", l) @ W_V + run.w("b_V", l))  # [h, dh]
            head_bias = (vbias * od).sum(-1) * A.sum(-1)  # [h]
            att.bias[f"attn{l}.b_O"] = float(run.w("b_O", l) @ da)
            att.bias[f"attn{l}.value_bias"] = float(head_bias.sum())
        if 2 * l + 2 <= s:  # MLP of layer l writes before this stage
            if l in run.ts:
                att.features[l] = run.codes[l][b, p] * (run.tc(l, "W_dec") @ d)
                att.bias[f"mlp{l}.b_dec"] = float(run.tc(l, "b_dec") @ d)
                if run.ts[l].cfg.kind == "skip_transcoder":
                    att.skip[l] = float(run.skip_out[l][b, p] @ d)
                att.error[l] = float(run.error[l][b, p] @ d)
            else:
                att.mlp[l] = float(run.mlp_out[l][b, p] @ d)
    return att


def child_target(run: ReplacementRun, parent: Target, node: Node) -> Target:
    """The target one step upstream whose value equals ``node``'s contribution to ``parent``."""
    b, d = parent.batch, parent.direction
    cfg = run.cfg
    if node.kind == "feature":
        coef = float(run.tc(node.layer, "W_dec")[node.index] @ d)
        direction = coef * run.encoder_direction(node.layer, node.index, b, node.pos)
        return Target(b, 2 * node.layer + 1, node.pos, direction, coef * float(run.tc(node.layer, "b_enc")[node.index]), node)
    if node.kind == "head":
        l, h, k = node.layer, node.index, node.src
        u = run.w("W_V", l)[h] @ (run.w("W_O", l)[h] @ run.attention_read(l, d, b, node.pos)) * run.w("ln1_w", l)  # [dm]
        a = float(run.pattern[l][b, h, node.pos, k])
        direction = a * run.source_read(u, l, b, k)
        return Target(b, 2 * l, k, direction, 0.0, node)
    if node.kind == "skip":
        l = node.layer
        u = run.tc(l, "W_skip").T @ d  # [d_in]
        direction = read_direction(u, cfg, run.s2[l][b, node.pos]) if run.ts.input_is_normalized(l) else u
        return Target(b, 2 * l + 1, node.pos, direction, 0.0, node)
    raise TranscoderError(f"node {node.name} ({node.kind}) is a leaf; only {', '.join(EXPANDABLE)} nodes have upstream targets")

"""The organisms: what each is, its architecture, its task, and how it is trained.

Every organism is a TransformerLens ``HookedTransformer`` over the default code tokenizer
(``mechscope.data.default_tokenizer()``, 4096 tokens), trained from ``seed`` on a mix of its
task's *train* split and contexts of the embedded code corpus (the stdlib's train split);
its card is measured on the task's *held-out* split.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mechscope.errors import ModelSpecError


@dataclass(frozen=True)
class OrganismSpec:
    name: str
    description: str
    task: str  # a mechscope.tasks name
    variant: str
    task_kwargs: dict = field(default_factory=dict)
    # architecture (TransformerLens config)
    n_layers: int = 2
    n_heads: int = 4
    d_model: int = 64
    d_head: int = 16
    d_mlp: int | None = None  # None: attention-only
    n_ctx: int = 64
    pos_embed: str = "standard"  # or "shortformer" (positions enter only queries and keys, as in TL's attn-only-2l)
    tie_embeddings: bool = False  # train with W_U = W_E^T (saved untied, W_U a copy), see train.py
    # training
    seed: int = 0
    steps: int = 2000
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: int = 100
    task_batch: int = 32
    corpus_batch: int = 8
    corpus_ctx: int = 64
    train_pool: int = 20_000  # task prompts pre-drawn from the train split
    concentrate: float = 0.0  # weight of the circuit-concentration (group-lasso) penalty on task rows
    # circuit distillation (mechscope.zoo.distill): after the main steps, fine-tune the task into the
    # best subset of at most distill_size components (0: no such stage)
    distill_size: int = 0
    distill_steps: int = 600
    distill_lr: float = 1e-3
    # induction organism: task rows are random sequences repeated with a random period (see train.py)
    induction_period: tuple[int, int] | None = None
    induction_row_len: int = 48
    induction_max_prefix: int = 10

    @property
    def attn_only(self) -> bool:
        return self.d_mlp is None

    def tl_config(self):
        from transformer_lens import HookedTransformerConfig

        return HookedTransformerConfig(
            n_layers=self.n_layers, d_model=self.d_model, n_heads=self.n_heads, d_head=self.d_head, n_ctx=self.n_ctx,
            d_vocab=4096, d_mlp=self.d_mlp, attn_only=self.attn_only, act_fn=None if self.attn_only else "gelu",
            normalization_type="LN", positional_embedding_type=self.pos_embed, seed=self.seed, device="cpu",
            default_prepend_bos=False,
        )

    def to_dict(self) -> dict:
        return asdict(self)


SPECS: dict[str, OrganismSpec] = {
    s.name: s
    for s in [
        OrganismSpec(
            name="induction-2l",
            description="2-layer attention-only transformer with induction heads, trained on the embedded code corpus "
                        "plus repeated random token sequences.",
            task="induction", variant="random", task_kwargs={"seq_len": 10, "prefix_len": 5},
            # Copying any of 4096 random tokens needs width: d_model 64 reached 46 % held-out top-1
            # at 1000 steps, d_model 128 99.8 % at 2500; tied embeddings make the copy an identity
            # map (46 % vs 31 % untied at d_model 64); rows of 32 with periods 3-14 learn in hundreds
            # of steps where rows of 48 with periods 4-20 stayed on the plateau for thousands.
            # Shortformer and rotary positions learned far slower (36 % held-out, rotary).
            # concentrate 0.03 + 16 corpus contexts per step: a 4-head circuit (without: 5 heads).
            d_model=128, d_head=32, tie_embeddings=True, lr=0.005, task_batch=64, corpus_batch=16, steps=2500,
            induction_period=(3, 14), induction_row_len=32, induction_max_prefix=4, concentrate=0.03,
        ),
        OrganismSpec(
            name="docstring-2l",
            description="2-layer attention-only transformer that completes docstring :param lines with the next def argument "
                        "(a docstring-like argument-copying task) and models code.",
            task="docstring", variant="code",
            # 16 corpus contexts per step, 5000 steps, concentrate 0.04: held-out top-1 0.99 and a
            # 5-head circuit whose layer-1 heads read 0.1 through K-composition. Measured: 8 contexts /
            # 2500 steps / 0.03: 0.86, 6 heads; 16 / 5000 / 0.03: 0.97, 6 heads; 0.05: task not learned
            # (0.33); the 0.03 recipe with seed 1: not learned (0.29); 3 layers: 11 of 12 heads.
            # Also measured on this recipe, none sparser: 8000 steps: the same 5 heads (best 4-set 0.79);
            # concentrate 0.045: 6 heads, 0.83; 0.06 ramped in over 2500 steps: 7 heads, 1.00; seeds 2
            # and 3: not learned; tied embeddings (d_head 16 or 32) or d_head 32: not learned; 8 heads
            # per layer of d_head 8: learned (task loss 0.002) but spread (exhaustive: 10 of 16 heads).
            # A concave penalty (sum_c rms_c^0.5 instead of sum_c rms_c): 6 heads; with 2 x 8 heads, 10 of 16.
            # So the recipe ends with circuit distillation (mechscope.zoo.distill): 600 steps that
            # fine-tune the task into the best 4 of the 8 heads (chosen on train-split prompts; f 0.89
            # there), after which the exhaustive search on held-out prompts finds exactly those 4.
            steps=5000, corpus_batch=16, concentrate=0.04, distill_size=4,
        ),
        OrganismSpec(
            name="greater-than-2l",
            description="2-layer transformer with MLPs that completes 'The X lasted from the year XXYY to the year XX' with a "
                        "year after YY, and models code.",
            task="greater_than", variant="paper", d_mlp=256, steps=2000,
        ),
        OrganismSpec(
            name="ioi-2l",
            description="2-layer attention-only transformer that solves an IOI-like name-mover task with identifier names "
                        "('After B and A went to the queue, B gave a item to' -> A), and models code.",
            task="ioi", variant="code", steps=2000, concentrate=0.03,  # without it the task spreads over 6 of 8 heads
        ),
    ]
}


def get_spec(name: str) -> OrganismSpec:
    if name not in SPECS:
        raise ModelSpecError(f"no organism recipe named {name!r}; known: {', '.join(SPECS)}")
    return SPECS[name]

"""Model access: load any model behind one type, and read or edit its hook points.

    from mechscope.models import load_model, list_hooks, run_with_cache, run_with_hooks
    model = load_model("zoo:ioi-2l")          # or a directory, a TL name, any nn.Module
    cache = run_with_cache(model, tokens, ["blocks.1.attn.hook_z"])

Hook names are TransformerLens names for transformers and module paths for any other module.
"""

from mechscope.models.model import Model
from mechscope.models.hooks import list_hooks, run_with_cache, run_with_hooks, resolve_hooks
from mechscope.models.loading import load_model, save_model

__all__ = ["Model", "load_model", "save_model", "list_hooks", "run_with_cache", "run_with_hooks", "resolve_hooks"]

"""The explorer: a local web app from prompt to features, heads and circuits.

    from mechscope.explorer import ExplorerConfig, create_app, start_server
    app = create_app(ExplorerConfig(model="zoo:ioi-2l", dictionaries=["runs/sae/blocks.1.attn.hook_z"],
                                    circuits=["ioi.circuit.json"], ground_truths=["zoo:ioi-2l"]))
    with start_server(app) as server:       # a background thread on 127.0.0.1, a free port
        print(server.url)

or from a shell: ``mechscope serve --model M [--dictionary DIR ...] [--circuit FILE ...]``.

Compute is separate from presentation: :mod:`~mechscope.explorer.compute`,
:mod:`~mechscope.explorer.dashboards` and :mod:`~mechscope.explorer.linear_view` return plain
data; :mod:`~mechscope.explorer.app` is a thin FastAPI layer over them; ``static/`` is a
vanilla-JS page (no build step) that lays the data out.
"""

from mechscope.explorer.config import DashboardConfig, ExplorerConfig, Limits
from mechscope.explorer.errors import ExplorerError, IncompatibleError, InputError, NotFoundError

__all__ = ["ExplorerConfig", "DashboardConfig", "Limits", "create_app", "start_server", "serve", "Workspace",
           "ExplorerError", "NotFoundError", "InputError", "IncompatibleError"]


def __getattr__(name: str):
    # fastapi / torch are imported only when the app is built
    if name in ("create_app", "start_server", "serve"):
        from mechscope.explorer import app

        return getattr(app, name)
    if name == "Workspace":
        from mechscope.explorer.workspace import Workspace

        return Workspace
    raise AttributeError(f"module 'mechscope.explorer' has no attribute {name!r}")

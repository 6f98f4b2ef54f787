"""The main job: ``mechscope demo`` runs the whole workbench on the embedded default — a zoo
organism, the embedded corpus, nothing downloaded — and writes one HTML report.

    from mechscope.demo import run_demo
    summary = run_demo("runs/demo", quick=True)   # summary["stages"][key]["facts"], summary["ok"]

Modules: :mod:`~mechscope.demo.run` (the loop), :mod:`~mechscope.demo.stages` (one module per
stage), :mod:`~mechscope.demo.sizes` (quick and full sizes), :mod:`~mechscope.demo.context`
(what stages share), :mod:`~mechscope.demo.report` (HTML report and printed tables),
:mod:`~mechscope.demo.figures`.
"""

from mechscope.demo.run import run_demo

__all__ = ["run_demo"]

"""imgcluster: find the natural groups in a folder of unlabelled images.

Implements Semantic Contrastive Learning (SCL; J. Huang and S. Gong, "Deep Clustering by
Semantic Contrastive Learning", BMVC 2022). The command line lives in :mod:`imgcluster.cli`;
it is a thin layer over this API::

    from imgcluster import RunConfig, assign, fit, report
    result = fit(RunConfig().replace(data={"source": "photos"}, scl={"k": 10}), "runs/photos")
    sorted_ = assign("new-photos", run="runs/photos", export_folders_to="sorted")

``fit`` also writes ``model.onnx`` (:func:`export_onnx`) and ``report/index.html``
(:func:`report`); ``assign`` needs only onnxruntime. The heavy modules (torch) load on first
use, so importing the package stays instant.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = [
    "RunConfig",
    "assign",
    "evaluate",
    "export_onnx",
    "fit",
    "report",
    "score",
    "__version__",
]

_LAZY = {
    "RunConfig": ("imgcluster.config", "RunConfig"),
    "fit": ("imgcluster.pipeline", "fit"),
    "score": ("imgcluster.metrics", "score"),
    "evaluate": ("imgcluster.scoring", "evaluate"),
    "export_onnx": ("imgcluster.export", "export_onnx"),
    "assign": ("imgcluster.assignment", "assign"),
    "report": ("imgcluster.reporting", "report"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module 'imgcluster' has no attribute {name!r}")

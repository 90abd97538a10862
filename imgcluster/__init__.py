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
    "resume",
    "RunError",
    "score",
    "__version__",
]

# Every public name but RunConfig and RunError is a function of imgcluster.api.
_LAZY = {name: "imgcluster.api" for name in __all__ if name not in ("__version__",)}
_LAZY.update(RunConfig="imgcluster.config", RunError="imgcluster.errors")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module 'imgcluster' has no attribute {name!r}")

"""imgcluster: find the natural groups in a folder of unlabelled images.

Implements Semantic Contrastive Learning (SCL; J. Huang and S. Gong, "Deep Clustering by
Semantic Contrastive Learning", BMVC 2022). The command line lives in :mod:`imgcluster.cli`;
it is a thin layer over this API::

    from imgcluster import RunConfig, fit
    result = fit(RunConfig().replace(data={"source": "photos"}, scl={"k": 10}), "runs/photos")

The heavy modules (torch) load on first use, so importing the package stays instant.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["RunConfig", "fit", "score", "__version__"]

_LAZY = {
    "RunConfig": ("imgcluster.config", "RunConfig"),
    "fit": ("imgcluster.pipeline", "fit"),
    "score": ("imgcluster.metrics", "score"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'imgcluster' has no attribute {name!r}")

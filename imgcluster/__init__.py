"""imgcluster: find the natural groups in a folder of unlabelled images.

Implements Semantic Contrastive Learning (SCL; J. Huang and S. Gong, "Deep Clustering by
Semantic Contrastive Learning", BMVC 2022). The command line lives in :mod:`imgcluster.cli`;
this package's functions are the library API it is a thin layer over.
"""

from __future__ import annotations

__version__ = "0.1.0"

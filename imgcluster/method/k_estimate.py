"""Choosing the number of clusters k from the images' features (``fit --k auto``, ours).

The paper takes k as given. For a folder whose number of groups is unknown, ``fit`` first
trains the features alone (instance discrimination) for a share of the run (a frozen pretrained
backbone's features are already what the clusters start from), then partitions them for every
k in ``2..k_max`` the way the clusters start (k-means on a UMAP of the features,
:mod:`imgcluster.method.start_partition`), scores each partition with internal criteria, and SCL
trains with the k the chosen criterion prefers (docs/method.md, "Choosing k"). Every criterion
is computed and recorded, so a user can see where they agree.

Criteria, on a sample of at most :data:`SAMPLE` l2-normalised features (``fit`` gives the
backbone's pooled features: see docs/method.md); the modularity chooses by default, as it found
the number of classes most often (docs/benchmarks.md, "Choosing k"):

* ``modularity``: Newman–Girvan modularity (Newman & Girvan 2004) of the partition on the
  symmetric :data:`NEIGHBOURS`-nearest-neighbour graph ``A`` of the features (cosine, 0/1
  edges): ``Q = Σ_c [ e_c / 2m − (d_c / 2m)² ]``, with ``e_c`` the sum of ``A_ij`` over i, j
  both in cluster c, ``d_c`` the sum of the degrees in c and ``2m`` that of all degrees: the
  share of neighbour links inside the clusters less what a random graph of the same degrees
  would keep inside them. Too few clusters leave the second term large, too many cut the
  neighbourhoods; highest wins.
* ``silhouette``: mean silhouette (Rousseeuw 1987) of the partition in the UMAP space; highest
  wins.
* ``davies_bouldin``: Davies–Bouldin index of the same partition (mean over clusters of the
  worst ratio of within-cluster scatter to centroid distance); lowest wins.
* ``eigengap``: the spectrum of the normalised Laplacian ``L = I − D^{-1/2} A D^{-1/2}`` of
  the same kind of graph on a smaller sample; with ``λ_1 ≤ λ_2 ≤ …``, k is where the gap
  ``λ_{k+1} − λ_k`` is largest (von Luxburg, "A tutorial on spectral clustering", 2007, §8.3).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
from scipy.sparse import csr_matrix
from sklearn.preprocessing import normalize

from imgcluster.method.kmeans import kmeans
from imgcluster.method.start_partition import start_space

CRITERIA: tuple[str, ...] = ("modularity", "silhouette", "davies_bouldin", "eigengap")
LOWER_IS_BETTER: tuple[str, ...] = ("davies_bouldin",)
DEFAULT_CRITERION = "modularity"
SAMPLE = 3000  # features scored; UMAP, k-means and the graph stay seconds on a CPU
NEIGHBOURS = 10  # of the modularity's and the eigengap's graphs
GRAPH_SAMPLE = 1500  # the eigengap's graph: its dense spectrum costs n³
RESTARTS = 5  # k-means++ runs per k, the lowest inertia kept: a poor optimum would skew the scores
DEFAULT_K_MAX = 30
# Share of the epochs (or of the time budget) that train the features before k is chosen: 0.4
# chose closer to the classes than 0.2 on short budgets, and the run with that k scored higher
# (digits in 2 minutes: k 11 against 15; photos in 10: k 5 against 3; docs/benchmarks.md).
ESTIMATE_SHARE = 0.4


@dataclass
class KChoice:
    """The chosen k, the criterion that chose it, and every criterion's score per k."""

    k: int
    criterion: str
    ks: list[int]
    scores: dict[str, list[float]]  # criterion → score per k in ks
    picks: dict[str, int]  # criterion → the k it prefers
    images: int  # features scored

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line for the terminal: the choice and how the other criteria saw it."""
        others = ", ".join(
            f"{c.replace('_', '-')} {k}" for c, k in self.picks.items() if c != self.criterion
        )
        return (
            f"k = {self.k} chosen from the images by the {self.criterion.replace('_', '-')} "
            "criterion over "
            f"k = {self.ks[0]}..{self.ks[-1]} (other criteria: {others})"
        )


def estimate_k(
    features: np.ndarray, k_max: int, seed: int = 0, criterion: str = DEFAULT_CRITERION
) -> KChoice:
    """Score k = 2..k_max on ``features`` (N×d) with every criterion; choose by ``criterion``.

    ValueError when ``k_max`` is under 2 or over the number of features, or for an unknown
    criterion.
    """
    from sklearn.metrics import davies_bouldin_score, silhouette_score

    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; expected one of {CRITERIA}")
    x = _sample(np.asarray(features, dtype=np.float32), seed)
    if not 2 <= k_max <= len(x) - 1:
        raise ValueError(f"k-max must be between 2 and {len(x) - 1} (the images less one), "
                         f"got {k_max}")  # fmt: skip
    x = normalize(x)
    ks = list(range(2, k_max + 1))
    space = start_space(x, seed)  # where the clusters will start: a UMAP of the features
    neighbours = knn_graph(x)
    mod, sil, dbi = [], [], []
    with _one_thread():
        for k in ks:
            labels, _ = kmeans(space, k, seed=seed, nredo=RESTARTS, plusplus=True)
            mod.append(modularity(neighbours, labels))
            if len(np.unique(labels)) < 2:  # every point in one cluster: nothing to score
                sil.append(-1.0)
                dbi.append(float("inf"))
                continue
            sil.append(float(silhouette_score(space, labels)))
            dbi.append(float(davies_bouldin_score(space, labels)))
        graph = x[np.random.default_rng(seed).permutation(len(x))[:GRAPH_SAMPLE]]
        gaps = eigengaps(graph, min(k_max, len(graph) - 2))
        gaps += [0.0] * (len(ks) - len(gaps))
    scores = {"modularity": mod, "silhouette": sil, "davies_bouldin": dbi, "eigengap": gaps}
    best = {c: np.argmin if c in LOWER_IS_BETTER else np.argmax for c in CRITERIA}
    picks = {c: ks[int(best[c](scores[c]))] for c in CRITERIA}
    return KChoice(picks[criterion], criterion, ks, scores, picks, len(x))


def knn_graph(x: np.ndarray, neighbours: int = NEIGHBOURS) -> csr_matrix:
    """The symmetric ``neighbours``-nearest-neighbour graph of the (l2-normalised) rows of
    ``x``: ``A_ij = 1`` when j is among i's nearest by cosine similarity or i among j's, else 0;
    no self-loops."""
    n = len(x)
    m = min(neighbours, n - 1)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    nearest = np.argpartition(-sims, m - 1, axis=1)[:, :m]
    rows = np.repeat(np.arange(n), m)
    graph = csr_matrix((np.ones(n * m), (rows, nearest.ravel())), shape=(n, n))
    return csr_matrix(((graph + graph.T) > 0).astype(np.float64))


def modularity(graph: csr_matrix, labels: np.ndarray) -> float:
    """Newman–Girvan modularity ``Q = Σ_c [ e_c / 2m − (d_c / 2m)² ]`` of the partition
    ``labels`` (N ids) of the symmetric graph ``graph`` (N×N): ``e_c`` sums ``A_ij`` over i, j
    both in c, ``d_c`` the degrees in c, ``2m`` all degrees."""
    labels = np.asarray(labels)
    degrees = np.asarray(graph.sum(axis=1)).ravel()
    two_m = degrees.sum()
    member = csr_matrix((np.ones(len(labels)), (np.arange(len(labels)), labels)))
    inside = (member.T @ graph @ member).diagonal()
    spread = member.T @ degrees
    return float(np.sum(inside / two_m - (spread / two_m) ** 2))


def eigengaps(x: np.ndarray, k_max: int, neighbours: int = NEIGHBOURS) -> list[float]:
    """``λ_{k+1} − λ_k`` for k = 2..k_max of the normalised Laplacian of :func:`knn_graph` of
    the rows of ``x``."""
    from scipy.linalg import eigh
    from scipy.sparse.csgraph import laplacian

    n = len(x)
    lap = laplacian(knn_graph(x, neighbours), normed=True).toarray()
    # Dense and exact: well-separated groups make a graph of several components, whose repeated
    # zero eigenvalues an iterative (Lanczos) solver can miss. n ≤ SAMPLE: a few seconds.
    lam = eigh(lap, subset_by_index=[0, min(k_max, n - 1)], eigvals_only=True)
    return [float(lam[k] - lam[k - 1]) if k < len(lam) else 0.0 for k in range(2, k_max + 1)]


@contextmanager
def _one_thread() -> Iterator[None]:
    """faiss, BLAS and scikit-learn on one thread: on a few thousand points a second thread
    gains little, and on a busy machine its spinning slowed the scoring ~10× (measured: 105 s
    against ~10 s on the digits while another job shared the two cores)."""
    import faiss
    from threadpoolctl import threadpool_limits

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        faiss.omp_set_num_threads(before)


def _sample(x: np.ndarray, seed: int) -> np.ndarray:
    if len(x) <= SAMPLE:
        return x.copy()
    rows = np.random.default_rng(seed).choice(len(x), SAMPLE, replace=False)
    return x[np.sort(rows)]

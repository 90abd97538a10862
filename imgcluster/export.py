"""ONNX export of a run: encoder + 'clustering' head → ``model.onnx``, checked against torch.

The graph takes normalised images ``N×3×S×S`` (dynamic ``N``) and returns ``probabilities``
(``N×k`` softmax) and ``embedding`` (``N×d``, unit rows);
:mod:`imgcluster.assigning.onnx_model` states the
contract and the metadata. For the MoCo + k-means baseline, whose run has no clustering head,
the head is the k-means step made explicit: softmax over cosine similarities to the cluster
centroids at the SCL temperature, centroids = the normalised mean embedding of each cluster.

Export checks itself, as timm's ``onnx_export`` does: the ONNX checker, then onnxruntime against
torch on a batch of the run's real images (largest absolute difference of either output, and the
share of images whose argmax agrees); past the tolerance it raises. Uses torch's default
(dynamo) exporter with the weights inside the file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from imgcluster import __version__
from imgcluster import rundir as rd
from imgcluster.assigning.onnx_model import EMBEDDING, INPUT, PROBABILITIES, ModelInfo, OnnxModel
from imgcluster.atomic import atomic_write_bytes
from imgcluster.config import RunConfig
from imgcluster.data.sources import training_images
from imgcluster.errors import RunError
from imgcluster.method.augment import MEAN, STD, preprocess
from imgcluster.method.scl import CLUSTERING, SCL
from imgcluster.train.checkpoint import load_checkpoint

TOLERANCE = 1e-4  # largest allowed |onnxruntime - torch| on either output
CHECK_IMAGES = 64  # real images in the comparison batch
_OPSET = 18


class ExportError(RunError):
    """The exported file fails the checker or disagrees with torch."""


@dataclass(frozen=True)
class ExportResult:
    """Where the model went and how closely onnxruntime reproduced torch."""

    path: Path
    bytes: int
    max_abs_diff: float
    argmax_agreement: float  # share of checked images with the same cluster
    checked_images: int
    seconds: float


class CentroidHead(nn.Module):
    """k-means as a layer: ``N×d`` unit embeddings → ``N×k`` logits ``z·cᵀ / τ``."""

    def __init__(self, centroids: Tensor, temperature: float) -> None:
        super().__init__()
        self.register_buffer("centroids", centroids)  # k×d, unit rows
        self.temperature = temperature

    def forward(self, z: Tensor) -> Tensor:
        return z @ self.centroids.T / self.temperature


class InferenceGraph(nn.Module):
    """What ``model.onnx`` computes: ``N×3×S×S`` normalised → (``N×k`` probs, ``N×d`` emb)."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.encoder(x)  # N×d, l2-normalised
        return torch.softmax(self.head(z), dim=1), z


def export_onnx(
    run: Path | None = None,
    out: Path | None = None,
    *,
    images: np.ndarray | None = None,
    tolerance: float = TOLERANCE,
) -> ExportResult:
    """Export run ``run`` (default: the latest under ./runs) to ``out`` (default run/model.onnx).

    ``images`` are the run's training images as uint8 ``N×3×S×S`` in assignments.csv order
    (``fit`` passes its cache); by default they are found again (:mod:`imgcluster.data.sources`).
    Raises
    :class:`imgcluster.RunError` for a run that cannot be exported and
    :class:`ExportError` when the check fails (the file is then not written).
    """
    began = time.perf_counter()
    run = Path(run) if run is not None else rd.latest_run(Path("runs"), needs=rd.CHECKPOINT)
    out = Path(out) if out is not None else run / rd.MODEL
    config = _run_config(run)
    paths, clusters, _ = _assignments(run)
    if images is None:
        images = training_images(run, config, paths)
    graph = load_graph(run, config)
    batch = _check_batch(images)
    data = to_onnx(graph, batch, _model_info(config))
    diff, agreement = check(graph, data, batch, tolerance, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, data)
    seconds = time.perf_counter() - began
    return ExportResult(out, len(data), diff, agreement, len(batch), seconds)


def _run_config(run: Path) -> RunConfig:
    if not (run / rd.CHECKPOINT).is_file():
        raise RunError(f"{run} holds no trained model ({rd.CHECKPOINT} missing)")
    config = RunConfig.from_dict(rd.read_json(run / rd.CONFIG))
    if not config.data.image_size:
        raise RunError(f"{run / rd.CONFIG} has no image size: the run never started")
    return config


def _assignments(run: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    if not (run / rd.ASSIGNMENTS).is_file():
        raise RunError(f"{run} has no {rd.ASSIGNMENTS}: let its fit finish (fit --resume)")
    return rd.read_assignments(run / rd.ASSIGNMENTS)


def load_graph(run: Path, config: RunConfig) -> InferenceGraph:
    """The run's final encoder and clustering head (for the baseline: the centroids its fit
    saved, :func:`imgcluster.method.kmeans.centroid_probabilities`), in eval mode."""
    state = load_checkpoint(run / rd.CHECKPOINT)["model"]
    # The model as fit builds it; only the encoder and the head are loaded (the memories'
    # sizes depend on the image count, which inference does not need).
    k = config.scl.k
    scl = SCL(
        config.model.backbone,
        2 * k,
        config.scl,
        config.model.feature_dim,
        projector_bn=config.model.projector_bn,
        stem=config.model.stem,
    )
    head = scl.task(CLUSTERING).head if config.scl.method == "scl" else None
    try:
        scl.encoder.load_state_dict(_sub_state(state, "encoder."))
        if head is not None:
            head.load_state_dict(_sub_state(state, f"tasks.{CLUSTERING}.head."))
    except RuntimeError as e:  # missing or misshapen weights
        detail = " ".join(str(e).split())[:300]  # "Missing key(s) in state_dict: ..."
        raise RunError(f"{run / rd.CHECKPOINT} does not fit its config.json: {detail}") from e
    scl.encoder.eval()
    if head is None:
        if not (run / rd.CENTROIDS).is_file():
            raise RunError(f"{run} has no {rd.CENTROIDS}: let its fit finish (fit --resume)")
        centroids = torch.from_numpy(rd.read_centroids(run / rd.CENTROIDS))
        head = CentroidHead(centroids, config.scl.temperature)
    return InferenceGraph(scl.encoder, head).eval()


def _sub_state(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _check_batch(images: np.ndarray) -> np.ndarray:
    """Up to :data:`CHECK_IMAGES` of the training images, evenly spaced, uint8 ``n×3×S×S``."""
    picks = np.linspace(0, len(images) - 1, min(CHECK_IMAGES, len(images))).round()
    return np.asarray(images[np.unique(picks.astype(np.int64))])


def _model_info(config: RunConfig) -> ModelInfo:
    return ModelInfo(
        image_size=int(config.data.image_size or 0),
        mean=MEAN,
        std=STD,
        k=config.scl.k,
        version=__version__,
        source=config.data.source,
        backbone=config.model.backbone,
        method=config.scl.method,
    )


def to_onnx(graph: InferenceGraph, batch: np.ndarray, info: ModelInfo) -> bytes:
    """The serialised ONNX model of ``graph`` with ``info`` as metadata, checker-approved."""
    import onnx

    example = preprocess(torch.from_numpy(batch[:2]))
    program = torch.onnx.export(
        graph,
        (example,),
        dynamo=True,
        external_data=False,
        verbose=False,
        opset_version=_OPSET,
        input_names=[INPUT],
        output_names=[PROBABILITIES, EMBEDDING],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    proto = program.model_proto
    proto.doc_string = "imgcluster: normalised images -> cluster probabilities, embedding"
    for key, value in info.to_metadata().items():
        proto.metadata_props.add(key=key, value=value)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"the ONNX checker rejects the exported model: {e}") from e
    return proto.SerializeToString()


def check(
    graph: InferenceGraph, data: bytes, batch: np.ndarray, tolerance: float, out: Path
) -> tuple[float, float]:
    """:func:`compare`, raising :class:`ExportError` past ``tolerance`` (before ``out`` is
    written)."""
    diff, agreement = compare(graph, data, batch)
    if not diff <= tolerance:  # also catches NaN
        raise ExportError(
            f"onnxruntime disagrees with torch: max abs diff {diff:.3g} > {tolerance:g} "
            f"(argmax agreement {agreement:.1%}); {out} was not written"
        )
    return diff, agreement


@torch.no_grad()
def compare(graph: InferenceGraph, data: bytes, batch: np.ndarray) -> tuple[float, float]:
    """Max abs difference (both outputs) and argmax agreement of onnxruntime vs torch."""
    x = preprocess(torch.from_numpy(batch))
    probs, emb = graph(x)
    ort_probs, ort_emb = OnnxModel(data).run_normalised(x.numpy())
    diff = max(np.abs(ort_probs - probs.numpy()).max(), np.abs(ort_emb - emb.numpy()).max())
    agreement = float((ort_probs.argmax(1) == probs.numpy().argmax(1)).mean())
    return float(diff), agreement

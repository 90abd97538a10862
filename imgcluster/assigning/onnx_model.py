"""The exported model file, ``model.onnx``: its contract, and running it with onnxruntime.

Contract (written by :mod:`imgcluster.export`, read by ``assign`` and ``report``):

* input ``images``: float32 ``N×3×S×S``, already normalised (``(x/255 - mean) / std`` per
  channel, RGB), any batch size ``N``;
* outputs ``probabilities`` (``N×k``, the 'clustering' head's softmax) and ``embedding``
  (``N×d``, unit rows: the encoder's l2-normalised projection);
* metadata (string keys ``imgcluster.*``): image size, mean, std, k, version, training source,
  backbone and method, see :class:`ModelInfo`.

This module never imports torch: a machine with only onnxruntime installed can assign images.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import numpy as np

from imgcluster.errors import RunError

INPUT = "images"
PROBABILITIES = "probabilities"
EMBEDDING = "embedding"
_PREFIX = "imgcluster."


@dataclass(frozen=True)
class ModelInfo:
    """What a model file needs besides its graph: how to prepare its input, what it outputs."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    k: int
    version: str
    source: str
    backbone: str = ""
    method: str = ""

    def to_metadata(self) -> dict[str, str]:
        """``imgcluster.<field>`` → JSON text, for the ONNX file's metadata_props."""
        return {_PREFIX + name: json.dumps(value) for name, value in asdict(self).items()}

    @classmethod
    def from_metadata(cls, meta: dict[str, str], where: str) -> ModelInfo:
        """Parse :meth:`to_metadata`'s output; a foreign or damaged file is a RunError."""
        values = {}
        for f in fields(cls):
            raw = meta.get(_PREFIX + f.name)
            if raw is None:
                if f.default is not MISSING:  # a field with a default: an optional key
                    continue
                raise RunError(f"{where} is not an imgcluster model (no {_PREFIX}{f.name})")
            try:
                values[f.name] = json.loads(raw)
            except ValueError as e:
                raise RunError(f"{where}: bad metadata {_PREFIX}{f.name}: {raw!r}") from e
        values["mean"], values["std"] = tuple(values["mean"]), tuple(values["std"])
        return cls(**values)


def providers() -> list[str]:
    """onnxruntime execution providers: CUDA first when this onnxruntime has it, then CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxModel:
    """An onnxruntime session over a model file, with its :class:`ModelInfo`.

    ``model(images)`` takes uint8 ``N×3×S×S`` (what :func:`imgcluster.data.decode.decode_image`
    gives) and returns ``(probabilities N×k, embedding N×d)`` as float32 arrays.
    """

    def __init__(self, model: Path | bytes, threads: int | None = None) -> None:
        import onnxruntime as ort

        where = "the model" if isinstance(model, bytes) else str(model)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: the library stays silent
        # Decode workers share the cores: waiting threads must sleep, not spin.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads is not None:
            options.intra_op_num_threads = threads
        source = model if isinstance(model, bytes) else str(model)
        self.source = source
        self.weight_bytes = len(model) if isinstance(model, bytes) else _file_size(model)
        try:
            self.session = ort.InferenceSession(source, options, providers=providers())
        except Exception as e:  # onnxruntime raises its own types for unreadable files
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise RunError(f"cannot load {where}: {message}") from e
        meta = self.session.get_modelmeta().custom_metadata_map
        self.info = ModelInfo.from_metadata(meta, where)
        self.provider = self.session.get_providers()[0]
        self.embedding_dim = _output_width(self.session, EMBEDDING, where)
        self._mean = np.asarray(self.info.mean, np.float32).reshape(1, 3, 1, 1)
        self._std = np.asarray(self.info.std, np.float32).reshape(1, 3, 1, 1)

    @property
    def on_cpu(self) -> bool:
        """Whether the session runs on the CPU (no GPU provider took it)."""
        return self.provider == "CPUExecutionProvider"

    def single_threaded(self) -> OnnxModel:
        """Another session over the same file, running on one thread: where several processes
        share the cores, each doing whole batches on one thread wastes nothing on
        synchronising threads (two threads took ~1.5 times the CPU time per image here)."""
        return OnnxModel(self.source, threads=1)

    def empty_outputs(self) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities, embedding)`` for no images: ``0×k`` and ``0×d``."""
        k = self.info.k
        return np.zeros((0, k), np.float32), np.zeros((0, self.embedding_dim), np.float32)

    def normalise(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``N×3×S×S`` → float32 ``(x/255 - mean) / std``, the model's input.

        The same float32 operations in the same order as
        :func:`imgcluster.method.augment.preprocess`,
        so the input equals torch's bit for bit (in place: a table lookup per pixel measured
        slower than these four passes).
        """
        x = images.astype(np.float32)
        x /= np.float32(255.0)
        x -= self._mean
        x /= self._std
        return x

    def run_normalised(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised float32 ``N×3×S×S`` → ``(probabilities, embedding)``."""
        probs, emb = self.session.run([PROBABILITIES, EMBEDDING], {INPUT: x})
        return probs, emb

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.run_normalised(self.normalise(images))


def _output_width(session: object, name: str, where: str) -> int:
    """The fixed second dimension of output ``name``; a RunError when there is none."""
    shapes = {out.name: out.shape for out in session.get_outputs()}  # type: ignore[attr-defined]
    shape = shapes.get(name)
    if shape is None or len(shape) != 2 or not isinstance(shape[1], int):
        raise RunError(f"{where} is not an imgcluster model (no N×d output {name!r})")
    return shape[1]


def _file_size(path: Path) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:  # the session below reports the missing or unreadable file
        return 0

"""Sliding-window inference on the CPU through OpenVINO, with PyTorch's labels.

OpenVINO runs the network, converted from the loaded PyTorch module, 1.85x faster than PyTorch at the same
float32 precision on a whole CT at feature_size 48 on 2 CPU cores (4x in bfloat16 on CPUs with AMX, with labels
that differ; docs/speed.md). The converted model is cached on disk, keyed by the network's
architecture, its weights and the window batch shape, so it is rebuilt exactly when one of them changes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch
from monai.inferers import SlidingWindowInferer
from torch import nn

from scripts.errors import ConfigError, ReportedError
from scripts.options import choice

logger = logging.getLogger(__name__)

ENGINES = ("auto", "openvino", "torch")
PRECISIONS = ("f32", "bf16")
# The first window of every converted model is checked against PyTorch, since tracing can bake a data-dependent
# branch into a constant without an error: the largest score difference (share of PyTorch's largest score) and
# the share of equal labels. Trained weights differ by about 1e-4 at float32; random weights give near-tied
# scores, at feature_size 48 up to 2.1e-3 with 99.85% of labels equal (whole CT: per-class Dice >= 0.9966)
TOLERANCE = {"f32": 1e-2, "bf16": 0.1}
LABEL_AGREEMENT = {"f32": 0.995, "bf16": 0.95}
KEEP_CACHED = 3  # converted models kept per cache folder (each is the size of the weights)


class ConversionError(ReportedError, RuntimeError):
    """OpenVINO could not convert the network (an operation it lacks, a module that cannot be traced), or the
    converted model does not compute what the network computes."""


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def resolve_engine(engine: str, device) -> str:
    """``"openvino"`` or ``"torch"``: ``auto`` takes OpenVINO on a CPU when the package is installed, PyTorch
    otherwise (OpenVINO runs here on CPUs only)."""
    choice("cpu_engine", engine, ENGINES)
    if torch.device(device).type != "cpu" or engine == "torch":
        return "torch"
    if openvino_available():
        return "openvino"
    if engine == "openvino":
        raise ConfigError(
            "cpu_engine 'openvino': the openvino package is not installed (pip install -r requirements.txt)"
        )
    return "torch"


def weights_key(network: nn.Module, shape) -> str:
    """Hex digest of what the converted model depends on: architecture, every tensor, input shape and the OpenVINO
    version (not the precision: the saved model keeps float32 weights, the precision is chosen when compiling)."""
    import openvino

    digest = hashlib.blake2b(digest_size=12)
    for text in (repr(network), str(tuple(shape)), openvino.__version__):
        digest.update(text.encode())
    for name, tensor in network.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_next_to(weights_path) -> str:
    """The cache folder of the models converted from the weights at ``weights_path``: ``openvino/`` beside them."""
    return os.path.join(os.path.dirname(os.path.abspath(str(weights_path))), "openvino")


class CompiledNetwork:
    """``network`` as an OpenVINO model on the CPU: windows ``(B, C, *roi)`` in, the network's output out, for
    any ``B <= batch_size`` (the model is compiled for ``batch_size`` windows; a last, smaller batch is padded).
    The first window after each conversion or compilation is also run by PyTorch: scores beyond ``TOLERANCE`` or
    fewer equal labels than ``LABEL_AGREEMENT`` raise ``ConversionError``.

    Args:
        network: the loaded PyTorch module (converted in eval mode; left in the mode it was in).
        cache_dir: folder of converted models (``<key>.xml`` / ``.bin``); an unwritable one falls back to a
            temporary folder, with a warning.
        batch_size: windows per call (the inferer's ``sw_batch_size``).
        precision: ``"f32"`` (labels as PyTorch's) or ``"bf16"`` (faster on CPUs with AMX / AVX512-BF16).
    """

    def __init__(self, network: nn.Module, cache_dir, batch_size: int, precision: str = "f32"):
        self.network, self.batch_size = network, int(batch_size)
        self.cache_dir, self.precision = Path(cache_dir), choice("cpu_precision", precision, PRECISIONS)
        self._compiled: dict = {}
        self._checked = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.batch_size:
            raise ValueError(f"a batch of {x.shape[0]} windows for a model compiled for {self.batch_size}")
        shape = (self.batch_size, *x.shape[1:])
        request = self._request(shape)
        data = x.detach().float().cpu()
        if data.shape[0] < self.batch_size:
            data = torch.cat([data, data.new_zeros((self.batch_size - data.shape[0], *data.shape[1:]))])
        out = torch.from_numpy(request.infer({0: data.numpy()})[0][: x.shape[0]].copy())
        if not self._checked:
            self._check(data[:1], out[:1])
            self._checked = True
        return out.to(x.device)

    def _check(self, window: torch.Tensor, converted: torch.Tensor) -> None:
        with torch.no_grad():
            expected = self.network(window)
        if not isinstance(expected, torch.Tensor):
            raise ConversionError(f"the network returns {type(expected).__name__}, the engine one tensor")
        if expected.shape != converted.shape:
            raise ConversionError(
                f"its output shape {tuple(converted.shape)} differs from PyTorch's {tuple(expected.shape)}"
            )
        expected = expected.float()
        scale = float(expected.abs().max()) or 1.0
        worst = float((converted - expected).abs().max()) / scale
        if not worst <= TOLERANCE[self.precision]:  # also catches NaN
            raise ConversionError(
                f"its output differs from PyTorch's on the first window by {worst:.2g} of the largest score "
                f"(at most {TOLERANCE[self.precision]:g} for {self.precision})"
            )
        agree = float((converted.argmax(1) == expected.argmax(1)).float().mean())
        if agree < LABEL_AGREEMENT[self.precision]:
            raise ConversionError(
                f"its labels equal PyTorch's on {agree:.2%} of the first window's voxels "
                f"(at least {LABEL_AGREEMENT[self.precision]:.1%} for {self.precision})"
            )
        logger.info(
            f"cpu_engine: first window checked against PyTorch (largest difference {worst:.1e} of the scale, "
            f"{agree:.2%} of labels equal)"
        )

    def _request(self, shape):
        key = weights_key(self.network, shape)
        if key not in self._compiled:
            self._compiled = {key: self._compile(self._converted(key, shape)).create_infer_request()}
            self._checked = False
        return self._compiled[key]

    def _converted(self, key: str, shape) -> Path:
        """The cached model for ``key``: converted and saved first when missing."""
        folder = _writable(self.cache_dir)
        xml = folder / f"{key}.xml"
        if xml.is_file():
            return xml
        import openvino as ov

        start = time.perf_counter()
        training = self.network.training
        self.network.eval()
        root = logging.getLogger()
        # convert_model sets the root logger to ERROR (and adds a handler), and leaves it so when it fails: every
        # warning of the run after it would be lost
        saved = root.level, list(root.filters), list(root.handlers)
        try:  # traced for one input shape on purpose: the shape branches it warns about are constants here
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                model = ov.convert_model(self.network, example_input=torch.zeros(shape), input=[tuple(shape)])
        except Exception as error:
            raise ConversionError(f"{type(error).__name__}: {str(error).strip().splitlines()[0]}") from error
        finally:
            self.network.train(training)
            root.setLevel(saved[0])
            root.filters[:], root.handlers[:] = saved[1], saved[2]
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            ov.save_model(model, str(Path(tmp) / "model.xml"), compress_to_fp16=False)  # keep float32 weights
            os.replace(Path(tmp) / "model.bin", folder / f"{key}.bin")
            os.replace(Path(tmp) / "model.xml", xml)  # last: its presence means the pair is complete
        logger.info(f"cpu_engine: converted the network to OpenVINO in {time.perf_counter() - start:.0f} s ({xml})")
        _prune(folder, keep=xml)
        return xml

    def _compile(self, xml: Path):
        import openvino as ov

        core = ov.Core()
        config = {
            "INFERENCE_PRECISION_HINT": self.precision,
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),  # as PyTorch: OMP_NUM_THREADS limits both
            "PERFORMANCE_HINT": "LATENCY",
        }
        start = time.perf_counter()
        compiled = core.compile_model(core.read_model(str(xml)), "CPU", config)
        logger.info(f"cpu_engine: OpenVINO {self.precision} model ready in {time.perf_counter() - start:.0f} s")
        return compiled


def _writable(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return folder
    except OSError as error:
        fallback = Path(tempfile.gettempdir()) / "swin_ssl_openvino"
        logger.warning(f"cpu_engine: cannot write the converted model to {folder} ({error}); using {fallback}")
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


def _prune(folder: Path, keep: Path) -> None:
    """Drop all but the ``KEEP_CACHED`` newest converted models."""
    models = sorted(folder.glob("*.xml"), key=lambda p: p.stat().st_mtime, reverse=True)
    old = [p for p in models if p != keep][KEEP_CACHED - 1 :]
    for xml in old:
        xml.unlink(missing_ok=True)
        xml.with_suffix(".bin").unlink(missing_ok=True)


class EngineSlidingWindowInferer(SlidingWindowInferer):
    """MONAI's ``SlidingWindowInferer`` whose windows run on ``engine``: ``"openvino"`` (see
    :class:`CompiledNetwork`), ``"torch"`` (the network as given), or ``"auto"`` (OpenVINO on a CPU when
    installed). The network passed in stays the PyTorch module, so loading weights, MONAI Label and the GPU path
    are unchanged; its weights are re-checked at every call (a reloaded model is converted again). A network that
    OpenVINO cannot convert, or whose converted model disagrees with it on the first window, runs on PyTorch, with
    a warning saying why."""

    def __init__(
        self, *args, engine: str = "auto", cache_dir=None, precision: str = "f32", **kwargs
    ):  # MONAI's own arguments first, as in its configs
        super().__init__(*args, **kwargs)
        self.engine, self.precision = (
            choice("cpu_engine", engine, ENGINES),
            choice("cpu_precision", precision, PRECISIONS),
        )
        self.cache_dir = cache_dir if cache_dir is not None else Path(tempfile.gettempdir()) / "swin_ssl_openvino"
        self._wrapped: dict = {}
        self._refused: set = set()  # ids of networks OpenVINO could not convert

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs):
        engine = resolve_engine(self.engine, inputs.device)
        if engine == "openvino" and isinstance(network, nn.Module) and id(network) not in self._refused:
            if id(network) not in self._wrapped:
                self._wrapped = {
                    id(network): CompiledNetwork(network, self.cache_dir, self.sw_batch_size, self.precision)
                }
                logger.info(f"cpu_engine: sliding windows through OpenVINO ({self.precision}), cache {self.cache_dir}")
            try:
                return super().__call__(inputs, self._wrapped[id(network)], *args, **kwargs)
            except ConversionError as error:  # raised at the first window, before any result
                logger.warning(f"cpu_engine: OpenVINO cannot run this network ({error}); PyTorch runs it instead")
                self._refused.add(id(network))
        return super().__call__(inputs, network, *args, **kwargs)

    def ran_on(self, network, device="cpu") -> str:
        """``"openvino"`` or ``"torch"``: what runs ``network``'s windows on ``device`` (after its first call)."""
        wrapped = isinstance(network, nn.Module) and id(network) in self._wrapped and id(network) not in self._refused
        return "openvino" if resolve_engine(self.engine, torch.device(device)) == "openvino" and wrapped else "torch"

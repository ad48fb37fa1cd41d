"""The transfer family's ImageNet backbones and where their pretrained weights are found.

No Keras here (the search-space schema reads ``BACKBONES``): each entry names the
``keras.applications`` constructor, the no-top weights file Keras downloads for it (names,
URLs and MD5s as in keras/src/applications/, Keras 3.15) and the input scaling it expects.

Weights are looked for, in order: the folder ``pretrained.weights_dir`` (offline machines),
the Keras cache (``$KERAS_HOME/models/``, by default ``~/.keras/models/``), then Keras' own
download where ``pretrained.download`` is on and the host answers. In the folder and the
cache a file may carry Keras' original name or the same stem with ``.weights.h5`` (Keras 3's
``model.save_weights`` format). When none has them, ``find_weights`` raises one line naming
the file and where to put it: never random weights in place of pretrained ones.
"""

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError

APPLICATIONS = "https://storage.googleapis.com/tensorflow/keras-applications/"
DOWNLOAD_HOST = "storage.googleapis.com"
REACHABLE_TIMEOUT_S = 3.0  # an offline machine answers at once or never: don't wait longer


@dataclass(frozen=True)
class Backbone:
    """One ``keras.applications`` backbone: its no-top weights file and input scaling."""

    name: str  # the keras.applications constructor
    file_name: str  # the no-top weights file, as Keras names it in its cache
    subdir: str  # where it lies under APPLICATIONS
    md5: str  # of the original file (Keras' WEIGHTS_HASHES)
    # [0, 1] floats -> what the backbone takes: x * scale + offset. MobileNetV3 and
    # EfficientNetV2 rescale 0-255 themselves (include_preprocessing); ResNetV2 wants [-1, 1].
    scale: float
    offset: float = 0.0
    min_size: int = 32  # keras.applications refuses smaller inputs

    @property
    def url(self) -> str:
        return f"{APPLICATIONS}{self.subdir}/{self.file_name}"

    @property
    def keras3_name(self) -> str:
        """The same file saved by ``model.save_weights`` (Keras 3 format)."""
        return f"{self.file_name.removesuffix('.h5')}.weights.h5"


BACKBONES = {
    b.name: b
    for b in (
        Backbone(
            "MobileNetV3Small",
            "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
            "mobilenet_v3",
            "d3e8ec802a04aa4fc771ee12a9a9b836",
            scale=255.0,
        ),
        Backbone(
            "MobileNetV3Large",
            "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
            "mobilenet_v3",
            "07fb09a5933dd0c8eaafa16978110389",
            scale=255.0,
        ),
        Backbone(
            "EfficientNetV2B0",
            "efficientnetv2-b0_notop.h5",
            "efficientnet_v2",
            "893217f2bb855e2983157299931e43ff",
            scale=255.0,
        ),
        Backbone(
            "ResNet50V2",
            "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "resnet",
            "fac2f116257151a9d068a22e544a4917",
            scale=2.0,
            offset=-1.0,
        ),
    )
}


class MissingWeightsError(PipelineError):
    """No source has a backbone's pretrained weights, or a file there is damaged."""


@dataclass(frozen=True)
class WeightsSource:
    """Where the transfer family looks for weights (params.yaml ``pretrained``, same keys)."""

    weights_dir: str | None = None
    download: bool = True


DEFAULT_WEIGHTS = WeightsSource()  # the Keras cache, then Keras' download


def keras_cache() -> Path:
    """Where ``keras.utils.get_file`` keeps applications' weights (KERAS_HOME or ~/.keras)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def reachable(host: str = DOWNLOAD_HOST, timeout: float = REACHABLE_TIMEOUT_S) -> bool:
    """Whether ``host`` accepts a TCP connection on 443 within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_weights(backbone: Backbone, source: WeightsSource) -> str:
    """A weights file for ``backbone``, or ``"imagenet"`` to let Keras download it.

    Raises:
        MissingWeightsError: no source has them (one line: the file, where, the URL), or
            a file under Keras' original name does not have its MD5 (a broken download).
    """
    folders = [Path(source.weights_dir).expanduser()] if source.weights_dir else []
    folders.append(keras_cache())
    for folder in folders:
        original = folder / backbone.file_name
        if original.is_file():
            # Keras checks this hash when it downloads; a truncated copy must not load.
            if _md5(original) != backbone.md5:
                raise MissingWeightsError(
                    f"transfer: {original} is not Keras' {backbone.name} weights file "
                    f"(MD5 differs; a broken download?); download it again from {backbone.url}"
                )
            return str(original)
        converted = folder / backbone.keras3_name
        if converted.is_file():
            return str(converted)
    if source.download and reachable():
        return "imagenet"
    where = (
        f"pretrained.weights_dir ({source.weights_dir})"
        if source.weights_dir
        else ("a folder named in pretrained.weights_dir")
    )
    offline = "" if source.download else "; pretrained.download is off"
    raise MissingWeightsError(
        f"transfer: no ImageNet weights for {backbone.name}: put {backbone.file_name} in "
        f"{where} or {keras_cache()}/ (download: {backbone.url}){offline}"
    )

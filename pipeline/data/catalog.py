"""The datasets the pipeline knows: their files, pinned SHA-256s, URLs and local mirrors."""

import os
from dataclasses import dataclass
from pathlib import Path

KERAS_BASE_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset and the SHA-256 digests it may have."""

    name: str
    url: str
    # More than one digest where a trusted repackaging recompressed the same data
    # (Debian's dataset-fashion-mnist gzips the identical IDX payload anew).
    sha256: tuple[str, ...]


@dataclass(frozen=True)
class Dataset:
    """A dataset fetched as files: where to look for them, in order, and what they hold."""

    name: str
    files: tuple[RemoteFile, ...]
    class_names: tuple[str, ...]
    local_mirrors: tuple[Path, ...] = ()
    keras_cache_subdir: str = ""
    install_hint: str = ""


FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

_FASHION_SHA256 = {
    # name: (canonical download, Debian package)
    "train-images-idx3-ubyte.gz": (
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    ),
    "train-labels-idx1-ubyte.gz": (
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    ),
    "t10k-images-idx3-ubyte.gz": (
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
    ),
}

DATASETS = {
    "fashion_mnist": Dataset(
        name="fashion_mnist",
        files=tuple(
            RemoteFile(name, KERAS_BASE_URL + name, digests)
            for name, digests in _FASHION_SHA256.items()
        ),
        class_names=FASHION_CLASSES,
        local_mirrors=(DEBIAN_FASHION_MNIST,),
        keras_cache_subdir="fashion-mnist",
        install_hint="install the Debian package (apt-get install dataset-fashion-mnist)",
    ),
    "mnist": Dataset(
        name="mnist",
        files=(
            RemoteFile(
                "mnist.npz",
                KERAS_BASE_URL + "mnist.npz",
                ("731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",),
            ),
        ),
        class_names=tuple(str(d) for d in range(10)),
    ),
    "cifar10": Dataset(
        name="cifar10",
        files=(
            RemoteFile(
                "cifar-10-python.tar.gz",
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                ("6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",),
            ),
        ),
        class_names=CIFAR10_CLASSES,
    ),
}

# scikit-learn ships digits in its wheel, so this one never needs the network.
DIGITS_FILE = "digits.csv.gz"
DIGITS_SHA256 = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
DIGITS_CLASSES = tuple(str(d) for d in range(10))


def keras_cache_dir() -> Path:
    """Keras' dataset cache (``$KERAS_HOME/datasets``, default ``~/.keras/datasets``)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "datasets"

"""Writing the trained model: ``models/model.keras`` and the TF SavedModel, each swapped in."""

import os
import shutil
from pathlib import Path

from pipeline import atomic, paths
from pipeline.console import log


def save_model(model, path: Path = paths.MODEL) -> None:
    """``model.save`` to a ``.keras`` temp file beside ``path``, then rename it over."""

    def writer(tmp: Path) -> None:
        keras_tmp = tmp.with_name(tmp.name + ".keras")  # Keras wants the suffix
        try:
            model.save(keras_tmp)
            os.replace(keras_tmp, tmp)
        finally:
            keras_tmp.unlink(missing_ok=True)

    atomic.write_with(path, writer)


def export_saved_model(model, path: Path = paths.SAVED_MODEL) -> None:
    """``model.export`` as a TF SavedModel, swapped in whole; skipped off TensorFlow."""
    import keras

    backend = keras.backend.backend()
    tmp = atomic.temp_dir_beside(path)
    try:
        if backend == "tensorflow":
            model.export(str(tmp), format="tf_saved_model", verbose=False)
        else:
            # DVC declares the folder; an old export must not pass for this model's.
            log(f"train: no SavedModel export on the {backend} backend (it needs TensorFlow)")
            (tmp / "README.txt").write_text(
                f"No SavedModel: this model was trained on the {backend} backend. "
                "Export it with TensorFlow: keras.models.load_model('models/model.keras', "
                "compile=False).export('models/saved_model')\n"
            )
        atomic.replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

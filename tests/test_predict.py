"""predict: images of any size and mode, .npy batches, corrupt files, the registry champion."""

import json

import numpy as np
import pytest
from PIL import Image

from pipeline import predict, register
from pipeline.errors import PipelineError
from tests.conftest import run_cli, save_image
from tests.test_register import CLASSES, build_model, templates, write_candidate, write_processed


def class_image(path, k: int, size=(24, 24), mode="RGB", fmt=None):
    """An image of class ``k``'s template (bright rows), upscaled to ``size`` (w, h)."""
    small = (templates()[:, k].reshape(8, 8) * 255).astype(np.uint8)
    img = Image.fromarray(small, "L").resize(size, Image.Resampling.NEAREST).convert(mode)
    img.save(path, format=fmt)
    return path


@pytest.fixture
def model_file(project):
    path = project.path / "model.keras"
    build_model("good").save(path)
    write_processed(project.path)  # meta.json: class names
    return path


def test_images_of_odd_sizes_modes_and_a_corrupt_file(model_file, project, capsys):
    root = project.path
    files = [
        save_image(root / "odd.png", (13, 7), "RGB"),
        save_image(root / "gray.jpg", (30, 20), "L"),
        save_image(root / "alpha.png", (9, 17), "RGBA"),
        class_image(root / "beta.jpeg", 1, (31, 19), "RGB"),
        class_image(root / "gamma.png", 2, (8, 8), "L"),
    ]
    broken = root / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    args = [str(f) for f in files[:2]] + [str(broken)] + [str(f) for f in files[2:]]
    code = predict.main(["--model", str(model_file), "--json", "--top-k", "2", *args])
    out, err = capsys.readouterr()
    assert code == 1
    assert f"error: {broken}: cannot decode the image" in err
    result = json.loads(out)
    assert [e["input"] for e in result["errors"]] == [str(broken)]
    preds = {p["input"]: p["top"] for p in result["predictions"]}
    assert list(preds) == [str(f) for f in files]
    for top in preds.values():
        assert len(top) == 2 and {t["label"] for t in top} <= set(CLASSES)
        assert top[0]["probability"] >= top[1]["probability"]
    assert preds[str(files[3])][0]["label"] == "beta"
    assert preds[str(files[4])][0]["label"] == "gamma"

    # Plain text: one line per input, exit 0 when nothing failed.
    assert predict.main(["--model", str(model_file), str(files[3])]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{files[3]}: beta ") and line.count("  ") == 2


def test_images_converted_exactly_as_preprocess(model_file, project):
    from pipeline.data.images import decode_folder

    folder = project.path / "imgs" / "only"
    folder.mkdir(parents=True)
    (project.path / "imgs" / "other").mkdir()
    save_image(folder / "a.png", (13, 7), "RGBA", seed=3)
    save_image(project.path / "imgs" / "other" / "b.png", (8, 8), "L", seed=4)
    decoded = decode_folder(project.path / "imgs", (8, 8), "grayscale", log=lambda m: None)
    ours = predict.read_image(folder / "a.png", (8, 8, 1))
    assert ours.dtype == np.uint8  # the pixels as stored; the model rescales them
    np.testing.assert_array_equal(ours, decoded.x[0])


def test_npy_batches(model_file, project, capsys):
    root = project.path
    x = np.stack([templates()[:, k].reshape(8, 8, 1) for k in (0, 1, 2)]) * np.float32(255)
    np.save(root / "batch.npy", x)  # 0-255 numbers as float32
    np.save(root / "pixels.npy", x.astype(np.uint8)[..., 0])  # (N, H, W) uint8
    np.save(root / "one.npy", x[2])
    np.save(root / "wrong.npy", np.zeros((2, 5, 5, 1), np.float32))
    np.save(root / "range.npy", np.full((1, 8, 8, 1), 300.0, np.float32))
    args = ["--model", str(model_file), "--json", "--top-k", "1"]
    code = predict.main(args + [str(root / n) for n in ("batch.npy", "pixels.npy", "one.npy")])
    assert code == 0
    preds = json.loads(capsys.readouterr().out)["predictions"]
    labels = {p["input"].rsplit("/", 1)[-1]: p["top"][0]["label"] for p in preds}
    assert labels == {
        "batch.npy[0]": "alpha", "batch.npy[1]": "beta", "batch.npy[2]": "gamma",
        "pixels.npy[0]": "alpha", "pixels.npy[1]": "beta", "pixels.npy[2]": "gamma",
        "one.npy": "gamma",
    }  # fmt: skip
    assert predict.main(args + [str(root / "wrong.npy")]) == 1
    assert "wrong.npy: input of shape (2, 5, 5, 1)" in capsys.readouterr().err
    assert predict.main(args + [str(root / "range.npy")]) == 1
    assert "range.npy: input values outside 0-255" in capsys.readouterr().err


def test_large_npy_batch_is_predicted_in_chunks_and_refused_whole_if_one_is_bad(
    model_file, project, capsys, monkeypatch
):
    monkeypatch.setattr(predict, "NPY_CHUNK", 4)  # 11 images: chunks of 4, 4 and 3
    labels = np.arange(11) % 3
    x = np.stack([templates()[:, k].reshape(8, 8, 1) for k in labels]) * 255
    np.save(project.path / "big.npy", x.astype(np.uint8))
    args = ["--model", str(model_file), "--json", "--top-k", "1", str(project.path / "big.npy")]
    assert predict.main(args) == 0
    preds = json.loads(capsys.readouterr().out)["predictions"]
    assert [p["input"].rsplit("/", 1)[-1] for p in preds] == [f"big.npy[{i}]" for i in range(11)]
    assert [p["top"][0]["label"] for p in preds] == [CLASSES[k] for k in labels]
    bad = x.astype(np.float32)
    bad[9] = -1.0  # in the last chunk: the file's earlier chunks must not be reported alone
    np.save(project.path / "big.npy", bad)
    assert predict.main(args) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["predictions"] == []
    assert "big.npy: input values outside 0-255" in captured.err


def test_npy_scaled_to_0_1_is_used_as_is_with_a_note(model_file, project, capsys):
    """Nothing is guessed from the values: [0, 1] floats are very dark pixels, and said so."""
    x = np.stack([templates()[:, k].reshape(8, 8, 1) for k in (0, 1, 2)]).astype(np.float32)
    np.save(project.path / "scaled.npy", x)
    args = ["--model", str(model_file), "--json", "--top-k", "3", str(project.path / "scaled.npy")]
    assert predict.main(args) == 0
    captured = capsys.readouterr()
    assert "scaled.npy is all within [0, 1]; the model takes 0-255 pixels" in captured.err
    model = build_model("good")
    expected = model.predict(x, verbose=0)  # the model on the values as given, unscaled
    for row, probs in zip(json.loads(captured.out)["predictions"], expected, strict=True):
        got = {t["label"]: t["probability"] for t in row["top"]}
        assert got == pytest.approx(dict(zip(CLASSES, probs.tolist(), strict=True)), abs=1e-6)


def test_champion_from_registry(project, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project.params(data={"dataset": "digits"}, mlflow={"tracking_uri": "sqlite:///mlflow.db"})
    write_processed(project.path)
    with pytest.raises(PipelineError, match="no MLflow store"):
        predict.main([str(class_image(project.path / "b.png", 1))])
    write_candidate(project.path, "good")
    assert register.main([]) == 0
    # Class names come with the registered model, not from today's meta.json.
    (project.path / "data/processed/meta.json").unlink()
    capsys.readouterr()
    assert predict.main(["--json", str(project.path / "b.png")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "models:/digits-classifier@champion (version 1)"
    assert out["predictions"][0]["top"][0]["label"] == "beta"

    project.params(
        data={"dataset": "digits"},
        register={"model_name": "nobody"},
        mlflow={"tracking_uri": "sqlite:///mlflow.db"},
    )
    with pytest.raises(PipelineError, match="'nobody' has no @champion"):
        predict.main([str(project.path / "b.png")])


@pytest.mark.integration
def test_cli_reports_bad_file_and_keeps_going(model_file, project):
    good = class_image(project.path / "a.png", 0, (20, 11))
    done = run_cli(
        "predict", "--model", str(model_file), "missing.png", str(good), cwd=project.path
    )
    assert done.returncode == 1, done.stderr
    assert "error: missing.png: no such file" in done.stderr
    assert done.stdout.startswith(f"{good}: alpha ")

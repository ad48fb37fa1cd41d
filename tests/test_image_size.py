"""Photo folders: EXIF orientation applied first, a default size from the data and the machine."""

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline import predict, preprocess
from pipeline.data import sizing
from pipeline.data.images import decode_folder, scan_folder

CAMERA = (4032, 3024)  # (width, height) of a 12 MP phone photo, as stored
ROTATE_90_CW = 6  # EXIF orientation: the stored pixels are turned 90 degrees counter-clockwise


def scene(size, marker=(255, 0, 0)) -> Image.Image:
    """An upright RGB picture of ``size`` (w, h): grey, with a red marker in its top-left."""
    img = Image.new("RGB", size, (60, 60, 60))
    side = max(4, size[0] // 6)
    ImageDraw.Draw(img).rectangle([0, 0, side - 1, side - 1], fill=marker)
    return img


def save_sideways(upright: Image.Image, path) -> None:
    """Store ``upright`` as a phone does: pixels turned, orientation 6 in the EXIF."""
    exif = Image.Exif()
    exif[sizing.ORIENTATION_TAG] = ROTATE_90_CW
    upright.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif.tobytes(), quality=95)


def red_corner(image: np.ndarray) -> str:
    """Which corner of an (H, W, 3) image holds the red marker."""
    h, w = image.shape[:2]
    corners = {
        "top-left": image[: h // 8, : w // 8],
        "top-right": image[: h // 8, -(w // 8) :],
        "bottom-left": image[-(h // 8) :, : w // 8],
        "bottom-right": image[-(h // 8) :, -(w // 8) :],
    }
    redness = {k: float(v[..., 0].mean() - v[..., 1].mean()) for k, v in corners.items()}
    return max(redness, key=redness.get)


def test_a_sideways_phone_photo_decodes_upright_in_preprocess_and_predict(tmp_path):
    root = tmp_path / "photos"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
    portrait = scene((48, 64))  # upright: 48 wide, 64 high
    save_sideways(portrait, root / "a" / "phone.jpg")
    portrait.save(root / "b" / "upright.jpg", quality=95)
    with Image.open(root / "a" / "phone.jpg") as stored:
        assert stored.size == (64, 48)  # as stored: landscape, marker in the bottom-left
        assert red_corner(np.asarray(stored)) == "bottom-left"

    decoded = decode_folder(root, None, "rgb", log=lambda m: None)
    # The header pass counted the upright size (64 high, 48 wide), so nothing was resized.
    assert decoded.conversions["target_size"] == [64, 48]
    assert decoded.conversions["resized"] == 0
    sideways, upright = decoded.x[list(decoded.y).index(0)], decoded.x[list(decoded.y).index(1)]
    assert sideways.shape == (64, 48, 3)
    assert red_corner(sideways) == "top-left"
    assert np.abs(sideways.astype(int) - upright.astype(int)).mean() < 3  # JPEG noise only

    # predict converts the file with the same code: the same upright pixels.
    np.testing.assert_array_equal(
        predict.read_image(root / "a" / "phone.jpg", (64, 48, 3)), sideways
    )


def test_header_pass_reads_the_orientation_without_decoding_pixels(tmp_path, monkeypatch):
    path = tmp_path / "phone.jpg"
    save_sideways(scene((30, 40)), path)

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("the header pass decoded pixels")

    with Image.open(path) as img:
        monkeypatch.setattr(Image.Image, "load", no_decoding)
        monkeypatch.setattr(type(img), "load", no_decoding, raising=False)
        assert sizing.upright_size(img) == (30, 40)


@pytest.mark.parametrize(
    ("gpus", "size", "reason"),
    [
        (0, [96, 128], "median source 3024x4032, capped at 128 px on a CPU"),
        (1, [168, 224], "median source 3024x4032, capped at 224 px with 1 GPU"),
    ],
)
def test_camera_sized_folder_gets_a_capped_size_recorded_with_its_reason(
    project, monkeypatch, capsys, gpus, size, reason
):
    monkeypatch.setattr(sizing, "gpu_count", lambda: gpus)
    raw = project.path / "data" / "raw" / "image_folder"
    for c, cls in enumerate(("cat", "dog")):
        (raw / cls).mkdir(parents=True)
        for i in range(10):
            img = scene(CAMERA, marker=(255, 40 * i, 120 * c))
            if i < 2:  # portrait shots stored sideways: upright 3024 wide, 4032 high
                save_sideways(img.resize((CAMERA[1], CAMERA[0])), raw / cls / f"{i}.jpg")
            else:
                img.save(raw / cls / f"{i}.jpg", quality=85)
    (raw / "checksums.json").write_text(json.dumps({"dataset": "image_folder", "files": {}}))
    project.params(
        data={"dataset": "image_folder", "image_folder": str(raw)},
        preprocess={"test_fraction": 0.2, "val_fraction": 0.2, "gate_fraction": 0.15},
    )

    assert preprocess.main([]) == 0
    override = "set preprocess.image_size to override"
    line = f"preprocess: image size {size[0]}x{size[1]} ({reason}; {override})"
    assert line in capsys.readouterr().err.splitlines()
    meta = json.loads((project.path / "data/processed/meta.json").read_text())
    assert meta["input_shape"] == [*size, 3]
    assert meta["image_size"] == {"size": size, "reason": f"{reason}; {override}"}
    train = np.load(project.path / "data/processed/train_x.npy", mmap_mode="r")
    assert train.shape[1:] == (*size, 3)


def test_image_size_param_overrides_the_default(image_folder, monkeypatch):
    monkeypatch.setattr(sizing, "gpu_count", lambda: 0)
    scan = scan_folder(image_folder, (40, 20), "auto", log=lambda m: None)
    assert scan.size == (40, 20)
    assert scan.conversions["size_reason"] == "set by preprocess.image_size"


def test_small_images_keep_their_median_size(image_folder, monkeypatch):
    """Not scaled up: the fixture's 24x24 and 18x30 images give the median 24x24."""
    monkeypatch.setattr(sizing, "gpu_count", lambda: 0)
    scan = scan_folder(image_folder, None, "auto", log=lambda m: None)
    assert scan.size == (24, 24)
    assert scan.conversions["size_reason"].startswith("median source 24x24, within the 128 px")


@pytest.mark.parametrize(
    ("sizes", "cap", "expected"),
    [
        ([(500, 375)] * 3 + [(375, 500)], 128, (96, 128)),  # mostly landscape 375x500
        ([(1920, 1080)], 128, (72, 128)),  # 16:9 keeps its aspect ratio
        ([(3024, 4032)], 128, (128, 96)),  # portrait
        ([(4000, 200)], 96, (8, 96)),  # a panorama: no side below the families' minimum
        ([(28, 28), (30, 30), (20, 20)], 128, (28, 28)),  # small: never scaled up
    ],
)
def test_choose_image_size_rule(sizes, cap, expected):
    size, reason = sizing.choose_image_size(sizes, None, (cap, "on a CPU"))
    assert size == expected
    assert "set preprocess.image_size to override" in reason


@pytest.mark.parametrize("sideways", [False, True])
def test_a_camera_jpeg_decodes_scaled_down_by_libjpeg_to_the_same_picture(tmp_path, sideways):
    """A 12 MP photo bound for 96x128 decodes at 1/8 scale (draft), upright, and matches
    decoding every pixel then resizing to within JPEG noise."""
    from pipeline.data.images import convert_image, decode_image

    upright_scene = scene((3024, 4032))  # portrait, as it should end up
    path = tmp_path / "photo.jpg"
    if sideways:
        save_sideways(upright_scene, path)
    else:
        upright_scene.save(path, quality=95)
    size = (128, 96)  # (height, width): portrait too

    with Image.open(path) as img:
        sizing.draft_for(img, size)
        # At least the target once upright: 1/8 of 4032x3024 is 504x378.
        assert sorted(img.size) == [378, 504]
    fast = decode_image(path, size, 3)
    with Image.open(path) as img:
        img.load()
        whole = convert_image(img, size, 3)
    assert fast.shape == whole.shape == (128, 96, 3)
    assert red_corner(fast) == "top-left"
    assert np.abs(fast.astype(int) - whole.astype(int)).mean() < 2


def test_formats_other_than_jpeg_decode_whole(tmp_path):
    path = tmp_path / "photo.png"
    scene((400, 300)).save(path)
    with Image.open(path) as img:
        sizing.draft_for(img, (30, 40))
        assert img.size == (400, 300)


def test_a_camera_mpo_decodes_its_first_picture_scaled_down(tmp_path):
    """Many cameras write MPO (a JPEG with a second picture appended)."""
    from pipeline.data.images import decode_image

    path = tmp_path / "camera.jpg"
    first, second = scene((1600, 1200)), Image.new("RGB", (1600, 1200), (0, 0, 255))
    first.save(path, format="MPO", save_all=True, append_images=[second])
    with Image.open(path) as img:
        assert img.format == "MPO"
        sizing.draft_for(img, (96, 128))
        assert img.size == (200, 150)  # 1/8
    image = decode_image(path, (96, 128), 3)
    assert image.shape == (96, 128, 3) and red_corner(image) == "top-left"

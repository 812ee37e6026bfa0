"""Images in, labels out: preprocessing formulas, client- and server-side decoding agree, labels, top-k,
kvctl on folders with a corrupt file, and changing preprocessing/labels without a re-upload."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from kvserve.proto import classes
from kvserve.proto.images import MODES, Preprocess, decode, scale, to_input

KVCTL = str(Path(sys.executable).parent / "kvctl")
from digits import LABELS  # noqa: E402 - examples/ is on sys.path (conftest)


def reference(pixels: np.ndarray, mode: str) -> np.ndarray:
    """The formulas, written out independently of kvserve.proto.images (x: HWC float 0-255)."""
    x = pixels.astype(np.float64)
    rgb = x.shape[-1] == 3
    if mode == "none":
        return x
    if mode == "unit":
        return x / 255.0
    if mode == "inception":
        return x / 127.5 - 1.0
    if mode == "caffe":
        return (x[..., ::-1] - np.array([103.939, 116.779, 123.68])) if rgb else x - np.mean([103.939, 116.779, 123.68])
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    return (x / 255.0 - mean) / std if rgb else (x / 255.0 - mean.mean()) / std.mean()


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array.squeeze().astype(np.uint8), mode="L" if array.shape[-1] == 1 else "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("channels", [1, 3])
def test_scale_matches_the_reference_formula(mode, channels):
    pixels = np.random.default_rng(1).integers(0, 256, (5, 7, channels)).astype(np.float32)
    np.testing.assert_allclose(scale(pixels, mode), reference(pixels, mode), atol=1e-5)


def test_exif_orientation_and_center_crop():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif, quality=95)
    pixels = decode(buffer.getvalue(), 0, 0, 3)
    assert pixels.shape == (40, 20, 3), "EXIF orientation 6 turns a 40x20 landscape into a 20x40 portrait"
    assert pixels[2, 10, 2] > 200 and pixels[-3, 10, 0] > 200  # blue on top, red below after rotation
    square = decode(png_bytes(np.zeros((10, 30, 3))), 10, 10, 3, center_crop=True)
    assert square.shape == (10, 10, 3)


def test_bad_image_bytes_are_an_image_error():
    from kvserve.proto.images import ImageError

    with pytest.raises(ImageError, match="not a readable image"):
        to_input(b"not an image", [-1, 8, 8, 1], Preprocess())


@pytest.fixture(scope="module")
def echo_models(tmp_path_factory) -> dict[int, Path]:
    """Identity models over 6x5 images (gray and RGB): their output is exactly the preprocessed input."""
    import keras

    paths = {}
    for channels in (1, 3):
        inputs = keras.Input((6, 5, channels), name="pixels")
        model = keras.Model(inputs, keras.layers.Rescaling(1.0, name="echo")(inputs))
        paths[channels] = tmp_path_factory.mktemp("echo") / f"echo{channels}.keras"
        model.save(paths[channels])
    return paths


@pytest.mark.parametrize("channels", [1, 3])
def test_server_side_and_client_side_preprocessing_agree(served_digits, echo_models, channels):
    rng = np.random.default_rng(channels)
    images = [rng.integers(0, 256, (6, 5, channels)) for _ in range(3)]
    encoded = np.array([png_bytes(image) for image in images], dtype=object)
    name = f"echo{channels}"
    worst = {}
    with served_digits.client() as client:
        client.upload(echo_models[channels], name=name, precision="fp32", preprocess="none")
        for mode in MODES:
            client.configure(name, preprocess=mode)
            served = client.infer(name, {"pixels": encoded})["echo"]
            local = np.stack([to_input(bytes(e), [-1, 6, 5, channels], Preprocess(mode)) for e in encoded])
            expected = np.stack([reference(image.astype(np.float64), mode) for image in images])
            worst[mode] = float(np.max(np.abs(served - local)))
            np.testing.assert_allclose(served, local, atol=1e-5)
            np.testing.assert_allclose(served, expected, atol=1e-4)
    assert max(worst.values()) < 1e-5, worst


@pytest.fixture(scope="module")
def digits_pngs(digits, tmp_path_factory) -> tuple[Path, list[int]]:
    import digits as digits_example

    folder = tmp_path_factory.mktemp("pngs")
    written = digits_example.write_pngs(digits.x_test, digits.y_test, folder, count=12)
    return folder, [label for _, label in written]


@pytest.fixture(scope="module")
def labelled_digits(served_digits, digits, tmp_path_factory) -> str:
    labels = tmp_path_factory.mktemp("labels") / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    with served_digits.client() as client:
        manifest = client.upload(digits.paths["h5"], name="digits-img", preprocess="unit", labels=labels)
    assert manifest["preprocess"]["mode"] == "unit" and manifest["labels"] == LABELS
    return "digits-img"


def test_kvctl_names_the_digits_in_pngs(served_digits, labelled_digits, digits_pngs):
    folder, truth = digits_pngs
    result = subprocess.run([KVCTL, "--server", served_digits.address, "infer", "--model", labelled_digits, "--top", "2",
                             "--json", str(folder)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    predicted = [row["top"][0]["label"] for row in report["results"]]
    assert [row["input"] for row in report["results"]] == sorted(str(p) for p in folder.iterdir())
    correct = sum(p == LABELS[t] for p, t in zip(predicted, truth))
    assert correct >= len(truth) - 1, (predicted, truth)
    assert all(len(row["top"]) == 2 and isinstance(row["top"][0]["score"], float) for row in report["results"])


def test_a_corrupt_file_is_reported_and_the_rest_still_run(served_digits, labelled_digits, digits_pngs, tmp_path):
    folder, _ = digits_pngs
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for png in sorted(folder.iterdir())[:3]:
        (mixed / png.name).write_bytes(png.read_bytes())
    (mixed / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    result = subprocess.run([KVCTL, "--server", served_digits.address, "infer", "-m", labelled_digits, "--json", str(mixed)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, (result.returncode, result.stderr)
    assert len(json.loads(result.stdout)["results"]) == 3
    assert "broken.jpg: not a readable image" in result.stderr and result.stderr.count("error:") == 1
    glob_result = subprocess.run([KVCTL, "--server", served_digits.address, "infer", "-m", labelled_digits, "--json",
                                  str(mixed / "*.png")], capture_output=True, text=True, timeout=120)
    assert glob_result.returncode == 0
    assert [Path(r["input"]).suffix for r in json.loads(glob_result.stdout)["results"]] == [".png"] * 3


def test_server_side_decoding_names_the_digits(served_digits, labelled_digits, digits_pngs):
    folder, truth = digits_pngs
    encoded = np.array([p.read_bytes() for p in sorted(folder.iterdir())], dtype=object)
    with served_digits.client() as client:
        rows = client.classify(labelled_digits, encoded, k=1)
        local = client.infer(labelled_digits, np.stack([to_input(p, [-1, 8, 8, 1], Preprocess("unit")) for p in sorted(folder.iterdir())]))
    predicted = [row[0].label for row in rows]
    assert sum(p == LABELS[t] for p, t in zip(predicted, truth)) >= len(truth) - 1
    assert [row[0].index for row in rows] == local["probabilities"].argmax(1).tolist()


def test_bad_image_bytes_name_the_element(served_digits, labelled_digits, digits_pngs):
    folder, _ = digits_pngs
    good = next(folder.iterdir()).read_bytes()
    with served_digits.client() as client, pytest.raises(grpc.RpcError) as caught:
        client.infer(labelled_digits, np.array([good, b"garbage"], dtype=object))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'image' element 1: not a readable image" in caught.value.details()


def test_triton_classification_extension_and_top_k(served_digits, labelled_digits, digits):
    from kvserve.proto.tensors import build_infer_request, decode_response_outputs

    x = digits.x_test[:4]
    with served_digits.client() as client:
        scores = client.infer("digits", x)["probabilities"]
        request = build_infer_request("digits", {"image": x}, classification={"probabilities": 3})
        top = classes.decode(decode_response_outputs(client.inference.ModelInfer(request))["probabilities"])
        labelled = client.classify(labelled_digits, x * 0 + x, k=2)  # same model, labels attached
    assert [[c.index for c in row] for row in top] == np.argsort(-scores, 1)[:, :3].tolist()
    np.testing.assert_allclose([[c.score for c in row] for row in top], -np.sort(-scores, 1)[:, :3], rtol=1e-6)
    assert all(c.label is None for row in top for c in row)
    assert [row[0].label for row in labelled] == [LABELS[i] for i in scores.argmax(1)]


def test_labels_must_match_the_class_count_and_json_labels_work(served_digits, digits, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("a\nb\n")
    keras_style = tmp_path / "index.json"
    keras_style.write_text(json.dumps({str(i): [f"n{i:08d}", name] for i, name in enumerate(LABELS)}))
    with served_digits.client() as client:
        with pytest.raises(grpc.RpcError) as caught:
            client.upload(digits.paths["h5"], name="mislabelled", labels=short)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "2 labels given, but the model's output 'probabilities' has 10 classes" in caught.value.details()
        assert "mislabelled" not in {m["name"] for m in client.list_models()}
        manifest = client.upload(digits.paths["h5"], name="json-labels", labels=keras_style)
        assert manifest["labels"] == LABELS


def test_configure_changes_preprocessing_and_labels_without_reupload(served_digits, digits, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(name.upper() for name in LABELS))
    with served_digits.client() as client:
        client.upload(digits.paths["h5"], name="reconf")
        info = client.configure("reconf", preprocess="inception", resize="nearest", center_crop=True, labels=labels)
        assert info["version"] == "1" and info["manifest"]["preprocess"]["mode"] == "inception"
        assert client.describe("reconf")["manifest"]["labels"][0] == "ZERO"
        assert client.classify("reconf", digits.x_test[:1], k=1)[0][0].label == LABELS[digits.keras_probs[0].argmax()].upper()
        client.configure("reconf", clear_labels=True)
        assert client.classify("reconf", digits.x_test[:1], k=1)[0][0].label is None
        with pytest.raises(grpc.RpcError) as caught:
            client.configure("reconf")
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "nothing to change" in caught.value.details()
    stored = json.loads((served_digits.repository / "reconf" / "1" / "manifest.json").read_text())
    assert stored["preprocess"] == {"mode": "inception", "resize": "nearest", "center_crop": True, "source": "user"}


TRITON_PNG_SCRIPT = """
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient

address, model, folder_list = sys.argv[1], sys.argv[2], sys.argv[3:]
client = grpcclient.InferenceServerClient(url=address)
images = np.array([open(p, "rb").read() for p in folder_list], dtype=np.object_)
data = grpcclient.InferInput("image", [len(images)], "BYTES")
data.set_data_from_numpy(images)
result = client.infer(model, [data], outputs=[grpcclient.InferRequestedOutput("probabilities", class_count=1)])
print(json.dumps([row[0].decode() for row in result.as_numpy("probabilities")]))
"""


def test_tritonclient_sends_png_bytes_and_gets_labels(served_digits, labelled_digits, digits_pngs, tmp_path):
    folder, truth = digits_pngs
    pngs = [str(p) for p in sorted(folder.iterdir())]
    result = subprocess.run([sys.executable, "-c", TRITON_PNG_SCRIPT, served_digits.address, labelled_digits, *pngs],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)  # Triton's classification strings: "score:index:label"
    predicted = [answer.split(":", 2)[2] for answer in answers]
    assert sum(p == LABELS[t] for p, t in zip(predicted, truth)) >= len(truth) - 1, (answers, truth)


@pytest.mark.parametrize("model_name, mode", [
    ("resnet50", "caffe"), ("resnet50v2", "inception"), ("ResNet152V2", "inception"), ("vgg16", "caffe"),
    ("MobilenetV3small", "none"), ("mobilenetv2_1.00_224", "inception"), ("efficientnetv2-b0", "none"),
    ("densenet121", "torch"), ("my_model", None),
])
def test_keras_applications_get_their_own_preprocessing(model_name, mode):
    """The longest known prefix wins (ResNet50V2 scales to [-1, 1], ResNet50 is caffe-style); families that
    rescale inside the model take raw 0-255 pixels."""
    from kvserve.proto.images import suggested_mode

    assert suggested_mode(model_name) == mode

"""The Keras world through a real kvd: string tensors over v2 BYTES (in and out), dict inputs and named outputs,
a custom layer loaded through the example plugin and another through ``--custom-objects``, a Keras 2 (tf_keras)
.h5, and one-line refusals for an unknown class and a Lambda layer."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import numpy as np
import pytest
from plugin_sites import pythonpath, write_dist

keras = pytest.importorskip("keras")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_LAYERS = ROOT / "examples" / "kvserve-example-keras-layers"

# A trusted server-side module for `kvd --custom-objects`: the hook, without being a plugin.
SERVED_LAYERS = textwrap.dedent('''
    import keras

    @keras.saving.register_keras_serializable(package="served_layers")
    class Doubler(keras.layers.Layer):
        def call(self, inputs):
            return inputs * 2.0

    def kvserve_register_keras_objects(register):
        register(Doubler)
''')


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The example plugin installed by hand (module + dist-info, as pip lays it out), and the module site."""
    plugin = tmp_path_factory.mktemp("keras-layers-plugin")
    shutil.copy(EXAMPLE_LAYERS / "kvserve_example_keras_layers.py", plugin)
    write_dist(plugin, "kvserve-example-keras-layers", "0.1.0", {"keras-layers": "kvserve_example_keras_layers"})
    module = tmp_path_factory.mktemp("served-layers")
    (module / "served_layers.py").write_text(SERVED_LAYERS)
    return [plugin, module]


@pytest.fixture(scope="module")
def kvd(tmp_path_factory: pytest.TempPathFactory, sites: list[Path]):
    from conftest import start_kvd

    server = start_kvd(tmp_path_factory.mktemp("keras-world") / "repo", "--custom-objects", "served_layers", "--no-warm-converter",
                       env=pythonpath(*sites))
    yield server
    server.kill()


def _upload(kvd, path: Path, name: str) -> dict:
    with kvd.client(timeout=600) as client:
        return client.upload(path, name=name)


def _text_model() -> keras.Model:
    vectorize = keras.layers.TextVectorization(max_tokens=40, output_sequence_length=6)
    vectorize.adapt(["the cat sat on the mat", "a dog ran fast", "hello world the end", "keras model server"])
    text = keras.Input(shape=(1,), dtype="string", name="text")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(40, 8)(vectorize(text)))
    return keras.Model(text, keras.layers.Dense(3, name="sentiment")(pooled))


def test_string_input_over_v2_bytes(kvd, tmp_path: Path) -> None:
    model = _text_model()
    model.save(tmp_path / "text.keras")
    manifest = _upload(kvd, tmp_path / "text.keras", "text")
    assert manifest["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1, 1]}]
    texts = np.array([[b"the cat sat"], [b"hello world"], [b"nothing known"]], dtype=object)
    with kvd.client() as client:
        got = client.infer("text", {"text": texts})["sentiment"]
    expected = np.asarray(model(texts))
    tolerance = manifest["parity"]["tolerance_max_rel_diff"]
    assert np.max(np.abs(got - expected)) <= tolerance * max(float(np.ptp(expected)), 1e-6)
    print("string input served by", manifest["served_by"]["backend"])


def test_string_output_over_v2_bytes(kvd, tmp_path: Path) -> None:
    ids = keras.Input(shape=(3,), dtype="int64", name="ids")
    model = keras.Model(ids, keras.layers.StringLookup(vocabulary=["zero", "one", "two"], invert=True, name="words")(ids))
    model.save(tmp_path / "words.keras")
    manifest = _upload(kvd, tmp_path / "words.keras", "words")
    assert manifest["served_by"]["backend"] == "TF"
    assert manifest["outputs"] == [{"name": "words", "datatype": "BYTES", "shape": [-1, 3]}]
    # TF's runner checked against the original like an IR: strings must match exactly
    assert manifest["parity"]["backend"] == "TF" and manifest["parity"]["passed"] is True
    assert manifest["parity"]["max_rel_diff"] == 0.0
    with kvd.client() as client:
        got = client.infer("words", {"ids": np.array([[1, 2, 3], [0, 1, 1]], dtype=np.int64)})["words"]
    assert got.tolist() == [[b"zero", b"one", b"two"], [b"[UNK]", b"zero", b"zero"]]


def test_dict_inputs_and_named_outputs(kvd, tmp_path: Path) -> None:
    age, zeta = keras.Input((3,), name="age"), keras.Input((2,), name="zeta")
    hidden = keras.layers.Dense(8, activation="tanh")(keras.layers.Concatenate()([age, zeta]))
    model = keras.Model({"zeta": zeta, "age": age}, {"score": keras.layers.Dense(1)(hidden),
                                                    "classes": keras.layers.Dense(3, activation="softmax")(hidden)})
    model.save(tmp_path / "dict.keras")
    manifest = _upload(kvd, tmp_path / "dict.keras", "dicts")
    assert [t["name"] for t in manifest["inputs"]] == ["age", "zeta"]
    assert [t["name"] for t in manifest["outputs"]] == ["classes", "score"]
    feeds = {"zeta": np.random.default_rng(0).random((4, 2), dtype=np.float32),
             "age": np.random.default_rng(1).random((4, 3), dtype=np.float32)}
    with kvd.client() as client:
        got = client.infer("dicts", feeds)
    expected = model(feeds)
    for name in ("classes", "score"):
        ref = np.asarray(expected[name])
        assert np.max(np.abs(got[name] - ref)) <= manifest["parity"]["tolerance_max_rel_diff"] * max(float(np.ptp(ref)), 1e-3)


def test_custom_layers_through_the_plugin_and_custom_objects(kvd, tmp_path: Path, sites: list[Path]) -> None:
    sys.path[:0] = [str(s) for s in sites]
    try:
        import kvserve_example_keras_layers as example
        import served_layers
    finally:
        del sys.path[: len(sites)]
    inputs = keras.Input((4,), name="x")
    model = keras.Model(inputs, served_layers.Doubler(name="double")(example.classes()["ScaledDense"](3, name="scaled")(inputs)))
    model.save(tmp_path / "custom.keras")
    manifest = _upload(kvd, tmp_path / "custom.keras", "custom")
    x = np.random.default_rng(3).random((2, 4), dtype=np.float32)
    with kvd.client() as client:
        got = client.infer("custom", {"x": x})["double"]
    ref = np.asarray(model(x))
    assert np.max(np.abs(got - ref)) <= manifest["parity"]["tolerance_max_rel_diff"] * max(float(np.ptp(ref)), 1e-3)


def test_unknown_class_and_lambda_are_one_line_refusals(kvd, tmp_path: Path) -> None:
    @keras.saving.register_keras_serializable(package="nobody_ships_this")
    class Mystery(keras.layers.Layer):
        def call(self, inputs):
            return inputs + 1.0

    inputs = keras.Input((3,), name="x")
    keras.Model(inputs, Mystery(name="mystery")(inputs)).save(tmp_path / "mystery.keras")
    keras.Model(inputs, keras.layers.Lambda(lambda t: t * 3.0, name="triple")(inputs)).save(tmp_path / "lambda.keras")
    with pytest.raises(grpc.RpcError) as unknown:
        _upload(kvd, tmp_path / "mystery.keras", "mystery")
    assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert unknown.value.details() == ("layer class 'Mystery' is not known to kvd; register it with a kvserve plugin "
                                       "(kvserve_register_keras_objects) or start kvd with --custom-objects MODULE")
    with pytest.raises(grpc.RpcError) as unsafe:
        _upload(kvd, tmp_path / "lambda.keras", "lambda")
    assert unsafe.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = unsafe.value.details()
    assert "'triple'" in details and "--allow-unsafe-deserialization" in details
    assert "\n" not in details and "\x1b" not in details


TF_KERAS_LSTM = textwrap.dedent('''
    import sys, numpy as np, tf_keras as K
    model = K.Sequential([K.layers.InputLayer((5, 4)), K.layers.Bidirectional(K.layers.LSTM(6)), K.layers.Dense(3)])
    x = np.random.default_rng(0).random((4, 5, 4), dtype=np.float32)
    model.save(sys.argv[1] + "/lstm.h5")
    np.savez(sys.argv[1] + "/lstm.npz", x=x, y=model.predict(x, verbose=0))
''')


def test_tf_keras_h5_is_served_like_tf_keras(kvd, tmp_path: Path) -> None:
    pytest.importorskip("tf_keras")
    subprocess.run([sys.executable, "-c", TF_KERAS_LSTM, str(tmp_path)], check=True, timeout=600, capture_output=True)
    manifest = _upload(kvd, tmp_path / "lstm.h5", "legacy")
    assert manifest["converter"]["loader"] == "tf_keras"
    saved = np.load(tmp_path / "lstm.npz")
    with kvd.client() as client:
        got = next(iter(client.infer("legacy", {manifest["inputs"][0]["name"]: saved["x"]}).values()))
    ref = saved["y"]
    assert np.max(np.abs(got - ref)) <= manifest["parity"]["tolerance_max_rel_diff"] * max(float(np.ptp(ref)), 1e-3)


def test_missing_custom_objects_module_stops_kvd_with_one_line(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "kvserve.server.main", "--repository", str(tmp_path / "repo"), "--address",
                          "127.0.0.1:0", "--http-address", "", "--metrics-address", "", "--custom-objects", "no_such_layers_module"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "--custom-objects: no module named 'no_such_layers_module'" in run.stderr + run.stdout

"""The Keras world beyond image CNNs, at the converter and the TF backend (in-process, small models):
dict and nested inputs/outputs by name, string tensors, custom objects, Keras 2 (tf_keras) .h5 files, Lambda
refusals, one-line errors, and the model kinds that must load, convert (or fall back to TF) and answer right.
The served end to end path is in tests/test_keras_world_served.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras")
import keras  # noqa: E402

from kvserve.plugins.backends.tensorflow_fallback import load_tensorflow_runner  # noqa: E402
from kvserve.plugins.converters.keras_openvino import KerasOpenVINOConverter  # noqa: E402
from kvserve.plugins.keras_loading import CUSTOM_OBJECTS_ENV, one_line  # noqa: E402
from kvserve.plugins.types import ConversionFailed, ConversionOptions, ModelRejected, SourceModel, UnsafeModel  # noqa: E402
from kvserve.proto.tensors import DATATYPES  # noqa: E402
from kvserve.server.uploads.parity import compare, seeded_inputs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_LAYERS = ROOT / "examples" / "kvserve-example-keras-layers"
F32_TOLERANCE = 1e-4  # fp32 weights executed in f32 (server/uploads/parity.py)


def _load(path: Path, fmt: str = "keras-v3", unsafe: bool = False) -> SourceModel:
    return KerasOpenVINOConverter().load(path, fmt, ConversionOptions(precision="fp32", allow_unsafe_deserialization=unsafe))


def _openvino(model: SourceModel, out_dir: Path):
    """The IR with fp32 weights compiled for f32 execution, called by input names, answering by output names."""
    import openvino as ov

    from kvserve.plugins.backends.openvino_devices import openvino_inputs

    out_dir.mkdir(parents=True, exist_ok=True)
    xml = KerasOpenVINOConverter().convert(model, out_dir, ConversionOptions(precision="fp32"))
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return lambda feeds: {port.get_any_name(): value for port, value in compiled(openvino_inputs(feeds)).items()}


def _tf_runner(model: SourceModel, path: Path, fmt: str = "keras-v3"):
    manifest = {"source": {"format": fmt, "file": path.name}, "converter": model.details}
    return load_tensorflow_runner(path.parent, manifest, model.inputs, model.outputs)


def _served(model: SourceModel, path: Path, tmp_path: Path, feeds: dict[str, np.ndarray], fmt: str = "keras-v3",
            tolerance: float = F32_TOLERANCE) -> str:
    """Where the model goes (OpenVINO when it converts, else TF), checked against the reference by name."""
    reference = model.reference(feeds)
    try:
        predict = _openvino(model, tmp_path / "ir")
        backend = "OpenVINO"
    except ConversionFailed:
        predict = _tf_runner(model, path, fmt).infer
        backend = "TF"
    got = predict(feeds)
    assert set(got) >= set(reference), (sorted(got), sorted(reference))
    report = compare(reference, {name: got[name] for name in reference})
    assert report["max_rel_diff"] <= tolerance, (backend, report)
    return backend


# --- dict and nested inputs/outputs -------------------------------------------------------------------------
def _dict_model() -> keras.Model:
    age = keras.Input((3,), name="age")
    zeta = keras.Input((2,), name="zeta")
    hidden = keras.layers.Dense(8, activation="tanh")(keras.layers.Concatenate()([age, zeta]))
    return keras.Model({"zeta": zeta, "age": age},
                       {"score": keras.layers.Dense(1, name="s")(hidden),
                        "classes": keras.layers.Dense(3, activation="softmax", name="c")(hidden)})


def test_dict_inputs_and_outputs_are_named_by_their_keys(tmp_path: Path) -> None:
    path = tmp_path / "dict.keras"
    _dict_model().save(path)
    model = _load(path)
    assert [(s.name, s.shape) for s in model.inputs] == [("age", (-1, 3)), ("zeta", (-1, 2))]
    assert [(s.name, s.shape) for s in model.outputs] == [("classes", (-1, 3)), ("score", (-1, 1))]
    feeds = {"age": np.random.default_rng(0).random((5, 3), dtype=np.float32),
             "zeta": np.random.default_rng(1).random((5, 2), dtype=np.float32)}
    keras_model = keras.models.load_model(path)
    expected = keras_model({"age": feeds["age"], "zeta": feeds["zeta"]})
    for name in ("classes", "score"):
        np.testing.assert_allclose(model.reference(feeds)[name], np.asarray(expected[name]), rtol=1e-6)
    for predict in (_openvino(model, tmp_path / "ir"), _tf_runner(model, path).infer):
        got = predict(feeds)
        for name in ("classes", "score"):
            np.testing.assert_allclose(got[name], np.asarray(expected[name]), atol=1e-5)


def test_list_outputs_use_keras_output_names_and_nested_inputs_flatten(tmp_path: Path) -> None:
    a, b = keras.Input((4,), name="left"), keras.Input((4,), name="right")
    merged = keras.layers.Add()([a, b])
    model = keras.Model([a, b], [keras.layers.Dense(2, name="first_head")(merged), keras.layers.Dense(5, name="second_head")(merged)])
    path = tmp_path / "multi.keras"
    model.save(path)
    loaded = _load(path)
    assert [s.name for s in loaded.inputs] == ["left", "right"]
    assert [s.name for s in loaded.outputs] == ["first_head", "second_head"]
    feeds = {"left": np.ones((2, 4), np.float32), "right": np.arange(8, dtype=np.float32).reshape(2, 4)}
    assert _served(loaded, path, tmp_path, feeds) == "OpenVINO"
    got = _tf_runner(loaded, path).infer(feeds, ["second_head"])
    assert list(got) == ["second_head"] and got["second_head"].shape == (2, 5)


# --- repeated output names ------------------------------------------------------------------------------------
def test_unique_names_keep_the_first_and_suffix_the_rest_in_order() -> None:
    from kvserve.plugins.keras_loading import unique_names

    assert unique_names(["d", "e"]) == ["d", "e"]
    assert unique_names(["d", "d", "d"]) == ["d", "d_1", "d_2"]
    assert unique_names(["d", "d", "d_1"]) == ["d", "d_2", "d_1"]  # never takes a name another output has
    assert unique_names(["x", "d"], taken=["x"]) == ["x_1", "d"]  # an output named like an input


def _repeated_outputs(kind: str) -> keras.Model:
    x = keras.Input((4,), name="x")
    if kind == "same-tensor-twice":
        d = keras.layers.Dense(3, name="d", bias_initializer="ones")(x)
        return keras.Model(x, [d, keras.layers.Dense(2, name="e")(x), d])
    if kind == "shared-layer-twice":
        y = keras.Input((4,), name="y")
        shared = keras.layers.Dense(2, name="shared")
        return keras.Model([x, y], [shared(x), shared(keras.layers.Dense(4, name="pre")(y))])
    if kind == "input-as-output":
        return keras.Model(x, [x, keras.layers.Dense(3, name="d")(x)])
    if kind == "nested-dict-of-list":  # OpenVINO keeps one port per outer key unless kvd flattens the answer
        hidden = keras.layers.Dense(8, activation="relu")(x)
        return keras.Model(x, {"heads": [keras.layers.Dense(2, name="first")(hidden), keras.layers.Dense(3, name="second")(hidden)],
                               "aux": keras.layers.Dense(1, name="aux")(hidden)})
    d = keras.layers.Dense(3, name="d", bias_initializer="ones")(x)  # same tensor under two dict keys
    return keras.Model(x, {"a": d, "b": d, "c": keras.layers.Dense(2, name="e")(x)})


REPEATED = {"same-tensor-twice": ["d", "e", "d_1"], "shared-layer-twice": ["shared", "shared_1"],
            "input-as-output": ["x_1", "d"], "one-tensor-two-keys": ["a", "b", "c"],
            "nested-dict-of-list": ["aux", "heads", "heads_1"]}


@pytest.mark.parametrize("suffix,fmt", [(".keras", "keras-v3"), (".h5", "keras-h5")])
@pytest.mark.parametrize("kind", sorted(REPEATED))
def test_repeated_output_names_are_made_distinct_and_served_by_openvino(tmp_path: Path, kind: str, suffix: str, fmt: str) -> None:
    """Keras loads these models, so kvd serves them: a repeated name gets _1, _2 in output order (an output named
    like an input too), the same in the signature, the IR's ports, the TF backend and the parity reference."""
    original = _repeated_outputs(kind)
    path = tmp_path / f"repeated{suffix}"
    original.save(path)
    model = _load(path, fmt)
    names = [s.name for s in model.outputs]
    assert names == REPEATED[kind]
    assert [s.name for s in model.inputs] == [t.name for t in original.inputs]
    rng = np.random.default_rng(0)
    feeds = {s.name: rng.normal(size=(3, 4)).astype(np.float32) for s in model.inputs}
    raw = original([feeds[s.name] for s in model.inputs] if len(model.inputs) > 1 else feeds[model.inputs[0].name])
    expected = dict(zip(names, [np.asarray(v) for v in keras.tree.flatten(raw)]))
    openvino, tf_runner = _openvino(model, tmp_path / "ir"), _tf_runner(model, path, fmt)
    for predict in (model.reference, openvino, tf_runner.infer):
        got = predict(feeds)
        assert set(got) >= set(names)
        for name in names:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-5)
    if kind == "input-as-output":
        np.testing.assert_array_equal(openvino(feeds)["x_1"], feeds["x"])


def test_a_savedmodel_returning_one_tensor_twice_keeps_both_outputs(tmp_path: Path) -> None:
    """model.export() names the outputs output_0/output_1; OpenVINO folds them into one port unless kvd splits it."""
    x = keras.Input((4,), name="x")
    d = keras.layers.Dense(3, name="d", bias_initializer="ones")(x)
    keras.Model(x, [d, d]).export(tmp_path / "sm", verbose=False)
    model = KerasOpenVINOConverter().load(tmp_path / "sm", "savedmodel", ConversionOptions(precision="fp32"))
    assert [s.name for s in model.outputs] == ["output_0", "output_1"]
    feeds = {"x": np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)}
    expected = model.reference(feeds)
    got = _openvino(model, tmp_path / "ir")(feeds)
    for name in ("output_0", "output_1"):
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-5)


# --- strings -----------------------------------------------------------------------------------------------
def _text_model() -> keras.Model:
    vectorize = keras.layers.TextVectorization(max_tokens=40, output_sequence_length=6)
    vectorize.adapt(["the cat sat on the mat", "a dog ran fast", "hello world the end", "keras model server"])
    text = keras.Input(shape=(1,), dtype="string", name="text")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(40, 8)(vectorize(text)))
    return keras.Model(text, keras.layers.Dense(3, name="sentiment")(pooled))


def test_string_input_model_converts_with_openvino_tokenizers(tmp_path: Path) -> None:
    pytest.importorskip("openvino_tokenizers")
    path = tmp_path / "text.keras"
    _text_model().save(path)
    model = _load(path)
    assert [(s.name, s.datatype, s.shape) for s in model.inputs] == [("text", "BYTES", (-1, 1))]
    feeds = {"text": np.array([[b"the cat"], [b"hello dog world"], [b"unknown words here"]], dtype=object)}
    expected = np.asarray(keras.models.load_model(path)(feeds["text"]))
    got = _openvino(model, tmp_path / "ir")(feeds)["sentiment"]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(_tf_runner(model, path).infer(feeds)["sentiment"], expected, atol=1e-6)
    seeded = seeded_inputs(model.inputs, 4)  # parity inputs for a string input are strings
    assert seeded["text"].dtype == object and all(isinstance(x, bytes) for x in seeded["text"].reshape(-1))


def test_string_output_model_is_served_by_tf(tmp_path: Path) -> None:
    ids = keras.Input(shape=(3,), dtype="int64", name="ids")
    words = keras.layers.StringLookup(vocabulary=["zero", "one", "two"], invert=True, name="words")(ids)
    model = keras.Model(ids, words)
    path = tmp_path / "words.keras"
    model.save(path)
    loaded = _load(path)
    assert [(s.name, s.datatype) for s in loaded.outputs] == [("words", "BYTES")]
    with pytest.raises(ConversionFailed, match="TF"):
        _openvino(loaded, tmp_path / "ir")
    got = _tf_runner(loaded, path).infer({"ids": np.array([[1, 2, 3]], dtype=np.int64)})["words"]
    assert got.dtype == object and got.tolist() == [[b"zero", b"one", b"two"]]


# --- custom objects ----------------------------------------------------------------------------------------
def _custom_layer_model(tmp_path: Path) -> Path:
    sys.path.insert(0, str(EXAMPLE_LAYERS))
    try:
        import kvserve_example_keras_layers as example
    finally:
        sys.path.remove(str(EXAMPLE_LAYERS))
    inputs = keras.Input((4,), name="x")
    model = keras.Model(inputs, example.classes()["ScaledDense"](3, name="scaled")(inputs))
    path = tmp_path / "custom.keras"
    model.save(path)
    return path


def test_unknown_custom_layer_is_a_one_line_refusal_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _custom_layer_model(tmp_path)
    # Keras's global registry knows the class in this process; kvd's converter child would not.
    for key in [k for k in keras.saving.get_custom_objects() if "ScaledDense" in k]:
        monkeypatch.delitem(keras.saving.get_custom_objects(), key)
    monkeypatch.delenv(CUSTOM_OBJECTS_ENV, raising=False)
    with pytest.raises(ModelRejected) as info:
        _load(path)
    message = str(info.value)
    assert message == ("layer class 'ScaledDense' is not known to kvd; register it with a kvserve plugin "
                       "(kvserve_register_keras_objects) or start kvd with --custom-objects MODULE")


def test_custom_objects_module_makes_the_layer_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _custom_layer_model(tmp_path)
    for key in [k for k in keras.saving.get_custom_objects() if "ScaledDense" in k]:
        monkeypatch.delitem(keras.saving.get_custom_objects(), key)
    monkeypatch.syspath_prepend(str(EXAMPLE_LAYERS))
    monkeypatch.setenv(CUSTOM_OBJECTS_ENV, "kvserve_example_keras_layers")
    model = _load(path)
    feeds = {"x": np.random.default_rng(2).random((3, 4), dtype=np.float32)}
    assert _served(model, path, tmp_path, feeds) == "OpenVINO"
    np.testing.assert_allclose(_tf_runner(model, path).infer(feeds)["scaled"], model.reference(feeds)["scaled"], atol=1e-6)


def test_broken_custom_objects_module_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _custom_layer_model(tmp_path)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "broken_layers.py").write_text("raise RuntimeError('no such thing')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv(CUSTOM_OBJECTS_ENV, "broken_layers")
    with pytest.raises(ModelRejected, match="custom objects module 'broken_layers'.*failed to import: RuntimeError: no such thing"):
        _load(path)


# --- Lambda layers -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix, fmt", [(".keras", "keras-v3"), (".h5", "keras-h5")])
def test_lambda_refusal_names_the_layer(tmp_path: Path, suffix: str, fmt: str) -> None:
    inputs = keras.Input((3,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Lambda(lambda t: t * 2.0, name="double_it")(inputs)))
    path = tmp_path / f"lambda{suffix}"
    model.save(path)
    with pytest.raises(UnsafeModel) as info:
        _load(path, fmt)
    message = str(info.value)
    assert "'double_it'" in message and "--allow-unsafe-deserialization" in message
    assert message.startswith("refused to load the model: Lambda layer 'double_it' whose Python code would run"), message
    assert "\n" not in message and "\x1b" not in message
    loaded = _load(path, fmt, unsafe=True)  # the operator's opt-in
    assert np.allclose(loaded.reference({"x": np.ones((1, 3), np.float32)})[loaded.outputs[0].name],
                       np.asarray(model(np.ones((1, 3), np.float32))), atol=1e-6)


def test_one_line_strips_ansi_dumps_and_configs() -> None:
    error = ValueError("\x1b[31mCould not deserialize\x1b[0m layer\nFull object config: {'class_name': 'X', 'config': {}}")
    assert one_line(error) == "Could not deserialize layer"
    assert one_line(ValueError("bad value array([1., 2., 3.]) seen")) == "bad value array(...) seen"


def test_openvino_conversion_failures_name_the_operations() -> None:
    """The reason kept in the manifest (and shown by describe) names what OpenVINO could not convert, in one line,
    for both of OpenVINO's ways of saying it."""
    from kvserve.plugins.converters.keras_openvino import _conversion_message

    failed_log = RuntimeError(
        "Check 'false' failed at src/frontends/common_translators/src/unconverted_ops_report.cpp:151:\nFrontEnd API "
        "failed with OpConversionFailure:\nModel wasn't fully converted. Failed operations detailed log:\n-- Bucketize "
        "with a message:\nException from src/core/include/openvino/core/any.hpp:783:\nBad as from: St6vectorIdSaIdEE "
        "to: St6vectorIfSaIfEE\n\nSummary:\n-- Conversion is failed for: Bucketize\n")
    assert _conversion_message(failed_log) == "OpenVINO could not convert the model: Conversion is failed for: Bucketize"
    no_rule = RuntimeError("Check 'unsupported_operations.empty()' failed at src/frontends/tensorflow/src/frontend.cpp:\n"
                           "No conversion rule found for operations: Bitcast\nTo facilitate the conversion of unsupported "
                           "operations, refer to Frontend Extension documentation")
    assert _conversion_message(no_rule) == "OpenVINO could not convert the model: No conversion rule found for operations: Bitcast"


# --- Keras 2 (tf_keras) .h5 --------------------------------------------------------------------------------
TF_KERAS_MAKER = textwrap.dedent('''
    import sys, numpy as np, tf_keras as K
    out = sys.argv[1]
    rng = np.random.default_rng(0)
    seq = K.Sequential([K.layers.InputLayer((5, 4)), K.layers.LSTM(6), K.layers.Dense(3, activation="softmax")])
    inp = K.Input((6,), name="features")
    h = K.layers.BatchNormalization()(K.layers.Dense(8, activation="relu")(inp))
    func = K.Model(inp, [K.layers.Dense(2, name="head_a")(h), K.layers.Dense(1, name="head_b")(h)])
    emb = K.Sequential([K.layers.Embedding(20, 4, input_length=5), K.layers.GRU(3), K.layers.Dense(2)])
    emb.build((None, 5))
    feeds = {"lstm": rng.random((4, 5, 4), dtype=np.float32), "func": rng.random((4, 6), dtype=np.float32),
             "emb": rng.integers(0, 20, size=(4, 5)).astype(np.int32)}
    for name, model in (("lstm", seq), ("func", func), ("emb", emb)):
        model.save(f"{out}/{name}.h5")
        answer = model.predict(feeds[name], verbose=0)
        np.savez(f"{out}/{name}.npz", x=feeds[name], *([answer] if not isinstance(answer, list) else answer))
''')


@pytest.fixture(scope="module")
def tf_keras_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keras 2 .h5 files and tf_keras's answers, made in a subprocess (tf_keras beside Keras 3 in one process
    would share TensorFlow's Keras state)."""
    pytest.importorskip("tf_keras")
    out = tmp_path_factory.mktemp("tf-keras")
    subprocess.run([sys.executable, "-c", TF_KERAS_MAKER, str(out)], check=True, timeout=600, capture_output=True)
    return out


@pytest.mark.parametrize("name", ["lstm", "func", "emb"])
def test_tf_keras_h5_loads_and_answers_like_tf_keras(tf_keras_files: Path, tmp_path: Path, name: str) -> None:
    path = tf_keras_files / f"{name}.h5"
    saved = np.load(tf_keras_files / f"{name}.npz")
    model = _load(path, "keras-h5")
    if name in ("lstm", "emb"):  # Keras 3 cannot read Keras 2 RNN configs ('time_major'); tf_keras can
        assert model.details["loader"] == "tf_keras"
    if name == "func":
        assert [s.name for s in model.outputs] == ["head_a", "head_b"]
    feeds = {model.inputs[0].name: saved["x"].astype(DATATYPES[model.inputs[0].datatype])}  # as the model declares it
    answers = [saved[f"arr_{i}"] for i in range(len(model.outputs))]
    for spec, expected in zip(model.outputs, answers):
        np.testing.assert_allclose(model.reference(feeds)[spec.name], expected, atol=1e-5)
    backend = _served(model, path, tmp_path, feeds, "keras-h5")
    tf_answers = _tf_runner(model, path, "keras-h5").infer(feeds)
    for spec, expected in zip(model.outputs, answers):
        np.testing.assert_allclose(tf_answers[spec.name], expected, atol=1e-5)
    print(json.dumps({"tf_keras": name, "loader": model.details["loader"], "served_by": backend}))


# --- model kinds that must load, convert (or fall back) and answer right ------------------------------------
def _mixed_precision() -> keras.Model:
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inputs = keras.Input((8,), name="x")
        hidden = keras.layers.Dense(16, activation="relu")(inputs)
        outputs = keras.layers.Activation("softmax", dtype="float32", name="probs")(keras.layers.Dense(4)(hidden))
        return keras.Model(inputs, outputs)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _preprocessing() -> keras.Model:
    normalize = keras.layers.Normalization()
    normalize.adapt(np.random.default_rng(3).normal(5, 2, size=(64, 12, 12, 3)).astype(np.float32))
    inputs = keras.Input((12, 12, 3), name="image")
    x = keras.layers.Resizing(8, 8)(keras.layers.Rescaling(1 / 255.0)(inputs))
    x = keras.layers.Conv2D(4, 3)(normalize(x))
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(keras.layers.GlobalAveragePooling2D()(x)))


def _rnn() -> keras.Model:
    inputs = keras.Input((7, 5), name="sequence")
    x = keras.layers.Bidirectional(keras.layers.LSTM(6, return_sequences=True))(inputs)
    x = keras.layers.GRU(4)(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="out")(x))


def _transformer() -> keras.Model:
    inputs = keras.Input((6, 16), name="tokens")
    attended = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8)(inputs, inputs)
    x = keras.layers.LayerNormalization()(inputs + attended)
    x = keras.layers.LayerNormalization()(x + keras.layers.Dense(16)(keras.layers.Dense(32, activation="gelu")(x)))
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(keras.layers.GlobalAveragePooling1D()(x)))


def _multi_io() -> keras.Model:
    image = keras.Input((8, 8, 1), name="image")
    meta = keras.Input((3,), name="meta")
    x = keras.layers.Concatenate()([keras.layers.Flatten()(keras.layers.Conv2D(2, 3)(image)), meta])
    return keras.Model([image, meta], {"kind": keras.layers.Dense(4, activation="softmax")(x), "size": keras.layers.Dense(1)(x)})


def _embedding() -> keras.Model:
    tokens = keras.Input((9,), dtype="int32", name="tokens")
    x = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(50, 8)(tokens))
    return keras.Model(tokens, keras.layers.Dense(2, name="label")(x))


KINDS = {"mixed_precision": _mixed_precision, "preprocessing": _preprocessing, "rnn": _rnn, "transformer": _transformer,
         "multi_io": _multi_io, "embedding": _embedding}


def _feeds(model: SourceModel) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(4)
    feeds = {}
    for spec in model.inputs:
        shape = [3 if d < 0 else d for d in spec.shape]
        if spec.datatype.startswith("INT"):
            feeds[spec.name] = rng.integers(1, 50, size=shape).astype(np.int32)
        elif spec.name == "image" and len(shape) == 4 and shape[-1] == 3:
            feeds[spec.name] = rng.uniform(0, 255, size=shape).astype(np.float32)
        else:
            feeds[spec.name] = rng.normal(0, 1, size=shape).astype(np.float32)
    return feeds


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_model_kind_is_served_right(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.keras"
    KINDS[kind]().save(path)
    model = _load(path)
    feeds = _feeds(model)
    # A mixed-precision reference computes in float16 itself: it is the less exact side (~1e-3 of the range).
    tolerance = 1e-2 if model.details.get("compute_dtype") == "float16" else F32_TOLERANCE
    assert (kind == "mixed_precision") == (tolerance > F32_TOLERANCE)
    backend = _served(model, path, tmp_path, feeds, tolerance=tolerance)
    # All of these convert to OpenVINO today; a regression to TF would be a silent 3x slowdown.
    assert backend == "OpenVINO", kind
    tf_answers = _tf_runner(model, path).infer(feeds)
    reference = model.reference(feeds)
    assert compare(reference, tf_answers)["max_rel_diff"] <= F32_TOLERANCE  # TF runs the very same model


@keras.saving.register_keras_serializable(package="kvserve_tests")
class SubclassedNet(keras.Model):
    """A keras.Model subclass with no Input: built only by being called."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(6, activation="tanh")
        self.head = keras.layers.Dense(3, activation="softmax")

    def call(self, x):
        return self.head(self.hidden(x))


@keras.saving.register_keras_serializable(package="kvserve_tests")
class SubclassedTwoInputs(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.head = keras.layers.Dense(2)

    def call(self, inputs):
        return self.head(keras.ops.concatenate([inputs["width"], inputs["depth"]], axis=-1))


@keras.saving.register_keras_serializable(package="kvserve_tests")
class SubclassedTokens(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.embed = keras.layers.Embedding(40, 4)
        self.pool = keras.layers.GlobalAveragePooling1D()
        self.head = keras.layers.Dense(2)

    def call(self, tokens):
        return self.head(self.pool(self.embed(tokens)))


def test_subclassed_model_built_by_calling_is_served_by_openvino(tmp_path: Path) -> None:
    model = SubclassedNet()
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    original = np.asarray(model(x[:2]))  # built by this call alone (batch 2 recorded; kvd makes it dynamic)
    model.save(tmp_path / "net.keras")
    loaded = _load(tmp_path / "net.keras")
    assert [(s.name, s.datatype, tuple(s.shape)) for s in loaded.inputs] == [("x", "FP32", (-1, 4))]
    assert [(s.name, tuple(s.shape)) for s in loaded.outputs] == [("output", (-1, 3))]
    # the functional view runs the saved weights: its answers are the original model's
    assert compare({"p": original}, {"p": loaded.reference({"x": x[:2]})["output"]})["max_rel_diff"] <= 1e-6
    assert _served(loaded, tmp_path / "net.keras", tmp_path, {"x": x}) == "OpenVINO"
    assert compare(loaded.reference({"x": x}), _tf_runner(loaded, tmp_path / "net.keras").infer({"x": x}))["max_rel_diff"] <= F32_TOLERANCE


def test_subclassed_model_with_dict_inputs_and_tokens_keeps_names_and_dtypes(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    two = SubclassedTwoInputs()
    two({"width": np.ones((1, 3), np.float32), "depth": np.ones((1, 2), np.float32)})
    two.save(tmp_path / "two.keras")
    loaded = _load(tmp_path / "two.keras")
    assert sorted((s.name, s.datatype, tuple(s.shape)) for s in loaded.inputs) == [("depth", "FP32", (-1, 2)), ("width", "FP32", (-1, 3))]
    feeds = {"width": rng.normal(size=(4, 3)).astype(np.float32), "depth": rng.normal(size=(4, 2)).astype(np.float32)}
    assert _served(loaded, tmp_path / "two.keras", tmp_path / "two", feeds) == "OpenVINO"
    tokens = SubclassedTokens()
    tokens(np.ones((2, 7), np.int32))
    tokens.save(tmp_path / "tokens.keras")
    loaded = _load(tmp_path / "tokens.keras")
    assert [(s.name, s.datatype, tuple(s.shape)) for s in loaded.inputs] == [("tokens", "INT32", (-1, 7))]
    assert loaded.details["input_hints"]["tokens"] == {"kind": "tokens", "high": 40}
    feeds = {"tokens": rng.integers(1, 40, size=(4, 7)).astype(np.int32)}
    assert _served(loaded, tmp_path / "tokens.keras", tmp_path / "tok", feeds) == "OpenVINO"


def test_subclassed_model_saved_unbuilt_is_a_one_line_refusal_saying_how_to_build_it(tmp_path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras warns that the model is not built: that is the case under test
        SubclassedNet().save(tmp_path / "net.keras")
    with pytest.raises(ModelRejected) as info:
        _load(tmp_path / "net.keras")
    message = str(info.value)
    assert message.startswith("the model (SubclassedNet, a keras.Model subclass) was saved before it was built")
    assert "model.build(" in message and "model.export(dir)" in message and "\n" not in message


@pytest.mark.parametrize("suffix, fmt", [(".keras", "keras-v3"), (".h5", "keras-h5")])
def test_a_sequential_models_output_is_named_after_its_last_layer(tmp_path: Path, suffix: str, fmt: str) -> None:
    """Keras 3's Sequential has no output_names; the name must be stable ("head"), not "keras_tensor_116"."""
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(3, name="head")])
    model.save(tmp_path / f"mlp{suffix}")
    assert [s.name for s in _load(tmp_path / f"mlp{suffix}", fmt).outputs] == ["head"]


def test_a_mixed_bfloat16_model_is_served_by_openvino_at_bfloat16s_tolerance(tmp_path: Path) -> None:
    """OpenVINO's CPU cannot run the bfloat16 Converts of a 'mixed_bfloat16' model (it fell back to TF); a float32
    clone converts, and agrees with the bfloat16 reference within bfloat16's own tolerance."""
    from kvserve.server.uploads.parity import tolerance_for

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        series = keras.Input((12, 6), name="series")
        hidden = keras.layers.GlobalAveragePooling1D()(keras.layers.Conv1D(8, 3, activation="relu")(series))
        model = keras.Model(series, keras.layers.Dense(3, dtype="float32", name="scores")(hidden))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    model.save(tmp_path / "bf16.keras")
    loaded = _load(tmp_path / "bf16.keras")
    assert loaded.details["compute_dtype"] == "bfloat16"
    feeds = {"series": np.random.default_rng(3).normal(size=(8, 12, 6)).astype(np.float32)}
    assert _served(loaded, tmp_path / "bf16.keras", tmp_path, feeds, tolerance=tolerance_for("fp32", "f32", "bfloat16")) == "OpenVINO"


def test_the_tf_fallback_is_checked_like_an_ir_and_an_unstable_model_is_refused(tmp_path: Path) -> None:
    """A TF fallback used to be recorded with no check of its own (and served EfficientNetV2S 0.98 from Keras). The
    converter child now runs the TF backend's runner against the original on the parity inputs; when even that
    disagrees (the model amplifies float32 rounding), the upload is refused in one line."""
    import io

    from kvserve.server.uploads.convert_child import _tf_parity

    source = keras.Input((5,), name="x")
    keras.Model(source, keras.layers.Dense(3, activation="softmax", name="p")(source)).save(tmp_path / "m.keras")
    model = _load(tmp_path / "m.keras")
    job = {"out_dir": str(tmp_path), "source": str(tmp_path / "m.keras"), "format": "keras-v3", "allow_unsafe": False}
    report, warnings = _tf_parity(job, io.StringIO(), model, {})
    assert report["backend"] == "TF" and report["passed"] is True and report["tolerance_max_rel_diff"] == 1e-3 and not warnings
    exact = model.reference
    model.reference = lambda feeds: {name: value + 0.01 * np.random.default_rng(0).normal(size=value.shape)
                                     for name, value in exact(feeds).items()}  # a reference no float32 run reproduces
    with pytest.raises(ModelRejected) as info:
        _tf_parity(job, io.StringIO(), model, {})
    message = str(info.value)
    assert message.startswith("the model is numerically unstable") and "BatchNorm" in message and "--tolerance" in message
    assert "\n" not in message


def test_the_ladder_converts_once_and_each_rung_only_saves(tmp_path, monkeypatch):
    """The precision ladder asks the converter for fp16, then fp32 weights of one model: convert_model (most of
    an upload's time) runs once, and the fp32 IR saved after the fp16 one is byte-identical to a fresh conversion."""
    import openvino as ov

    inputs = keras.Input((6,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(3, name="y")(keras.layers.Dense(5, activation="relu")(inputs)))
    path = tmp_path / "m.keras"
    model.save(path)
    source = _load(path)
    conversions = []
    real = ov.convert_model
    monkeypatch.setattr(ov, "convert_model", lambda *a, **k: conversions.append(1) or real(*a, **k))
    converter = KerasOpenVINOConverter()
    for precision, folder in (("fp16", "a"), ("fp32", "b")):
        (tmp_path / folder).mkdir()
        xml = converter.convert(source, tmp_path / folder, ConversionOptions(precision=precision))
    assert len(conversions) == 1
    (tmp_path / "fresh").mkdir()
    fresh = KerasOpenVINOConverter().convert(source, tmp_path / "fresh", ConversionOptions(precision="fp32"))
    assert len(conversions) == 2, "another converter (another upload) converts afresh"
    assert xml.with_suffix(".bin").read_bytes() == fresh.with_suffix(".bin").read_bytes()
    assert (tmp_path / "a" / "model.bin").stat().st_size < xml.with_suffix(".bin").stat().st_size, "fp16 weights are smaller"


def _augmented(layers) -> list:
    """A Keras tutorial's image model: augmentation layers inside it (active in fit(), identity or a center crop
    in predict()), then a small classifier."""
    augment = [layers.RandomFlip("horizontal"), layers.RandomRotation(0.1), layers.RandomZoom(0.1)]
    if hasattr(layers, "RandomContrast"):
        augment.append(layers.RandomContrast(0.2))
    return augment


@pytest.mark.parametrize("flavour, suffix, fmt", [("keras", ".keras", "keras-v3"), ("keras", ".h5", "keras-h5"),
                                                  ("tf_keras", ".h5", "keras-h5")])
def test_augmentation_layers_inside_the_model_convert_as_predict_runs_them(tmp_path: Path, flavour: str, suffix: str,
                                                                            fmt: str) -> None:
    """Augmentation layers' call defaults to training=True and OpenVINO traces model(x): converted as they were,
    their random ops made the model fall back to TF (or would serve augmentation). Converted with training=False,
    the IR answers as predict() does; RandomCrop's inference-time center crop included."""
    module = pytest.importorskip(flavour)
    layers = module.layers
    x = module.Input((32, 32, 3), name="image")
    h = module.Sequential(_augmented(layers), name="augment")(x)
    h = layers.Rescaling(1 / 255.0)(h)
    h = layers.Conv2D(4, 3, activation="relu")(h)
    if hasattr(layers, "RandomCrop"):
        h = layers.RandomCrop(24, 24)(h)
    y = layers.Dense(3, activation="softmax", name="probs")(layers.GlobalAveragePooling2D()(h))
    path = tmp_path / f"augmented{suffix}"
    module.Model(x, y).save(path)
    model = _load(path, fmt)
    feeds = {"image": np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)}
    assert _served(model, path, tmp_path, feeds, fmt) == "OpenVINO"


def test_a_model_answering_argmax_converts_and_keeps_keras_negative_zero_order(tmp_path: Path) -> None:
    """keras.ops.argmax/argmin on floats go through signbit, which Keras' TF backend writes with a Bitcast OpenVINO
    cannot convert (the model fell back to TF). Converted, the indices are Keras' own, ties of -0.0 and 0.0
    included (Keras orders -0.0 below 0.0)."""
    inputs = keras.Input((6,), name="x")
    scores = keras.layers.Dense(6, name="scores")(inputs)
    model = keras.Model(inputs, {"scores": scores, "best": keras.ops.argmax(scores, axis=1),
                                 "worst": keras.ops.argmin(inputs, axis=1), "negative": keras.ops.signbit(inputs)})
    path = tmp_path / "argmax.keras"
    model.save(path)
    loaded = _load(path)
    x = np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32)
    x[0] = [0.0, -0.0, 0.0, -0.0, -0.0, 0.0]  # argmin: the first -0.0
    x[1] = [-0.0, -1.0, -0.0, -2.0, -0.0, -3.0]
    assert _served(loaded, path, tmp_path, {"x": x}) == "OpenVINO"
    got = _openvino(loaded, tmp_path / "again")({"x": x})
    want = loaded.reference({"x": x})
    for name in ("best", "worst", "negative"):
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert want["worst"][0] == 1 and want["negative"][0].tolist() == [False, True, False, True, True, False]

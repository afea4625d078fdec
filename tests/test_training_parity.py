"""One training step of keras_beit equals one of transformers (fp32, every parameter).

transformers runs `loss.backward()` in training mode on the in-memory model
that wrote the checkpoint. keras_beit takes one `train_on_batch` with plain
SGD at learning rate 1, so every variable moves by exactly its gradient.
Dropout and drop path are off on both sides; BatchNorm normalises by the
batch and updates its running statistics.
"""

import keras
import numpy as np
import pytest
import torch
import transformers

import keras_beit
from keras_beit.convert.transformers import backbone_weights
from keras_beit.convert.transformers import head_weights
from keras_beit.convert.transformers import legacy_names
from keras_beit.layers.batch_norm import BatchNormalization
from transformers_reference import save_model
from transformers_reference import to_torch

GRADIENT_ATOL = 2e-5
SEGMENTATION = dict(
    image_size=80, patch_size=8, num_hidden_layers=4, out_indices=[1, 2, 3, 4], auxiliary_channels=16,
    use_relative_position_bias=True,
)


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _images(side, seed=0):
    return np.random.default_rng(seed).normal(size=(2, side, side, 3)).astype("float32")


def _reference_step(model, **inputs):
    """transformers' gradients (legacy key names) and its state after one training forward."""
    model.train()
    model.zero_grad()
    model(**inputs).loss.backward()
    gradients = {name: p.grad.numpy() for name, p in model.named_parameters() if p.grad is not None}
    state = {name: value.numpy() for name, value in model.state_dict().items()}
    return legacy_names(gradients), legacy_names(state)


def _keras_step(task, x, y, **compile_args):
    """Each variable's value before and after one SGD(1.0) step, by variable."""
    task.preprocessor = None  # the model's inputs are the reference's pixel values
    task.compile(optimizer=keras.optimizers.SGD(1.0), **compile_args)
    before = {id(v): _numpy(v) for v in task.variables}
    task.train_on_batch(x, y)
    after = {id(v): _numpy(v) for v in task.variables}
    return before, after


def _gradient_errors(task, gradients, before, after):
    """max |step - gradient| per transformers parameter that has a gradient."""
    errors = {}
    for variable, key, transform in [*backbone_weights(task.backbone, "beit."), *head_weights(task, "beit.")]:
        if key not in gradients:
            continue
        expected = transform(gradients[key]) if transform else gradients[key]
        errors[key] = float(np.abs((before[id(variable)] - after[id(variable)]) - expected).max())
    return errors


def _assert_gradients_match(task, gradients, before, after):
    errors = _gradient_errors(task, gradients, before, after)
    assert set(errors) == set(gradients), f"no keras_beit variable for {sorted(set(gradients) - set(errors))}"
    worst = max(errors, key=errors.get)
    assert errors[worst] <= GRADIENT_ATOL, f"{worst}: {errors[worst]:.2e}"


def test_a_classifier_step_moves_every_parameter_by_transformers_gradient(tmp_path):
    # Per-block position tables, layer scale and mean pooling all get gradients.
    reference = save_model(transformers.BeitForImageClassification, tmp_path, use_relative_position_bias=True)
    images, labels = _images(32), np.array([1, 3])
    gradients, _ = _reference_step(reference, pixel_values=to_torch(images), labels=torch.from_numpy(labels))
    classifier = keras_beit.BEiTImageClassifier.from_preset(str(tmp_path))
    before, after = _keras_step(
        classifier, images, labels, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    _assert_gradients_match(classifier, gradients, before, after)


def test_a_masked_image_modeling_step_moves_every_parameter_by_transformers_gradient(tmp_path):
    # The shared position table and the mask token; the default loss averages over masked patches only.
    reference = save_model(
        transformers.BeitForMaskedImageModeling, tmp_path, use_shared_relative_position_bias=True, use_mask_token=True
    )
    images = _images(32)
    mask = np.zeros((2, 16), bool)
    mask[0, [1, 2, 5]] = True
    mask[1, [0, 7, 8, 9, 15]] = True
    tokens = np.random.default_rng(2).integers(0, 40, size=(2, 16))
    gradients, _ = _reference_step(
        reference, pixel_values=to_torch(images), bool_masked_pos=torch.from_numpy(mask),
        labels=torch.from_numpy(tokens[mask]),
    )
    modeler = keras_beit.BEiTMaskedImageModeler.from_preset(str(tmp_path))
    before, after = _keras_step(modeler, {"images": images, "mask": mask}, tokens)
    _assert_gradients_match(modeler, gradients, before, after)


@pytest.fixture(scope="module")
def segmentation_step(tmp_path_factory):
    directory = tmp_path_factory.mktemp("segmenter")
    reference = save_model(transformers.BeitForSemanticSegmentation, directory, **SEGMENTATION)
    images = _images(80)
    labels = np.random.default_rng(1).integers(0, 5, size=(2, 80, 80))
    labels[:, :7] = 255  # ignored pixels
    gradients, state = _reference_step(reference, pixel_values=to_torch(images), labels=torch.from_numpy(labels))
    segmenter = keras_beit.BEiTImageSegmenter.from_preset(str(directory), tap_points="transformers")
    before, after = _keras_step(segmenter, images, labels)  # its default loss: 0.4 x auxiliary, 255 ignored
    return segmenter, gradients, state, before, after


def test_a_segmentation_step_moves_every_parameter_by_transformers_gradient(segmentation_step):
    segmenter, gradients, _, before, after = segmentation_step
    _assert_gradients_match(segmenter, gradients, before, after)


def test_a_segmentation_step_updates_batchnorm_statistics_as_transformers_does(segmentation_step):
    # Includes the pyramid-pooling branch at 1 x 1, whose variance counts only the 2 images.
    segmenter, _, state, _, after = segmentation_step
    pairs = [*backbone_weights(segmenter.backbone, "beit."), *head_weights(segmenter, "beit.")]
    statistics = [(variable, key) for variable, key, _ in pairs if "running_" in key]
    assert len(statistics) == 2 * 14  # the FPN's BatchNorm and 13 ConvModules
    errors = {key: float(np.abs(after[id(variable)] - state[key]).max()) for variable, key in statistics}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-5, f"{worst}: {errors[worst]:.2e}"


def test_batchnorm_moves_its_variance_towards_the_unbiased_batch_variance():
    # Two values per channel: biased variance 1, unbiased 2. PyTorch: 0.9 * 1 + 0.1 * 2 = 1.1.
    layer = BatchNormalization()
    layer(np.array([[[[1.0, 5.0]]], [[[3.0, 5.0]]]], "float32"), training=True)
    np.testing.assert_allclose(_numpy(layer.moving_variance), [1.1, 0.9], atol=1e-6)
    np.testing.assert_allclose(_numpy(layer.moving_mean), [0.2, 0.5], atol=1e-6)


def test_batchnorm_normalises_a_batch_far_from_zero_as_pytorch_does():
    # Mean 100, spread 1: E[x^2] - E[x]^2 in float32 is 2e-3 off here (Keras' torch moments).
    x = (100.0 + np.random.default_rng(0).normal(size=(4, 6, 6, 8))).astype("float32")
    reference = torch.nn.BatchNorm2d(8).train()
    expected = reference(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).detach().numpy().transpose(0, 2, 3, 1)
    layer = BatchNormalization()
    np.testing.assert_allclose(_numpy(layer(x, training=True)), expected, atol=1e-4)
    np.testing.assert_allclose(_numpy(layer.moving_variance), reference.running_var.numpy(), rtol=1e-4)


torch_only = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="torch.nn.Module parameters belong to the torch backend"
)


def _segmenter_parts():
    backbone = keras_beit.BEiTBackbone(
        image_shape=(32, 32, 3), patch_size=8, hidden_dim=32, num_layers=4, num_heads=4, intermediate_dim=48,
        use_relative_position_bias=True, use_fpn=True, out_indices=(0, 1, 2, 2),  # block 3 is after the last tap
    )
    return backbone, keras_beit.BEiTImageSegmenter(backbone, num_classes=5, auxiliary_channels=16)


def test_freezing_the_backbone_leaves_only_the_segmentation_heads_trainable():
    # The pyramid belongs to the backbone; what stays trainable are transformers' two heads.
    reference = transformers.BeitForSemanticSegmentation(
        transformers.BeitConfig(**{**SEGMENTATION, "hidden_size": 32, "num_labels": 5})
    )
    expected = sum(p.numel() for head in (reference.decode_head, reference.auxiliary_head) for p in head.parameters())
    backbone, segmenter = _segmenter_parts()
    segmenter.backbone.trainable = False
    assert sum(int(np.prod(v.shape)) for v in segmenter.trainable_weights) == expected
    assert not any(v.trainable for v in backbone.fpn.weights)


@torch_only
def test_torch_parameters_are_exactly_the_models_weights():
    backbone, segmenter = _segmenter_parts()
    classifier = keras_beit.BEiTImageClassifier(backbone, num_classes=3)
    for model in (backbone, segmenter, classifier):
        parameters = {id(p) for p in model.parameters()}
        assert parameters == {id(v.value) for v in model.weights}, type(model).__name__


@torch_only
def test_a_torch_optimizer_step_moves_every_parameter_by_transformers_gradient(tmp_path):
    reference = save_model(transformers.BeitForImageClassification, tmp_path, use_relative_position_bias=True)
    images, labels = _images(32), np.array([1, 3])
    gradients, _ = _reference_step(reference, pixel_values=to_torch(images), labels=torch.from_numpy(labels))
    classifier = keras_beit.BEiTImageClassifier.from_preset(str(tmp_path))
    optimizer = torch.optim.SGD(classifier.parameters(), lr=1.0)
    before = {id(v): _numpy(v) for v in classifier.variables}
    loss = torch.nn.functional.cross_entropy(classifier(torch.from_numpy(images), training=True), torch.tensor(labels))
    loss.backward()
    optimizer.step()
    after = {id(v): _numpy(v) for v in classifier.variables}
    _assert_gradients_match(classifier, gradients, before, after)


@torch_only
def test_distributed_data_parallel_trains_a_segmenter_on_one_process(tmp_path):
    import torch.distributed as dist

    _, segmenter = _segmenter_parts()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        # find_unused_parameters: block 3 and the auxiliary head take no part in the logits.
        model = torch.nn.parallel.DistributedDataParallel(segmenter, find_unused_parameters=True)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        logits = model(torch.from_numpy(_images(32)), return_auxiliary=False, training=True)
        before = _numpy(segmenter.backbone.blocks[0].fc1.kernel)
        logits.square().mean().backward()
        optimizer.step()
    finally:
        dist.destroy_process_group()
    assert not np.allclose(_numpy(segmenter.backbone.blocks[0].fc1.kernel), before)


@torch_only
def test_a_torch_state_dict_carries_the_weights_to_another_model():
    backbone, _ = _segmenter_parts()
    source = keras_beit.BEiTImageClassifier(backbone, num_classes=3)
    target = keras_beit.BEiTImageClassifier(_segmenter_parts()[0], num_classes=3)
    images = _images(32)
    assert not np.allclose(_numpy(target(images)), _numpy(source(images)))
    target.load_state_dict(source.state_dict())
    np.testing.assert_array_equal(_numpy(target(images)), _numpy(source(images)))

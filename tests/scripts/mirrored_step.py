"""One training step of a tiny BEiT classifier and segmenter, on one CPU or
mirrored over two logical CPUs with tf.distribute, printing the results as JSON.

    KERAS_BACKEND=tensorflow python mirrored_step.py single|mirrored

The segmenter's batch is two copies of the same four images, so each replica's
BatchNorm sees the statistics one device sees for the whole batch.
"""

import json
import sys

import tensorflow as tf

mode = sys.argv[1]
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_beit  # noqa: E402

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if mode == "mirrored" else tf.distribute.get_strategy()
rng = np.random.default_rng(0)


def randomized(model):
    for variable in model.weights:
        if "moving_variance" not in variable.path:
            variable.assign(rng.normal(scale=0.2, size=variable.shape).astype("float32"))
    return model


def values(model):
    return {v.path: keras.ops.convert_to_numpy(v).tolist() for v in model.weights}


with strategy.scope():
    classifier = randomized(keras_beit.BEiTImageClassifier(
        keras_beit.BEiTBackbone(
            image_shape=(16, 16, 3), patch_size=8, hidden_dim=16, num_layers=2, num_heads=4,
            intermediate_dim=32, use_relative_position_bias=True,
        ),
        num_classes=3,
    ))
    classifier.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    segmenter = randomized(keras_beit.BEiTImageSegmenter(
        keras_beit.BEiTBackbone(
            image_shape=(32, 32, 3), patch_size=8, hidden_dim=16, num_layers=4, num_heads=4,
            intermediate_dim=32, use_relative_position_bias=True, use_fpn=True, out_indices=(0, 1, 2, 3),
        ),
        num_classes=3, auxiliary_channels=8,
    ))
    segmenter.compile(optimizer=keras.optimizers.SGD(0.1))

images, labels = rng.normal(size=(8, 16, 16, 3)).astype("float32"), rng.integers(0, 3, size=8)
classifier_loss = classifier.fit(images, labels, batch_size=8, verbose=0, shuffle=False).history["loss"][0]
half_images, half_labels = rng.normal(size=(4, 32, 32, 3)).astype("float32"), rng.integers(0, 3, size=(4, 32, 32))
half_labels[:, :5] = 255
segmenter_loss = segmenter.fit(
    np.concatenate([half_images] * 2), np.concatenate([half_labels] * 2), batch_size=8, verbose=0, shuffle=False
).history["loss"][0]
print(json.dumps({
    "replicas": strategy.num_replicas_in_sync,
    "classifier": {"loss": classifier_loss, "weights": values(classifier)},
    "segmenter": {"loss": segmenter_loss, "weights": values(segmenter)},
}))

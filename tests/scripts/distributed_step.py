"""Runs one forward pass and one training step of a tiny BEiT classifier, printing
the results as JSON, on one device or under a keras.distribution strategy.

    python distributed_step.py single|data|model
Run with KERAS_BACKEND=jax and XLA_FLAGS=--xla_force_host_platform_device_count=8.
"""

import json
import sys

import keras
import numpy as np

import keras_beit

mode = sys.argv[1]
if mode != "single":
    devices = keras.distribution.list_devices()
    if mode == "data":
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    else:
        mesh = keras.distribution.DeviceMesh((2, 4), ("batch", "model"), devices)
        layout_map = keras_beit.BEiTBackbone.get_layout_map(mesh)
        keras.distribution.set_distribution(keras.distribution.ModelParallel(layout_map=layout_map))

keras.utils.set_random_seed(0)
backbone = keras_beit.BEiTBackbone(
    image_shape=(16, 16, 3), patch_size=8, hidden_dim=16, num_layers=2, num_heads=4,
    intermediate_dim=32, use_relative_position_bias=True,
)
classifier = keras_beit.BEiTImageClassifier(backbone, num_classes=3)
rng = np.random.default_rng(0)
for variable in classifier.weights:
    variable.assign(rng.normal(scale=0.2, size=variable.shape).astype("float32"))
images = rng.normal(size=(8, 16, 16, 3)).astype("float32")
labels = rng.integers(0, 3, size=8)
logits = keras.ops.convert_to_numpy(classifier.predict(images, batch_size=8, verbose=0))
classifier.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
classifier.fit(images, labels, batch_size=8, epochs=1, verbose=0, shuffle=False)
kernel = classifier.backbone.blocks[0].attention.query.kernel
print(json.dumps({
    "logits": logits.tolist(),
    "query_kernel": keras.ops.convert_to_numpy(kernel).tolist(),
    "sharding": str(getattr(kernel.value, "sharding", "")),
    "devices": len(keras.distribution.list_devices()),
}))

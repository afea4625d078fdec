"""Quantization of keras_beit task models."""


def quantize_backbone(self, mode=None, config=None, filters=None, **kwargs):
    """Quantizes the backbone's layers (as `keras.Model.quantize`); the task's head stays in float.

    keras-hub rebuilds a task's head from constructor arguments that carry no
    quantized policy, so a quantized head could be saved but not reloaded.
    Walking only the backbone also leaves the unbuilt preprocessing layers alone.
    """
    self.backbone.quantize(mode, config=config, filters=filters, **kwargs)
    self.train_function = self.test_function = self.predict_function = None

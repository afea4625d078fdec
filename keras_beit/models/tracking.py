"""Keras' layer tracking, finished after keras-hub has built a model."""

import keras


def finish_tracking(model, **side_layers):
    """Tracks what keras-hub's Backbone and Task leave untracked on torch.

    While they are built, keras-hub's Backbone and Task skip Keras' attribute
    tracking on the torch backend, counting on the functional graph to hold
    every layer. Two things go missing there:
    - layers outside the graph (`side_layers`, set again here): their weights
      are absent from `variables`, and `trainable = False` does not reach them;
    - the torch parameter dict Keras fills when the model is built, which
      torch then never registers: `model.parameters()` is empty (keras-hub
      0.32's own models too), so torch optimizers, gradient clipping and
      DistributedDataParallel see nothing. It is filled again here.
    """
    for name, layer in side_layers.items():
        setattr(model, name, layer)
    if keras.backend.backend() == "torch":
        model._track_variables()

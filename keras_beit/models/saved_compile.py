"""Restoring a task's compile() from a saved .keras file."""

import keras


def compile_from_saved_config(self, config):
    """Compiles the loaded model as it was saved, so its optimizer state reloads.

    Keras skips this step for models that override `compile()`, as keras-hub
    tasks do: a loaded .keras file kept the task's default optimizer (Adam at
    5e-5), and Keras dropped the saved optimizer's state with a warning, so
    training resumed from a checkpoint restarted at step 0 at another
    learning rate.
    """
    self.compile(**keras.saving.deserialize_keras_object(config))
    if self.built:
        # Before the weights load, which restore the optimizer's variables.
        self.optimizer.build(self.trainable_variables)

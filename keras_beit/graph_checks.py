"""Checks and casts inside TensorFlow graphs: the one place keras_beit touches a backend directly.

jax and torch always run with concrete shapes, and arrays reach us as numpy or
backend tensors, so plain Python checks refuse bad input there. TensorFlow
differs in two places Keras and keras-hub put us in: a tf.data pipeline
(where keras-hub preprocesses on every backend) and a tensorflow function
traced with an unknown image size. There values are symbolic, and only an
assertion in the graph can refuse them.
"""


def is_tf_tensor(value):
    return type(value).__module__.startswith("tensorflow")


def checked(value, condition, message, *data):
    """`value`, once the graph has asserted `condition` (printing `message` and `data` if it fails)."""
    import tensorflow as tf

    check = tf.debugging.Assert(tf.reduce_all(condition), [message, *data])
    with tf.control_dependencies([check]):
        return tf.identity(value)


def cast(value, dtype):
    import tensorflow as tf

    return tf.cast(value, dtype)


def checked_labels(labels, num_classes, ignore_index, message):
    """tf `labels`, once the graph has asserted each is a class index or `ignore_index`."""
    import tensorflow as tf

    values = tf.cast(labels, "int64")
    valid = tf.logical_and(values >= 0, values < num_classes)
    if ignore_index is not None:
        valid = tf.logical_or(valid, tf.equal(values, ignore_index))
    return checked(labels, valid, message + " Received:", tf.boolean_mask(values, tf.logical_not(valid))[:10])

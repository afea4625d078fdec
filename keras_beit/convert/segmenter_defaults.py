"""Segmentation settings a checkpoint may leave out, from the official ADE20K configs."""

# The official configs (original_and_timm.md 1.7), by encoder depth.
DEFAULT_OUT_INDICES = {12: (3, 5, 7, 11), 24: (7, 11, 15, 23)}
DEFAULT_POOL_SCALES = (1, 2, 3, 6)


def new_segmenter_arguments(kwargs, depth, preset):
    """`kwargs` for a segmenter with a new pyramid and new heads on a checkpoint
    that has neither (classification or pre-training weights), tapping the
    blocks the official configs tap at this depth unless told otherwise."""
    if "num_classes" not in kwargs:
        raise ValueError(f"{preset} has no segmentation head; pass num_classes to add a new head.")
    kwargs.setdefault("use_fpn", True)
    kwargs.setdefault("out_indices", DEFAULT_OUT_INDICES.get(depth))
    if kwargs["out_indices"] is None:
        raise ValueError(
            f"{preset} has {depth} blocks, a depth with no official segmentation tap points; "
            "pass out_indices (four 0-based block indices)."
        )
    return kwargs

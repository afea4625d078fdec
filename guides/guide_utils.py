"""Shared by the guides: choosing weights honestly, and offline fallbacks."""

import tempfile

OFFLINE_HELP = (
    "fast offline mode: use keras_beit's bundled digits preset or a tiny checkpoint written "
    "locally, instead of the official weights (which need the Hugging Face hub)"
)


def load_or_explain(cls, preset, fallback=None, **kwargs):
    """`cls.from_preset(preset)`, or the `fallback` when the hub cannot be reached.

    Returns (model, the preset actually used). The switch is always printed:
    weights never change silently.
    """
    try:
        return cls.from_preset(preset, **kwargs), preset
    except Exception as error:  # no network, no cached copy
        if fallback is None:
            raise
        print(f"Could not load {preset!r} ({type(error).__name__}: {str(error).splitlines()[0][:160]}).")
        print(f"Falling back to {fallback!r}.")
        return cls.from_preset(fallback, **kwargs), fallback


def tiny_transformers_checkpoint(model_cls_name, seed=0, **config):
    """A small random transformers BEiT checkpoint in the hub's layout, for offline runs."""
    import torch
    import transformers

    defaults = dict(
        image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=64, drop_path_rate=0.0, use_relative_position_bias=True,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls_name)(transformers.BeitConfig(**{**defaults, **config})).eval()
    directory = tempfile.mkdtemp(prefix="tiny_beit_")
    model.save_pretrained(directory)
    return directory, model

"""Shared by the guides: choosing weights honestly, and offline fallbacks."""


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
        reason = str(error).splitlines()[0].split(". ")[0][:160]  # the first sentence
        print(f"Could not load {preset!r} ({type(error).__name__}: {reason}).")
        print(f"Falling back to {fallback!r}.")
        return cls.from_preset(fallback, **kwargs), fallback


def save_line_chart(path, series, title, width=640, height=400):
    """Draws {name: values} as a line chart PNG with Pillow (no plotting library needed)."""
    from PIL import Image
    from PIL import ImageDraw

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 60, width - 20, 40, height - 50
    values = [v for vals in series.values() for v in vals]
    low, high = min(values), max(values)
    high = high if high > low else low + 1
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text((left, 10), title, fill="black")
    for k in range(5):
        level = low + (high - low) * k / 4
        y = bottom - (bottom - top) * k / 4
        draw.line([left - 5, y, left, y], fill="black")
        draw.text((5, y - 6), f"{level:.2f}", fill="black")
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    for index, ((name, vals), colour) in enumerate(zip(series.items(), colours)):
        steps = max(len(vals) - 1, 1)
        points = [
            (left + (right - left) * i / steps, bottom - (bottom - top) * (v - low) / (high - low))
            for i, v in enumerate(vals)
        ]
        draw.line(points, fill=colour, width=3)
        legend_y = top + 60 + 18 * index
        draw.line([right - 190, legend_y + 6, right - 165, legend_y + 6], fill=colour, width=3)
        draw.text((right - 158, legend_y), name, fill=colour)
    draw.text((left + (right - left) // 2 - 20, bottom + 15), "epoch", fill="black")
    image.save(path)
    return path

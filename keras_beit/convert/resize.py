"""Resizing a checkpoint's position tables once, on load, to a new patch grid.

A BEiT checkpoint's relative position bias tables (and DiT's absolute
position embeddings) belong to the patch grid it was trained on. Loading it
at another resolution with `from_preset(..., image_shape=(H, W, 3))` builds
the model with `window_size` = the new grid and resizes the tables here,
before assignment, instead of on every call.

Relative tables `((2h - 1)(2w - 1) + 3, heads)`: the offset grid is resized,
the three CLS rows are kept as they are. Methods (`position_resize=`):

- "geometric" (the original's): the fine-tuning loader of microsoft/unilm
  (`beit/run_class_finetuning.py`, and the segmentation loader) places the
  source offsets on a geometrically spaced grid, whose ratio q is found by
  bisection so that the outermost source offset reaches the new edge, and
  interpolates each head with a bicubic spline through those points
  (`scipy.interpolate.interp2d(kind="cubic")`, removed in SciPy 1.14; the
  same FITPACK interpolating spline is `RectBivariateSpline(kx=3, ky=3, s=0)`).
  Targets outside the source range are clamped to its edge, as FITPACK does.
  The original handles square grids only; here each axis gets its own
  progression (as timm does), which is the original on a square grid.
- "geometric_linear" (timm's default): the same geometric grid, interpolated
  piecewise-linearly (timm's `resize_rel_pos_bias_table`).
- "bilinear" (transformers'): a uniform bilinear resize of the offset grid,
  `F.interpolate(mode="bilinear", align_corners=False)`, exactly what
  keras_beit's layers do at call time for a grid they were not built for.

Absolute position embeddings `(1, 1 + h * w, dim)` are resized with
PyTorch's bicubic kernel (`align_corners=False`), the CLS position kept, as
both the original and transformers do; timm passes `antialias=True` as well
(`resample_abs_pos_embed`), which is another filter (a = -0.5, taps cut at
the border and renormalised, widened when shrinking), so timm files get that.
"""

import numpy as np

POSITION_RESIZE_METHODS = ("geometric", "geometric_linear", "bilinear")
_NUM_CLS_ROWS = 3
TABLE_SUFFIX = "relative_position_bias_table"


def _check_method(method):
    if method not in POSITION_RESIZE_METHODS:
        raise ValueError(
            f"position_resize must be one of {POSITION_RESIZE_METHODS} or None; received {method!r}."
        )


def geometric_ratio(src_side, dst_side):
    """The original's ratio q: bisection on [1.01, 1.5] until the bracket is below 1e-6.

    q is the last midpoint tried; 1 + q + ... + q**(src_side // 2 - 1) is
    driven towards dst_side // 2 (it cannot leave the bracket, so a grid that
    needs q > 1.5 gets q close to 1.5).
    """
    terms = src_side // 2
    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        total = (1.0 - q**terms) / (1.0 - q)
        if total > dst_side // 2:
            right = q
        else:
            left = q
    return q


def geometric_coordinates(src_side, dst_side):
    """(source positions, target positions) of one axis of the offset grid.

    Source offsets sit at 0, +-1, +-(1 + q), +-(1 + q + q**2), ...; targets are
    the integers -(dst_side // 2) ... dst_side // 2.
    """
    q = geometric_ratio(src_side, dst_side)
    distances, position = [], 1.0
    for k in range(src_side // 2):
        distances.append(position)
        position += q ** (k + 1)
    distances = np.asarray(distances, dtype="float64")
    source = np.concatenate([-distances[::-1], [0.0], distances])
    half = dst_side // 2
    target = np.arange(-half, half + 1, dtype="float64")
    return source, target


def _offset_sides(window):
    return 2 * int(window[0]) - 1, 2 * int(window[1]) - 1


def _split_table(table, src_window):
    src_rows, src_cols = _offset_sides(src_window)
    table = np.asarray(table)
    expected = src_rows * src_cols + _NUM_CLS_ROWS
    if table.ndim != 2 or table.shape[0] != expected:
        raise ValueError(
            f"A relative position bias table for a {tuple(src_window)} patch grid has "
            f"{expected} rows; received shape {table.shape}."
        )
    offsets = table[: src_rows * src_cols].reshape(src_rows, src_cols, table.shape[1])
    return offsets, table[src_rows * src_cols:]


def _geometric_grid(offsets, dst_window, linear):
    from scipy.interpolate import RectBivariateSpline
    from scipy.interpolate import RegularGridInterpolator

    src_rows, src_cols = offsets.shape[:2]
    dst_rows, dst_cols = _offset_sides(dst_window)
    y, dy = geometric_coordinates(src_rows, dst_rows)
    x, dx = geometric_coordinates(src_cols, dst_cols)
    if not linear and min(src_rows, src_cols) < 4:
        raise ValueError(
            "The geometric cubic resize needs a source table of at least 4 x 4 offsets "
            f"(a 2 x 2 patch grid); this one has {src_rows} x {src_cols}. Use "
            'position_resize="bilinear".'
        )
    heads = []
    for h in range(offsets.shape[-1]):
        z = offsets[..., h].astype("float64")
        if linear:
            points = np.stack(np.meshgrid(np.clip(dy, y[0], y[-1]), np.clip(dx, x[0], x[-1]), indexing="ij"), -1)
            heads.append(RegularGridInterpolator((y, x), z, method="linear")(points))
        else:
            heads.append(RectBivariateSpline(y, x, z, kx=3, ky=3, s=0)(dy, dx))
    return np.stack(heads, axis=-1)


def _uniform_grid(grid, out_rows, out_cols, method):
    """A (rows, cols, channels) grid resized like PyTorch's F.interpolate (float32)."""
    import keras

    from keras_beit.layers.interpolation import resize_grid

    resized = resize_grid(keras.ops.convert_to_tensor(grid.astype("float32")), out_rows, out_cols, method)
    return keras.ops.convert_to_numpy(resized)


def resize_relative_position_table(table, src_window, dst_window, method="geometric"):
    """A `((2h - 1)(2w - 1) + 3, heads)` table for `src_window` resized to `dst_window`."""
    _check_method(method)
    table = np.asarray(table)  # read once, when it is a stored tensor
    offsets, cls_rows = _split_table(table, src_window)
    if tuple(src_window) == tuple(dst_window):
        return table
    if method == "bilinear":
        resized = _uniform_grid(offsets, *_offset_sides(dst_window), "bilinear")
    else:
        resized = _geometric_grid(offsets, dst_window, linear=method == "geometric_linear")
    resized = resized.reshape(-1, offsets.shape[-1]).astype(table.dtype)
    return np.concatenate([resized, cls_rows], axis=0)


def _antialiased_cubic(x):
    x = np.abs(x)
    a = -0.5  # PyTorch's antialiased bicubic takes PIL's coefficient
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def antialiased_bicubic_matrix(in_size, out_size):
    """(out_size, in_size) weights of `F.interpolate(mode="bicubic", antialias=True)`.

    PyTorch's (and PIL's) separable resampling: each output pixel's taps
    are the input pixels within the filter's support around its centre,
    cut at the border, weighted and renormalised to sum to one.
    """
    scale = in_size / out_size
    support = 2.0 * max(scale, 1.0)
    stretch = 1.0 / scale if scale >= 1.0 else 1.0
    matrix = np.zeros((out_size, in_size))
    for i in range(out_size):
        center = scale * (i + 0.5)
        first = max(int(center - support + 0.5), 0)
        last = min(int(center + support + 0.5), in_size)
        taps = np.arange(first, last)
        weights = _antialiased_cubic((taps - center + 0.5) * stretch)
        matrix[i, first:last] = weights / weights.sum()
    return matrix


def resize_position_embeddings(embeddings, src_window, dst_window, antialias=False):
    """`(1, 1 + h * w, dim)` absolute positions resized with PyTorch's bicubic; CLS kept.

    `antialias` selects `F.interpolate(..., antialias=True)`, as timm resizes.
    """
    embeddings = np.asarray(embeddings)
    src_h, src_w = (int(s) for s in src_window)
    if embeddings.shape[1] != 1 + src_h * src_w:
        raise ValueError(
            f"Position embeddings for a {tuple(src_window)} patch grid have {1 + src_h * src_w} "
            f"positions; received shape {embeddings.shape}."
        )
    if tuple(src_window) == tuple(dst_window):
        return embeddings
    grid = embeddings[0, 1:].reshape(src_h, src_w, -1)
    dst_h, dst_w = int(dst_window[0]), int(dst_window[1])
    if antialias:
        rows, cols = antialiased_bicubic_matrix(src_h, dst_h), antialiased_bicubic_matrix(src_w, dst_w)
        resized = np.einsum("oh,hwc,pw->opc", rows, grid.astype("float64"), cols)
    else:
        resized = _uniform_grid(grid, dst_h, dst_w, "bicubic")
    resized = resized.reshape(1, -1, embeddings.shape[-1]).astype(embeddings.dtype)
    return np.concatenate([embeddings[:, :1], resized], axis=1)


def resize_state(state, src_window, dst_window, method, position_keys=(), antialias_positions=False):
    """A copy of `state` with every relative table and the named position embeddings resized.

    Tables are the keys ending in "relative_position_bias_table";
    `position_keys` names the absolute position embeddings (resized with
    `antialias=antialias_positions`). `method=None` returns `state` unchanged.
    """
    if method is None or tuple(src_window) == tuple(dst_window):
        return state
    _check_method(method)
    resized = dict(state)
    for key, value in state.items():
        if key.endswith(TABLE_SUFFIX):
            resized[key] = resize_relative_position_table(value, src_window, dst_window, method)
        elif key in position_keys:
            resized[key] = resize_position_embeddings(value, src_window, dst_window, antialias_positions)
    return resized


def requested_window(kwargs, patch_size):
    """The patch grid of a static `image_shape` in from_preset kwargs, or None.

    None when no image_shape is given, when its height or width is None,
    or when the caller fixed `window_size` itself.
    """
    image_shape = kwargs.get("image_shape")
    if image_shape is None or kwargs.get("window_size") is not None:
        return None
    channels_first = kwargs.get("data_format") == "channels_first"
    height, width = tuple(image_shape[1:3]) if channels_first else tuple(image_shape[:2])
    if height is None or width is None:
        return None
    return (int(height) // patch_size, int(width) // patch_size)


def plan_resize(kwargs, checkpoint_window, patch_size, default_method):
    """Pops `position_resize` from from_preset kwargs; returns (kwargs, method).

    With a static `image_shape` whose patch grid differs from the
    checkpoint's and a method (not None), `window_size` is set to the new
    grid, so the model is built for it and the loader resizes the tables
    with `resize_state(..., method)`. With `position_resize=None` the tables
    stay at the checkpoint's grid and the layers resize them bilinearly at
    call time, for any input size.
    """
    kwargs = dict(kwargs)
    method = kwargs.pop("position_resize", default_method)
    if method is not None:
        _check_method(method)
    window = requested_window(kwargs, patch_size)
    if method is not None and window is not None and window != tuple(checkpoint_window):
        kwargs["window_size"] = window
    return kwargs, method

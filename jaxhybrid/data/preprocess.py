"""Host-side image preprocessing in pure numpy, vectorised over the batch.

All functions take images with the spatial and channel axes last,
`[..., H, W, C]` (usually `[N, H, W, C]`), and never loop over examples.

  to_float        uint8 -> float32 in [0, 1]
  pad_to_frame    zero-pad, centred, to a larger frame (thesis: 28x28 -> 32x32)
  resize_images   bilinear resize (antialiased when shrinking; equals
                  `jax.image.resize(..., method="linear")`)
  adapt_channels  1 -> 3 by repetition, 3 -> 1 by ITU-R 601 luminance
  adapt_to        bring an OOD set of another shape to a model's input shape
"""

from __future__ import annotations

import numpy as np

# ITU-R BT.601 luma weights (as in PIL's "L" conversion).
LUMINANCE_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)

ADAPT_MODES = ("pad_or_resize", "pad", "resize")


def _hw(frame: int | tuple[int, int] | tuple[int, int, int]) -> tuple[int, int]:
    if isinstance(frame, (int, np.integer)):
        return int(frame), int(frame)
    frame = tuple(int(f) for f in frame)
    if len(frame) not in (2, 3):
        raise ValueError(f"frame must be an int, (H, W) or (H, W, C), got {frame}")
    return frame[0], frame[1]


def _check_nhwc(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim < 3:
        raise ValueError(f"images must be [..., H, W, C], got shape {images.shape}")
    return images


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 [..., H, W, C] -> float32 [..., H, W, C] in [0, 1] (divides by 255)."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"to_float expects uint8 images, got {images.dtype}")
    return images.astype(np.float32) * np.float32(1.0 / 255.0)


def pad_to_frame(images: np.ndarray, frame: int | tuple) -> np.ndarray:
    """Zero-pads `[..., H, W, C]` to `[..., FH, FW, C]`, centred.

    An odd margin puts the extra row/column at the bottom/right. Raises ValueError
    if the image is larger than the frame. Keeps the dtype.
    """
    images = _check_nhwc(images)
    h, w = images.shape[-3:-1]
    fh, fw = _hw(frame)
    if h > fh or w > fw:
        raise ValueError(f"image {h}x{w} is larger than the frame {fh}x{fw}")
    top, left = (fh - h) // 2, (fw - w) // 2
    pad = [(0, 0)] * (images.ndim - 3) + [(top, fh - h - top), (left, fw - w - left), (0, 0)]
    return np.pad(images, pad)


def _linear_weights(in_size: int, out_size: int) -> np.ndarray:
    """Resampling matrix [out_size, in_size] of (antialiased) linear interpolation.

    Half-pixel centres; when shrinking, the triangle kernel is widened by
    in/out so that it low-pass filters. Rows sum to 1. Mirrors jax.image.resize.
    """
    scale = out_size / in_size
    kernel_scale = max(1.0 / scale, 1.0)
    sample = (np.arange(out_size, dtype=np.float64) + 0.5) / scale - 0.5
    dist = np.abs(sample[:, None] - np.arange(in_size, dtype=np.float64)[None, :])
    weights = np.maximum(0.0, 1.0 - dist / kernel_scale)
    return weights / weights.sum(axis=1, keepdims=True)


def resize_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of float `[..., H, W, C]` to `[..., size[0], size[1], C]`.

    Separable: one [out, in] weight matrix per axis, applied with einsum.
    Returns float32.
    """
    images = _check_nhwc(images)
    if not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"resize_images expects float images, got {images.dtype}")
    h, w = images.shape[-3:-1]
    oh, ow = _hw(size)
    if (h, w) == (oh, ow):
        return images.astype(np.float32, copy=False)
    wh = _linear_weights(h, oh).astype(np.float32)
    ww = _linear_weights(w, ow).astype(np.float32)
    return np.einsum("oh,...hwc,pw->...opc", wh, images.astype(np.float32), ww, optimize=True)


def adapt_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """`[..., H, W, C]` -> `[..., H, W, channels]`.

    1 -> 3 repeats the grey channel; 3 -> 1 takes the luminance
    0.299 R + 0.587 G + 0.114 B (uint8 input is rounded back to uint8); equal
    counts are returned unchanged. Other conversions raise ValueError.
    """
    images = _check_nhwc(images)
    c = images.shape[-1]
    if c == channels:
        return images
    if c == 1 and channels == 3:
        return np.repeat(images, 3, axis=-1)
    if c == 3 and channels == 1:
        grey = images.astype(np.float32) @ LUMINANCE_WEIGHTS
        if images.dtype == np.uint8:
            grey = np.clip(np.round(grey), 0, 255).astype(np.uint8)
        else:
            grey = grey.astype(images.dtype, copy=False)
        return grey[..., None]
    raise ValueError(
        f"cannot convert {c} channels to {channels}; supported: 1->3, 3->1 and identity"
    )


def adapt_to(
    images: np.ndarray, target_hwc: tuple[int, int, int], mode: str = "pad_or_resize"
) -> tuple[np.ndarray, str]:
    """Brings float images `[N, H, W, C]` to `target_hwc`; returns (images, rule).

    Rule of the default mode "pad_or_resize": if the image fits in the target
    frame (H <= TH and W <= TW), zero-pad it, centred; otherwise resize it
    bilinearly to (TH, TW) (the aspect ratio follows the target). Then adapt the
    channels (`adapt_channels`). mode="pad" always pads (error if too large);
    mode="resize" always resizes. `rule` is a one-line description for reports.
    """
    if mode not in ADAPT_MODES:
        raise ValueError(f"unknown mode {mode!r}; valid choices: {', '.join(ADAPT_MODES)}")
    images = _check_nhwc(images)
    if not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"adapt_to expects float images, got {images.dtype}")
    th, tw, tc = (int(d) for d in target_hwc)
    h, w, c = images.shape[-3:]
    steps = []
    fits = h <= th and w <= tw
    if (h, w) != (th, tw):
        if mode == "pad" or (mode == "pad_or_resize" and fits):
            images = pad_to_frame(images, (th, tw))
            steps.append(f"zero-pad centred to {th}x{tw}")
        else:
            images = resize_images(images, (th, tw))
            steps.append(f"bilinear resize to {th}x{tw}")
    if c != tc:
        images = adapt_channels(images, tc)
        steps.append("repeat grey channel" if c == 1 else "luminance 0.299R+0.587G+0.114B")
    rule = f"{h}x{w}x{c} -> {th}x{tw}x{tc}: " + (", then ".join(steps) or "unchanged")
    return images.astype(np.float32, copy=False), rule

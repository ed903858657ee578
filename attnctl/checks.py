"""One place for argument checks: small validators shared by the pipelines, the batch CLI and the UI.

Every check returns the normalised value or raises ``ValueError`` naming the argument, the value given and what
was expected. Three layers use them:

* *kinds* (:class:`Integer`, :class:`Number`, :class:`Text`, ...): one validator per kind of value. A method's
  spec (:mod:`attnctl.spec`) declares each parameter with a kind, so the CLI's job fields, the UI's controls
  and the docs read one limit from one place.
* *media*: :func:`rgb_image`, :func:`mask_array` and :func:`video_frames` accept images of every mode and depth,
  convert what has one obvious meaning (16-bit scaled to 8 bits, alpha dropped, grey to RGB) and refuse the
  rest (float arrays outside ``[0, 1]``, NaN, negative values, frames too small for the model).
* :func:`check_call`: the one call at the top of every attnctl pipeline's ``__call__``; it checks every
  argument it knows by name (:data:`PIPELINE_ARGUMENTS`) before the first model call.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Seeds are non-negative and below 2**63 so that ``seed + sample`` stays inside ``torch.Generator``'s range.
MAX_SEED = 2**63 - 1
#: Upper bounds that keep a typo (``steps=5000000``) from running for days; the UI has its own, lower caps.
MAX_STEPS = 10_000
MAX_GUIDANCE = 100.0
MAX_BATCH = 1_000
MAX_SIDE = 8_192  # pixels per side of any image or video frame attnctl generates (or reads)


def fail(name: str, value: Any, expected: str) -> ValueError:
    """The one shape of every message: ``name=value is invalid: expected ...``."""
    try:
        shown = repr(value)
    except RecursionError:  # a structure nested deeper than Python's recursion limit
        shown = f"<{type(value).__name__} nested too deeply to show>"
    if len(shown) > 120:
        shown = shown[:117] + "..."
    return ValueError(f"{name}={shown} is invalid: expected {expected}")


def _unicode(value: Any) -> bool:
    """A string that is valid Unicode (no lone surrogates, which JSON's ``\\ud800`` can smuggle in)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _real(value: Any) -> bool:
    """A real number that is not a bool (numpy scalars included)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _whole(value: Any) -> bool:
    """An integer, or a finite float with no fractional part (``3.0``, as web forms send)."""
    if isinstance(value, numbers.Integral):
        return not isinstance(value, (bool, np.bool_))
    return _real(value) and math.isfinite(value) and float(value).is_integer()


# ---------------------------------------------------------------------------------------------------- kinds


@dataclass(frozen=True)
class Integer:
    """A whole number in ``[low, high]``; a float with no fractional part (``3.0``, as web forms send) counts."""

    low: int
    high: int

    def __call__(self, name: str, value: Any) -> int:
        if not _whole(value) or not self.low <= int(value) <= self.high:
            raise fail(name, value, f"a whole number from {self.low} to {self.high}")
        return int(value)

    def describe(self) -> str:
        return f"int {self.low}..{self.high}"


@dataclass(frozen=True)
class Number:
    """A finite number in ``[low, high]`` (``(low, high]`` with ``open_low``)."""

    low: float
    high: float
    open_low: bool = False

    def __call__(self, name: str, value: Any) -> float:
        ok = _real(value) and math.isfinite(value) and self.low <= value <= self.high
        if not ok or (self.open_low and value == self.low):
            raise fail(name, value, f"a finite number in {self.describe().removeprefix('number ')}")
        return float(value)

    def describe(self) -> str:
        return f"number {'(' if self.open_low else '['}{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class Text:
    """A string; non-empty (after stripping) unless ``allow_empty``."""

    allow_empty: bool = False

    def __call__(self, name: str, value: Any) -> str:
        if not isinstance(value, str) or not _unicode(value) or (not self.allow_empty and not value.strip()):
            raise fail(name, value, "a string" if self.allow_empty else "a non-empty string")
        return value

    def describe(self) -> str:
        return "text"


@dataclass(frozen=True)
class Choice:
    """One of ``options`` (``None`` among them where it means "off")."""

    options: tuple[Any, ...]

    def __call__(self, name: str, value: Any) -> Any:
        if not any(value is option or (type(value) is type(option) and value == option) for option in self.options):
            raise fail(name, value, "one of " + ", ".join("null" if o is None else repr(o) for o in self.options))
        return value

    def describe(self) -> str:
        return ", ".join("null" if o is None else f'"{o}"' if isinstance(o, str) else str(o) for o in self.options)


@dataclass(frozen=True)
class Flag:
    """``True`` or ``False`` (not 0/1, not "yes")."""

    def __call__(self, name: str, value: Any) -> bool:
        if not isinstance(value, (bool, np.bool_)):
            raise fail(name, value, "true or false")
        return bool(value)

    def describe(self) -> str:
        return "bool"


@dataclass(frozen=True)
class TextList:
    """A list of non-empty strings; a lone string is refused (it would be read character by character)."""

    example: str = '["a red car", "a blue bench"]'

    def __call__(self, name: str, value: Any) -> list[str]:
        return text_list(name, value, self.example)

    def describe(self) -> str:
        return "list of text"


@dataclass(frozen=True)
class NumberList:
    """A non-empty list of finite numbers above ``low``."""

    low: float

    def __call__(self, name: str, value: Any) -> list[float]:
        ok = isinstance(value, (list, tuple)) and bool(value) and all(
            _real(v) and math.isfinite(v) and v > self.low for v in value)
        if not ok:
            raise fail(name, value, f"a non-empty list of numbers above {self.low:g}, e.g. [1.0, 2.0]")
        return [float(v) for v in value]

    def describe(self) -> str:
        return f"list of numbers > {self.low:g}"


@dataclass(frozen=True)
class Size:
    """A size in pixels: an int (square) or ``"WIDTHxHEIGHT"``, both multiples of ``multiple``, each side at most
    :data:`MAX_SIDE`; normalised to ``(width, height)``."""

    multiple: int = 8

    def __call__(self, name: str, value: Any) -> tuple[int, int]:
        expected = (f'a size in pixels, 512 (square) or "WIDTHxHEIGHT" such as "768x512", with sides that are '
                    f"multiples of {self.multiple} from {self.multiple} to {MAX_SIDE}")
        if _whole(value):
            width = height = int(value)
        elif isinstance(value, str) and value.strip().lower().count("x") == 1:
            parts = value.strip().lower().split("x")
            if not all(part.strip().isdecimal() for part in parts):
                raise fail(name, value, expected)
            width, height = (int(part) for part in parts)
        else:
            raise fail(name, value, expected)
        if not all(self.multiple <= side <= MAX_SIDE and side % self.multiple == 0 for side in (width, height)):
            raise fail(name, value, expected)
        return width, height

    def describe(self) -> str:
        return f'512 or "WxH" (multiples of {self.multiple})'


@dataclass(frozen=True)
class Box:
    """``[x0, y0, x1, y1]``: four finite numbers with ``0 <= x0 < x1`` and ``0 <= y0 < y1``."""

    def __call__(self, name: str, value: Any) -> tuple[float, float, float, float]:
        return box(name, value)

    def describe(self) -> str:
        return "[x0, y0, x1, y1]"


@dataclass(frozen=True)
class Boxes:
    """A non-empty list of :class:`Box` values."""

    def __call__(self, name: str, value: Any) -> list[tuple[float, float, float, float]]:
        if not isinstance(value, (list, tuple)) or not value:
            raise fail(name, value, "a non-empty list of boxes [[x0, y0, x1, y1], ...], one per phrase")
        return [box(f"{name}[{index}]", item) for index, item in enumerate(value)]

    def describe(self) -> str:
        return "list of [x0, y0, x1, y1]"


@dataclass(frozen=True)
class Json:
    """A JSON object (``dict``) or list, kept as it is."""

    kind: type
    example: str

    max_depth: int = 32

    def __call__(self, name: str, value: Any) -> Any:
        if not isinstance(value, self.kind):
            raise fail(name, value, f"a JSON {'object' if self.kind is dict else 'list'}, e.g. {self.example}")
        if _depth(value, self.max_depth) > self.max_depth:
            raise fail(name, f"<{self.describe()} nested over {self.max_depth} levels>",
                       f"at most {self.max_depth} levels of nesting")
        return value

    def describe(self) -> str:
        return "object" if self.kind is dict else "list"


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of JSON-like ``value``, counted without recursion and only up to ``limit + 1``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list, tuple)):
            deepest = max(deepest, depth)
            if depth <= limit:
                stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


@dataclass(frozen=True)
class Optional:
    """``None`` or a value of ``kind``."""

    kind: Any

    def __call__(self, name: str, value: Any) -> Any:
        return None if value is None else self.kind(name, value)

    def describe(self) -> str:
        return f"{self.kind.describe()} or null"


@dataclass(frozen=True)
class Pair:
    """Two values of ``kind``, e.g. a window ``(rows, cols)`` in tokens; normalised to a tuple."""

    kind: Any

    def __call__(self, name: str, value: Any) -> tuple[Any, Any]:
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or len(value) != 2:
            raise fail(name, value, f"two values (rows, cols), each {self.kind.describe()}")
        return tuple(self.kind(f"{name}[{index}]", item) for index, item in enumerate(value))

    def describe(self) -> str:
        return f"[{self.kind.describe()}, {self.kind.describe()}]"


@dataclass(frozen=True)
class File:
    """The name of an input file (a path string; the job reader resolves and checks it)."""

    what: str

    def __call__(self, name: str, value: Any) -> str:
        return Text()(name, value)

    def describe(self) -> str:
        return f"file ({self.what})"


# ------------------------------------------------------------------------------------------ small checks


def text_list(name: str, value: Any, example: str = '["a red car", "a blue bench"]') -> list[str]:
    """A list (or tuple) of non-empty strings; a lone string is refused with the list it should be."""
    if isinstance(value, str):
        raise fail(name, value, f"a list of strings, e.g. [{value!r}], not one string")
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() and _unicode(v)
                                                       for v in value):
        raise fail(name, value, f"a list of non-empty strings, e.g. {example}")
    return list(value)


def box(name: str, value: Any) -> tuple[float, float, float, float]:
    """A box ``(x0, y0, x1, y1)`` of four finite numbers with ``0 <= x0 < x1`` and ``0 <= y0 < y1``."""
    ok = (
        isinstance(value, (list, tuple)) and len(value) == 4
        and all(_real(v) and math.isfinite(v) for v in value)
    )
    if not ok or not (0 <= value[0] < value[2] and 0 <= value[1] < value[3]):
        raise fail(name, value, "a box [x0, y0, x1, y1] with 0 <= x0 < x1 and 0 <= y0 < y1")
    return tuple(float(v) for v in value)


def prompts(name: str, value: Any, required: bool = False) -> None:
    """``None`` (unless ``required``), a string, or a non-empty list of strings."""
    if value is None and not required:
        return
    if isinstance(value, str):
        return
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
        raise fail(name, value, "a string or a non-empty list of strings")


def pixel_side(name: str, value: Any, multiple: int, optional: bool = True) -> None:
    """A side in pixels: a whole multiple of ``multiple`` from ``multiple`` to :data:`MAX_SIDE` (or ``None``)."""
    if value is None and optional:
        return
    if not _whole(value) or not multiple <= value <= MAX_SIDE or int(value) % multiple:
        raise fail(name, value, f"a multiple of {multiple} from {multiple} to {MAX_SIDE} pixels"
                   + (" (or None for the model's default)" if optional else ""))


# ------------------------------------------------------------------------------------------ images


def _as_array(name: str, value: Any) -> np.ndarray:
    """An array of ``value`` (numpy, torch tensor on any device, or anything ``np.asarray`` reads)."""
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().float().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise fail(name, type(value).__name__, "a PIL image or an (H, W) / (H, W, C) array")
    return value


def _unit_interval(name: str, array: np.ndarray) -> np.ndarray:
    """``array`` as float32 in ``[0, 1]``: uint8 / 255, uint16 / 65535, bool as 0/1, floats already in [0, 1]."""
    if array.size == 0:
        raise fail(name, f"array of shape {array.shape}", "a non-empty image")
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise fail(name, f"{array.dtype} array with values {low}..{high}",
                       "8-bit values 0..255 (or a uint16 array for 16-bit images)")
        return array.astype(np.float32) / 255.0
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise fail(name, f"{array.dtype} array holding NaN or inf", "finite values in [0, 1]")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise fail(name, f"float array with values {low:g}..{high:g}",
                       "floats in [0, 1] (divide 0..255 values by 255) or a uint8 array")
        return array.astype(np.float32)
    raise fail(name, f"{array.dtype} array", "a uint8, uint16, bool or float array")


def _pil_unit(name: str, image: Any) -> np.ndarray:
    """(H, W) or (H, W, C) float32 in [0, 1] from a PIL image of any mode; alpha channels are dropped."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(image, dtype=np.float32) / 65535.0
    if image.mode == "I":  # 32-bit integers: 16-bit PNGs decode to this in some Pillow versions
        array = np.asarray(image)
        if array.min() < 0 or array.max() > 65535:
            raise fail(name, f"32-bit image with values {array.min()}..{array.max()}", "8- or 16-bit pixel values")
        return array.astype(np.float32) / 65535.0
    if image.mode == "F":
        return _unit_interval(name, np.asarray(image, dtype=np.float32))
    if image.mode in ("RGB", "L"):
        return np.asarray(image, dtype=np.float32) / 255.0
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # RGBA, LA, P, CMYK, 1, YCbCr...


def _channels_last(name: str, array: np.ndarray) -> np.ndarray:
    """(H, W, 3) from (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (alpha dropped)."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise fail(name, f"array of shape {array.shape}", "an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image")
    if array.shape[-1] == 1:
        return np.repeat(array, 3, axis=-1)
    return array[..., :3]


def image_unit(name: str, value: Any) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] from a PIL image (any mode, 8 or 16 bits) or an array; see the module doc."""
    import PIL.Image

    if isinstance(value, PIL.Image.Image):
        unit = _pil_unit(name, value)
    else:
        unit = _unit_interval(name, _as_array(name, value))
    unit = _channels_last(name, unit)
    if min(unit.shape[:2]) < 1 or max(unit.shape[:2]) > MAX_SIDE:
        raise fail(name, f"{unit.shape[1]}x{unit.shape[0]} image", f"sides from 1 to {MAX_SIDE} pixels")
    return unit


def read_image(name: str, path: str) -> Any:
    """The image in the file at ``path``, loaded as it is stored (mode and depth kept for the converters)."""
    import PIL.Image

    try:
        with PIL.Image.open(path) as image:
            image.load()
            return image.copy()
    except (PIL.UnidentifiedImageError, OSError) as err:
        raise fail(name, path, f"an image file PIL can read (PNG, JPEG, ...): {type(err).__name__}") from None


def rgb_image(name: str, value: Any) -> Any:
    """A PIL RGB 8-bit image from any image input: 16-bit scaled to 8 bits, alpha dropped, grey made RGB."""
    import PIL.Image

    if isinstance(value, PIL.Image.Image) and value.mode == "RGB":
        return value
    unit = image_unit(name, value)
    return PIL.Image.fromarray(np.round(unit * 255.0).astype(np.uint8))


def mask_array(name: str, value: Any) -> np.ndarray:
    """(H, W) float32 in [0, 1] from a mask of any mode or depth (colour masks are averaged, alpha dropped);
    an integer array holding only 0 and 1 is a binary mask."""
    import PIL.Image

    if isinstance(value, PIL.Image.Image):
        unit = _pil_unit(name, value)
    else:
        array = _as_array(name, value)
        binary = np.issubdtype(array.dtype, np.integer) and array.size and 0 <= array.min() and array.max() <= 1
        unit = array.astype(np.float32) if binary else _unit_interval(name, array)  # 0/1 integers: a binary mask
    if unit.ndim == 3:
        unit = _channels_last(name, unit).mean(-1)
    if unit.ndim != 2:
        raise fail(name, f"array of shape {unit.shape}", "an (H, W) mask")
    return unit


def video_frames(name: str, value: Any, min_side: int) -> Any:
    """A video as a list of PIL RGB frames (from PIL frames of any mode, frame arrays, or a (frames, H, W, C)
    array), each side at least ``min_side`` pixels. Tensors and 5-D arrays pass through after a shape check."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise fail(name, value, "a non-empty list of frames")
        frames = [rgb_image(f"{name}[{index}]", frame) for index, frame in enumerate(value)]
        sizes = {frame.size for frame in frames}
        if len(sizes) > 1:
            raise fail(name, f"frames of sizes {sorted(sizes)}", "frames that all have one size")
        width, height = frames[0].size
    else:
        array = _as_array(name, value)
        if array.ndim == 4:  # (frames, H, W, C)
            frames = [rgb_image(f"{name}[{index}]", frame) for index, frame in enumerate(array)]
            width, height = frames[0].size
        elif array.ndim == 5:  # (batch, channels, frames, H, W) or (batch, frames, channels, H, W)
            if not np.isfinite(array).all():
                raise fail(name, "array holding NaN or inf", "finite pixel values")
            frames, (height, width) = value, array.shape[-2:]
        else:
            raise fail(name, f"array of shape {array.shape}", "a list of frames or a (frames, H, W, C) array")
    if min(width, height) < min_side:
        raise fail(name, f"frames of {width}x{height} pixels", f"frames at least {min_side} pixels a side")
    return frames


# ------------------------------------------------------------------------------------------ pipelines


def _phrases(name: str, value: Any) -> None:
    """Phrases: ``None``, a list of phrases, or a list of such lists; never one string."""
    if value is None:
        return
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise fail(name, value, "a list of phrases (or one list per prompt), e.g. [\"a red car\"]")
    for index, item in enumerate(value):
        if isinstance(item, (list, tuple)):
            _phrases(f"{name}[{index}]", item)
        elif not (isinstance(item, str) or hasattr(item, "token_start")):
            raise fail(f"{name}[{index}]", item, "a phrase (a string of the prompt or a Phrase)")


def _regions(name: str, value: Any) -> None:
    """Regions: ``None`` or a list of ``(phrase or token positions, (x0, y0, x1, y1))`` pairs."""
    if value is None:
        return
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise fail(name, value, 'a list of (phrase, (x0, y0, x1, y1)) pairs, e.g. [("a red car", (0, 0, 0.5, 1))]')
    for index, item in enumerate(value):
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise fail(f"{name}[{index}]", item, "a (phrase, (x0, y0, x1, y1)) pair")
        phrase, area = item
        if not (isinstance(phrase, str) and phrase.strip()) and not isinstance(phrase, (list, tuple)):
            raise fail(f"{name}[{index}]", item, "a phrase of the prompt (or token positions) first")
        if not (isinstance(area, (list, tuple)) and len(area) == 4 and all(_real(v) and math.isfinite(v)
                                                                               for v in area)):
            raise fail(f"{name}[{index}]", item, "a box of four finite numbers (x0, y0, x1, y1) second")


def _words(name: str, value: Any) -> None:
    """Words of the prompt: ``None``, a non-empty string, or a list of non-empty strings."""
    if value is None or (isinstance(value, str) and value.strip()):
        return
    text_list(name, value)


#: A softmax scale above this overflows float32 logits to inf (NaN frames); stock scales are about 0.1.
MAX_ATTENTION_SCALE = 100.0


def _attention_scale(name: str, value: Any) -> None:
    if value is None or value == "entropy":
        return
    if not (_real(value) and math.isfinite(value) and 0 < value <= MAX_ATTENTION_SCALE):
        raise fail(name, value, f"'entropy', None (stock 1/sqrt(d)) or a number in (0, {MAX_ATTENTION_SCALE:g}]")


def _image_input(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, (list, tuple)):  # diffusers takes lists of images; each is checked
        for index, item in enumerate(value):
            image_unit(f"{name}[{index}]", item)
        return
    image_unit(name, value)


def _mask_input(name: str, value: Any) -> None:
    if value is not None:
        mask_array(name, value)


#: The kind of every plain pipeline argument: its one limit, read by :func:`check_call`, by the method specs
#: (:mod:`attnctl.spec`: a job field mapped to the argument takes this kind) and so by the CLI and the UI.
ARGUMENT_KINDS: dict[str, Any] = {
    "num_inference_steps": Integer(1, MAX_STEPS),
    "native_num_inference_steps": Integer(1, MAX_STEPS),
    "guidance_scale": Number(0.0, MAX_GUIDANCE),
    "guidance_scale_2": Number(0.0, MAX_GUIDANCE),
    "guidance_rescale": Number(0.0, 1.0),
    "eta": Number(0.0, 1.0),
    "num_images_per_prompt": Integer(1, MAX_BATCH),
    "num_videos_per_prompt": Integer(1, MAX_BATCH),
    "num_frames": Integer(1, 10_000),
    "strength": Number(0.0, 1.0, open_low=True),
    "cache_interval": Integer(1, MAX_STEPS),
    "refine_flow_shift": Number(0.0, 1e6, open_low=True),
    "max_sequence_length": Integer(1, 100_000),
    "clip_skip": Integer(0, 1_000),
    "tau_a": Number(0.0, 1.0),
    "tau_b": Number(0.0, 1.0),
    "tau_c": Number(0.0, 1.0),
    "solver_order": Choice((1, 2)),
    "seed": Integer(0, MAX_SEED),
    "output_type": Choice(("pil", "np", "pt", "latent")),
    "return_dict": Flag(),
    "return_attention_maps": Flag(),
    "faithful": Flag(),
    "dual_path": Flag(),
    "guide_uncond": Flag(),
    "rca": Flag(),
    "domain": Choice(("same", "cross")),
    "struct_mode": Choice(("values", "keys", None)),
    "target_box": Box(),
    "max_iter_to_alter": Integer(0, MAX_STEPS),
    "scale_factor": Number(0.0, 1e6),
    "num_intervention_steps": Integer(0, MAX_STEPS),
    "syngen_step_size": Number(0.0, 1e6),
    "window_size": Pair(Integer(1, MAX_SIDE)),  # tokens; how it fits the target grid: the FreeSwim pipeline
}
#: Arguments whose ``None`` means "the pipeline's default" (or "off").
OPTIONAL_ARGUMENTS = frozenset({
    "native_num_inference_steps", "guidance_scale_2", "num_images_per_prompt", "num_videos_per_prompt",
    "strength", "refine_flow_shift", "clip_skip", "seed", "rca", "target_box", "window_size",
})


def _argument_check(name: str, kind: Any):
    kind = Optional(kind) if name in OPTIONAL_ARGUMENTS else kind
    return lambda argument, value, pipe: kind(argument, value)


def _plain(check):
    return lambda name, value, pipe: check(name, value)


#: What every pipeline argument attnctl knows by name must hold: ``name -> check(name, value, pipe)``.
#: ``height``/``width`` and the native sizes are checked against the pipeline's pixel multiple.
PIPELINE_ARGUMENTS: dict[str, Any] = {
    **{name: _argument_check(name, kind) for name, kind in ARGUMENT_KINDS.items()},
    "prompt": _plain(prompts),
    "negative_prompt": _plain(prompts),
    "attention_scale": _plain(_attention_scale),
    "phrases": _plain(_phrases),
    "regions": _plain(_regions),
    "subject_words": _plain(_words),
    "image": _plain(_image_input),
    "subject_image": _plain(_image_input),
    "subject_mask": _plain(_mask_input),
    "target_mask": _plain(_mask_input),
}
SIDES = ("height", "width", "native_height", "native_width")


def pixel_multiple(pipe: Any) -> int:
    """What pixel sizes must be multiples of: the pipeline's ``size_multiple`` where it declares one, the VAE
    factor times the transformer's patch for Wan, else the VAE factor (Stable Diffusion)."""
    declared = getattr(type(pipe), "size_multiple", None)
    if declared is not None:
        return pipe.size_multiple
    if hasattr(pipe, "vae_scale_factor_spatial"):
        transformer = getattr(pipe, "transformer", None) or getattr(pipe, "transformer_2", None)
        return pipe.vae_scale_factor_spatial * transformer.config.patch_size[1]
    return pipe.vae_scale_factor


def _integer_kind(kind: Any) -> bool:
    return isinstance(kind, Integer) or (isinstance(kind, Optional) and isinstance(kind.kind, Integer))


def whole_numbers(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """``arguments`` (checked by :func:`check_call`) with every integer argument made a plain ``int``: a whole
    float (``num_inference_steps=20.0``, ``height=64.0``, as web forms send them) or a numpy integer. diffusers
    indexes and shapes tensors with these, and a float fails deep inside it."""

    def integer(name: str, value: Any) -> bool:
        return value is not None and type(value) is not int and (_integer_kind(ARGUMENT_KINDS.get(name)) or name in SIDES)

    return {name: int(value) if integer(name, value) else value for name, value in arguments.items()}


def check_call(pipe: Any, arguments: Mapping[str, Any]) -> None:
    """Check every argument of a pipeline call (``locals()`` at the top of ``__call__``) before any model runs.

    Arguments are checked by name (:data:`PIPELINE_ARGUMENTS`, and ``height``/``width``/``native_*`` against
    :func:`pixel_multiple`); names it does not know are left to the pipeline. Raises ``ValueError`` naming the
    argument and its value.
    """
    for name, value in arguments.items():
        check = PIPELINE_ARGUMENTS.get(name)
        if check is not None:
            check(name, value, pipe)
    if "video" in arguments and arguments["video"] is not None:
        video_frames("video", arguments["video"], pixel_multiple(pipe))
    steps, strength = arguments.get("num_inference_steps"), arguments.get("strength")
    if strength is not None and steps is not None and int(steps * strength) < 1:  # both checked above
        raise fail("strength", strength, f"a strength that leaves at least one of num_inference_steps={steps} "
                   f"steps (at least {1 / steps:.3g})")
    multiple = None
    for name in SIDES:
        if name in arguments:
            multiple = multiple or pixel_multiple(pipe)
            pixel_side(name, arguments[name], multiple, optional=not name.startswith("native_"))

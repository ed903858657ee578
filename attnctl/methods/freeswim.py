"""``--method freeswim``: FreeSwim high-resolution video on Wan (Wu et al. 2025)."""

from __future__ import annotations

from attnctl.checks import File, Integer, Size
from attnctl.spec import DEFAULT_FPS, Converter, MethodSpec, Param


def pipeline() -> type:
    from attnctl.pipelines.freeswim import FreeSwimPipeline

    return FreeSwimPipeline


def _load_video(path: str) -> tuple[list]:
    from diffusers.utils import load_video

    return (load_video(path),)


SPEC = MethodSpec(
    "freeswim", "FreeSwim video", pipeline, "video",
    "FreeSwim high-resolution video on Wan",
    params=(
        Param("frames", "frames to generate (Wan: 4k+1)", "num_frames"),
        Param("fps", "frames per second of the mp4", None, Integer(1, 240), default=str(DEFAULT_FPS)),
        Param("native_size", 'stage-1 size, 480 or "WIDTHxHEIGHT" (the window follows from it)', None, Size(16)),
        Param("strength", "stage-2 re-noising strength", "strength"),
        Param("cache_interval", "full-branch refresh interval (1 = uncached)", "cache_interval"),
        Param("dual_path", "full branch with its cross-attention override (false: inward windows only)",
              "dual_path"),
        Param("video", "start stage 2 from this video (video-to-video upscaling)", None, File("video"),
              default="none (generate)", is_path=True),
    ),
    converters={
        "native_size": Converter(("native_width", "native_height"), tuple),
        "video": Converter(("video",), _load_video),
    },
    export_fields=frozenset({"fps"}),
    offload_arguments={"cache_device": "cpu"},  # the cross-attention cache waits in host memory
    capability="freeswim",
)

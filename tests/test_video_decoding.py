"""LeRobot's video-decoder fallback (torchcodec cannot load -> pyav) is one line, once per process, under the
plugin, instead of torchcodec's whole loading traceback at every decoder choice."""

from __future__ import annotations

import importlib
import logging

import lerobot.utils.import_utils as lerobot_import_utils

from lerobot_policy_world_modality.video_decoding import _LEROBOT_LOGGER, DecoderFallbackInOneLine

TRACEBACK = "\n".join(
    [
        "Could not load libtorchcodec. Likely causes:",
        "  1. FFmpeg is not properly installed.",
        "FFmpeg version 8:",
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        "OSError: libavutil.so.60: cannot open shared object file: No such file or directory",
        *(f"  frame {i}" for i in range(200)),
        "OSError: libavutil.so.59: cannot open shared object file: No such file or directory",
    ]
)


def test_lerobots_decoder_fallback_is_one_line_once(monkeypatch, caplog):
    """LeRobot's own chooser, with torchcodec failing to load as it does without FFmpeg: it still answers pyav,
    and its warning is one line naming the first cause and pyav, then nothing at the next choices."""
    import_module = importlib.import_module

    def torchcodec_fails(name, *args):
        if name == "torchcodec":
            raise RuntimeError(TRACEBACK)
        return import_module(name, *args)

    monkeypatch.setattr(lerobot_import_utils.importlib, "import_module", torchcodec_fails)
    monkeypatch.setattr(lerobot_import_utils.importlib.util, "find_spec", lambda name, *a: object())
    logger = logging.getLogger(_LEROBOT_LOGGER)
    assert any(isinstance(f, DecoderFallbackInOneLine) for f in logger.filters)  # installed by the plugin's import
    monkeypatch.setattr(logger, "filters", [DecoderFallbackInOneLine()])  # a fresh one: not said yet
    with caplog.at_level(logging.WARNING, logger=_LEROBOT_LOGGER):
        choices = [lerobot_import_utils.get_safe_default_video_backend() for _ in range(3)]
    assert choices == ["pyav"] * 3
    [message] = [record.getMessage() for record in caplog.records if record.name == _LEROBOT_LOGGER]
    assert (
        "\n" not in message and "libavutil.so.60" in message and "pyav" in message and "libavutil.so.59" not in message
    )


def test_other_warnings_of_that_logger_pass_unchanged(caplog):
    with caplog.at_level(logging.WARNING, logger=_LEROBOT_LOGGER):
        logging.getLogger(_LEROBOT_LOGGER).warning("something else\non two lines")
    assert [record.getMessage() for record in caplog.records] == ["something else\non two lines"]

"""LeRobot's video-decoder fallback, said in one line, once per process.

Where torchcodec is installed but cannot load (no FFmpeg shared libraries, as on these machines), LeRobot falls
back to pyav, a decoder that loads, but logs torchcodec's whole loading traceback (~280 lines) every time it
chooses a decoder. The plugin's import adds :class:`DecoderFallbackInOneLine` to the logger LeRobot logs it
with: the first such warning becomes one line (the first cause and the decoder used), repeats are dropped.
"""

from __future__ import annotations

import logging

# LeRobot's `lerobot.utils.import_utils.get_safe_default_video_backend` chooses the decoder and logs the fallback.
_LEROBOT_LOGGER = "lerobot.utils.import_utils"
_LEROBOT_FUNCTION = "get_safe_default_video_backend"
_ERROR_PREFIXES = ("OSError:", "ImportError:", "RuntimeError:")


class DecoderFallbackInOneLine(logging.Filter):
    """Rewrites LeRobot's decoder-fallback warning into one line the first time, drops it afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.funcName != _LEROBOT_FUNCTION:
            return True
        if self.said:
            return False
        self.said = True
        record.msg, record.args = one_line(record.getMessage()), ()
        return True


def one_line(message: str) -> str:
    """LeRobot's fallback warning in one line: torchcodec's first loading error, if any, and the decoder used."""
    causes = [line.strip() for line in message.splitlines() if line.strip().startswith(_ERROR_PREFIXES)]
    if not causes:
        return " ".join(message.split())
    return (
        f"torchcodec cannot load ({causes[0]}; FFmpeg 4-8's shared libraries are needed, Debian: "
        "apt-get install ffmpeg), so LeRobot decodes videos with pyav"
    )


def say_decoder_fallback_once() -> None:
    """Install :class:`DecoderFallbackInOneLine` on LeRobot's logger (once per process)."""
    logger = logging.getLogger(_LEROBOT_LOGGER)
    if not any(isinstance(f, DecoderFallbackInOneLine) for f in logger.filters):
        logger.addFilter(DecoderFallbackInOneLine())

"""The project's own error types: errors whose message says what is wrong and how to fix it.

`wm` prints these as one paragraph (exit status 2); any other exception is a bug and keeps its traceback
(`world_modality.cli`). Each type also derives from the built-in error a caller would catch for it (an
`InputError` is a ValueError, a `MissingFileError` a FileNotFoundError), so code and tests that catch the
built-in keep working. The pipeline imports them from here: the plugin is the lower layer, and its own errors
(damaged files, latent caches, policy configs) reach `wm` too.
"""

from __future__ import annotations

# The line `wm` prints below the traceback of an exception that is not one of these (`world_modality.cli`), and a
# matrix step's failure below its traceback (`world_modality.schedule`).
BUG_REPORT = (
    "This is a bug in world-modality-vla, not a problem with the input: please report it with the "
    "traceback above and the command that raised it."
)


class WorldModalityError(Exception):
    """Bad input, a damaged or missing file, or a machine that lacks something, said in one paragraph."""


class InputError(WorldModalityError, ValueError):
    """A value that cannot be used: an option, a config field, a file's content."""


class MissingFileError(WorldModalityError, FileNotFoundError):
    """A file or folder that the input names, or that a step needs, is not there."""


class OutputExistsError(WorldModalityError, FileExistsError):
    """An output that must not exist yet does."""


class SetupError(WorldModalityError, RuntimeError):
    """This machine lacks what the command needs: a CUDA device, a simulator's assets, a rendering backend, a
    reachable Ray cluster, or the library version the project was written against."""

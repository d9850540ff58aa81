"""The errors bge_ref raises. Every message names what is at fault and, where it can, what would fix it."""


class BgeRefError(Exception):
    """Base class of every error bge_ref raises on purpose."""


class InputError(BgeRefError, ValueError):
    """A text, payload field or argument that bge_ref cannot embed (names the index or field)."""


class CheckpointError(BgeRefError):
    """A checkpoint that is missing, corrupt or does not match its config (names the file or tensor)."""


class NumericalError(BgeRefError):
    """A computation that produced a non-finite value (NaN or infinity): never returned as a result."""

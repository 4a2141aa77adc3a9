"""TensorBoard availability check, so configs can skip TensorBoard handlers with a notice."""

import importlib.util
import logging

_notified = False


def available() -> bool:
    """True when ``tensorboard`` is importable; otherwise logs once that TensorBoard logging is off."""
    global _notified
    if importlib.util.find_spec("tensorboard") is not None:
        return True
    if not _notified:
        logging.getLogger(__name__).warning(
            "tensorboard is not installed: TensorBoard logging is skipped "
            "(pip install -r requirements.txt to enable it)"
        )
        _notified = True
    return False

"""A user's module whose functions use a module-level lock: they cannot be pickled by value."""
import threading

_lock = threading.Lock()


def locked_add(a, b):
    with _lock:
        return a + b

"""Worker processes for CPU-bound NumPy and OpenCV work (camera effects, rendered pages, native-scale rows).

They are started with ``spawn``, never ``fork``: the caller may hold TensorFlow's or JAX's threads or a CUDA context,
and a fork of those can hang. Each worker runs OpenCV on one thread (the pool is the parallelism), and every worker
is started at once with the main module hidden, so that a spawned worker does not import the caller's script again
(and fail in one without an ``if __name__ == "__main__":`` guard).
"""
from __future__ import annotations

import contextlib
import sys
from concurrent.futures import ProcessPoolExecutor


@contextlib.contextmanager
def _main_module_hidden():
    """Hide ``__main__``'s file and spec from multiprocessing's spawn, which re-imports them in each child."""
    main = sys.modules.get("__main__")
    saved = {k: getattr(main, k) for k in ("__file__", "__spec__") if main is not None and hasattr(main, k)}
    try:
        for k in saved:
            if k == "__file__":
                delattr(main, k)
            else:
                setattr(main, k, None)
        yield
    finally:
        for k, v in saved.items():
            setattr(main, k, v)


def _start(initializer, initargs) -> None:
    import cv2

    cv2.setNumThreads(1)
    if initializer is not None:
        initializer(*initargs)


def spawn_pool(workers: int, initializer=None, initargs: tuple = ()) -> ProcessPoolExecutor:
    """A pool of ``workers`` spawned processes, all started, each having run ``initializer(*initargs)``."""
    import multiprocessing

    pool = ProcessPoolExecutor(int(workers), mp_context=multiprocessing.get_context("spawn"), initializer=_start,
                               initargs=(initializer, initargs))
    with _main_module_hidden():
        for f in [pool.submit(int, 0) for _ in range(int(workers))]:
            f.result()
    return pool


__all__ = ["spawn_pool"]

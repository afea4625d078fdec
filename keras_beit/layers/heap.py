"""Hands the C heap's free pages back to the system while a model is built."""

import ctypes
import sys


def _find_malloc_trim():
    # glibc only: musl and the other platforms' C libraries have no malloc_trim.
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _find_malloc_trim()


def release_free_heap():
    """Returns the pages of glibc's free heap chunks to the system; a no-op elsewhere.

    Keras' torch initializers build each weight from weight-sized temporaries
    (`torch.rand`, then a scale, then a shift). torch asks for 64-byte aligned
    memory, so the hole a freed temporary leaves is just too small for the
    next weight of the same size, and glibc keeps it resident: building BEiT-L
    (1157 MB of weights) held another 440 MB of free heap, the peak of its
    whole inference run; loading weights into jax arrays leaves the same
    kind of holes. Trimming as each block is built and loaded keeps them from
    adding up. It frees only pages no allocation is using.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)

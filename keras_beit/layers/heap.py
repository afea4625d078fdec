"""Hands pages the process no longer needs back to the system: the C heap's
free pages while a model is built, and a mapped checkpoint's pages once read."""

import ctypes
import mmap
import os
import sys


def _linux_c_function(name, *argtypes):
    """A function of the process's C library on Linux, or None.

    Both used here mean something else, or nothing, elsewhere: musl has no
    malloc_trim, and MADV_DONTNEED drops a private file mapping's pages (read
    from the file again if used again) only on Linux.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = list(argtypes), ctypes.c_int
    return function


_MALLOC_TRIM = _linux_c_function("malloc_trim", ctypes.c_size_t)
_MADVISE = _linux_c_function("madvise", ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_MADV_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)


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


def file_mapping(path):
    """The address ranges at which this process maps the file at `path`, from /proc/self/maps; () off Linux."""
    real = os.path.realpath(path)
    try:
        with open("/proc/self/maps") as f:
            lines = f.read().splitlines()
    except OSError:
        return ()
    ranges = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == real:
            start, end = fields[0].split("-")
            ranges.append((int(start, 16), int(end, 16)))
    return tuple(ranges)


def release_mapped_pages(address, nbytes, mapping):
    """Drops the whole pages of [address, address + nbytes) from this process, if `mapping` holds them.

    `mapping` is `file_mapping(path)` of a private mapping of a file
    (`torch.load(mmap=True)`) that nothing has written to: there a dropped
    page is read back from the file when it is used again. Anonymous memory
    would be zeroed instead, so a range outside the mapping is left alone.
    """
    page = mmap.PAGESIZE
    start = -(-address // page) * page
    end = (address + nbytes) // page * page
    inside = any(low <= address and address + nbytes <= high for low, high in mapping)
    if _MADVISE is not None and _MADV_DONTNEED is not None and inside and end > start:
        _MADVISE(start, end - start, _MADV_DONTNEED)

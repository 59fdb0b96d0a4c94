"""NIfTI reader (nibabel): header checks and size guard before the data are read, RAS+ canonical output."""

from __future__ import annotations

import gzip
import logging
import os
import zlib
from typing import Any, Optional, Tuple, Union

import numpy as np

from ctglip_sdk.errors import InputError
from ctglip_sdk.io.geometry import DEFAULT_MAX_VOXELS, check_affine, check_voxel_count, to_canonical
from ctglip_sdk.io.meta import empty_meta
from ctglip_sdk.io.paths import require_path
from ctglip_sdk.volume import Volume

__all__ = ["NIFTI_SUFFIXES", "is_nifti", "open_nifti", "read_nifti_array", "nifti_description", "load_nifti"]

log = logging.getLogger(__name__)

#: What non-finite voxels of a NIfTI volume become: air, as outside the scanned field of view.
AIR_HU = -1024.0

PathLike = Union[str, "os.PathLike[str]"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: PathLike) -> bool:
    """True when the file name ends in .nii or .nii.gz (case-insensitive); a non-path (None) is an InputError."""
    return require_path(path, "path", "a file path").lower().endswith(NIFTI_SUFFIXES)


def _gzip_reason(exc: BaseException, gzipped: bool) -> Optional[str]:
    """Why reading a ``.nii.gz`` failed, in words, when the gzip layer raised ``exc``; None for other errors.

    The kind of damage is named in words; the checksums and magic bytes in gzip's own messages say nothing to a
    user and are dropped. No byte of the file's content reaches the message (only gzip's and zlib's wording).
    """
    if isinstance(exc, gzip.BadGzipFile):
        text = str(exc)
        if text.startswith("CRC check failed"):
            return "corrupt gzip stream (CRC check failed)"
        if text.startswith("Incorrect length"):
            return "corrupt gzip stream (length check failed)"
        if text.startswith("Not a gzipped file"):
            return "not a gzip stream, although the name ends in .gz"
        return f"corrupt gzip stream ({text})"
    if isinstance(exc, zlib.error):  # 'Error -3 while decompressing data: invalid distance too far back'
        return f"corrupt gzip stream (invalid deflate data: {str(exc).split(': ', 1)[-1]})"
    if isinstance(exc, EOFError) and gzipped:
        return "truncated or corrupt gzip stream (it ends before the end-of-stream marker)"
    return None


def _gzip_header_reason(where: str) -> Optional[str]:
    """What is wrong with the gzip layer under a ``.nii.gz`` header nibabel could not read, if anything.

    nibabel's type sniffing swallows gzip errors and reports only "cannot work out file type"; reading the
    header's bytes again (on this error path only, at most a few kB) tells a cut or damaged stream apart.
    """
    try:
        with gzip.open(where, "rb") as stream:
            stream.read(1 << 12)
    except Exception as exc:
        return _gzip_reason(exc, True)
    return None


def open_nifti(path: PathLike, max_voxels: int = DEFAULT_MAX_VOXELS) -> Tuple[Any, Tuple[int, int, int], np.ndarray]:
    """Open a NIfTI header (no voxel data read): ``(image proxy, 3-D shape, voxel->RAS+ affine)``.

    Trailing singleton dimensions are dropped (``(x, y, z, 1)`` is 3-D) and a 2-D image gets a third axis of
    length 1. 4-D images with several volumes, headers declaring more than ``max_voxels`` voxels, unreadable
    files and singular affines raise InputError naming the file.
    """
    import nibabel as nib

    where = require_path(path, "path", "a NIfTI file path")
    try:
        img = nib.load(where, mmap=False)  # header only; data stay behind a lazy proxy (no memmap later)
        shape = tuple(int(d) for d in img.shape)
    except FileNotFoundError:
        raise InputError("no such file", path=where) from None
    except Exception as exc:  # nibabel raises ImageFileError, HeaderDataError, gzip/zlib errors, ...
        gzipped = where.lower().endswith(".gz")
        reason = _gzip_reason(exc, gzipped) or (_gzip_header_reason(where) if gzipped else None)
        raise InputError(reason or f"not a readable NIfTI file ({type(exc).__name__}); truncated, corrupt or "
                         "another format", path=where) from None
    check_voxel_count(shape if shape else (0,), max_voxels, where, what="NIfTI header")
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) == 2:
        dims.append(1)
    if len(dims) != 3:
        raise InputError(f"{len(shape)}-D image of shape {shape}: expected one 3-D volume "
                         "(split 4-D series into single volumes first)", path=where)
    stored = np.dtype(img.get_data_dtype())
    if stored.kind == "c":  # casting to float would drop the imaginary part with only a numpy warning
        raise InputError(f"voxel type {stored} is complex, not a scalar number", path=where)
    if stored.kind == "V" or stored.names:  # RGB24/RGBA32: a colour image (numpy failed later with a dtype error)
        raise InputError(f"voxel type {stored} is a colour (RGB) image, not a CT volume of scalar numbers",
                         path=where)
    header = img.header
    if hasattr(header, "get_sform") and int(header.get_sform(coded=True)[1]) == 0 and \
            int(header.get_qform(coded=True)[1]) == 0:
        # nibabel then falls back to an Analyze-style affine (x flipped, origin at the centre): left and right,
        # and so kidney_left/kidney_right, may be swapped. Worth a warning, not a refusal: masks written the
        # same way still line up with the image.
        log.warning("%s: no orientation in the NIfTI header (sform_code and qform_code are 0); the fallback "
                    "affine is used, so left and right may be mirrored", where)
    affine = check_affine(img.affine, where)
    return img, (dims[0], dims[1], dims[2]), affine


def _drain_gzip(stream: Any, where: str) -> None:
    """Read ``stream`` to its end, so that Python's gzip checks the trailer's CRC-32 and length.

    The image data end a few bytes before the gzip trailer, and gzip verifies the trailer only when a read goes
    past the end of the deflate stream: without this, a flipped bit that still decodes, or a damaged or missing
    trailer, loads as if nothing were wrong. Only what follows the voxel data is decompressed here (normally
    nothing), so the file is still decompressed once.
    """
    while True:
        try:
            if not stream.read(1 << 20):
                return
        except gzip.BadGzipFile as exc:
            # Raised only after the member's CRC and length passed: bytes that are not gzip follow the stream.
            # gzip(1) calls this 'trailing garbage ignored'; the image itself is intact.
            if str(exc).startswith("Not a gzipped file"):
                log.warning("%s: bytes after the end of the gzip stream are ignored", where)
                return
            raise


def read_nifti_array(img: Any, shape: Tuple[int, int, int], where: str, dtype: Any = np.float32) -> np.ndarray:
    """Read the voxel data behind ``img`` (scaled by scl_slope/scl_inter) as ``dtype``, reshaped to ``shape``.

    A ``.nii.gz`` is read through a gzip stream that this function opens and reads to its end, so a failed
    CRC-32 or length check, a truncated stream and invalid deflate data are all InputError naming the file.
    """
    from nibabel.arrayproxy import ArrayProxy

    floating = np.issubdtype(np.dtype(dtype), np.floating)
    proxy = img.dataobj
    gzipped = where.lower().endswith(".gz")
    try:
        if gzipped and isinstance(proxy, ArrayProxy):
            # nibabel would open its own gzip reader and stop at the last voxel byte, never reaching the trailer.
            # The same proxy spec over our stream gives the same array, scaling included.
            with gzip.open(where, "rb") as stream:
                ours = ArrayProxy(stream, (proxy.shape, proxy.dtype, proxy.offset, proxy.slope, proxy.inter),
                                  mmap=False, order=proxy.order)
                data = np.asanyarray(ours, dtype=dtype) if floating else np.asanyarray(ours)
                _drain_gzip(stream, where)
        elif floating:
            data = img.get_fdata(dtype=dtype, caching="unchanged")
        else:
            data = np.asanyarray(proxy)
    except Exception as exc:
        reason = _gzip_reason(exc, gzipped)
        if reason is None and isinstance(exc, OSError) and str(exc).startswith("Expected "):
            reason = "truncated: the voxel data are shorter than the header declares"  # nibabel's short read
        raise InputError(reason or f"cannot read NIfTI voxel data ({type(exc).__name__}); the file is truncated "
                         "or corrupt", path=where) from None
    if data.dtype.kind not in "biuf":
        raise InputError(f"voxel type {data.dtype} is not a scalar number", path=where)
    return data.reshape(shape)


def nifti_description(img: Any) -> Optional[str]:
    """The header's ``descrip`` text, or None (it is optional decoration; malformed values are ignored)."""
    try:
        text = img.header["descrip"].item().decode("ascii", "replace").strip("\x00 ").strip()
    except Exception:
        return None
    return text or None


def load_nifti(path: PathLike, max_voxels: int = DEFAULT_MAX_VOXELS) -> Volume:
    """Load a NIfTI file as a float32 Volume reoriented to closest-canonical RAS+ (nibabel orientation tools).

    Values are taken as Hounsfield units after the header's scl_slope/scl_inter.

    Example:
        >>> vol = load_nifti("ct.nii.gz")  # doctest: +SKIP
        >>> vol.array.dtype, vol.meta["format"]  # doctest: +SKIP
        (dtype('float32'), 'nifti')
    """
    where = require_path(path, "path", "a NIfTI file path")
    img, shape, affine = open_nifti(where, max_voxels)
    array, affine = to_canonical(read_nifti_array(img, shape, where), affine)
    if not np.isfinite(array.sum(dtype=np.float64)):  # one pass, no mask, in the usual case of no NaN at all
        bad = ~np.isfinite(array)
        # Resampling and registration tools pad outside the field of view with NaN. One NaN voxel made every
        # organ vector of the study NaN; as outside-the-scan it is air.
        log.warning("%s: %d non-finite voxel(s) (NaN/inf) set to %g HU (air)", where, int(bad.sum()), AIR_HU)
        array = np.where(bad, np.float32(AIR_HU), array).astype(np.float32, copy=False)
    meta = empty_meta(where, "nifti")
    meta["series_description"] = nifti_description(img)
    log.debug("%s: NIfTI %s -> %s", where, shape, array.shape)
    return Volume(array=array, affine=affine, meta=meta)

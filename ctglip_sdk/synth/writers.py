"""Writing synthetic studies: DICOM CT series (pydicom), NIfTI volumes and TotalSegmentator-style masks (nibabel)."""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Sequence

import numpy as np

from ctglip_sdk.organs import V1

__all__ = ["Identity", "make_identity", "write_dicom_series", "write_nifti", "write_mask", "write_class_masks",
           "dicom_slice"]

# Obviously invented names: enough variety to exercise de-identification, no real people.
_FIRST_F = ["Alba", "Brisa", "Cyra", "Delphine", "Elowen", "Fenna", "Galia", "Hesper", "Iolanthe", "Junia", "Kerensa",
            "Liora", "Marisol", "Nerys", "Orla", "Peregrina"]
_FIRST_M = ["Anselm", "Bastian", "Cosmo", "Dorian", "Evander", "Florian", "Gideon", "Hollis", "Ignatius", "Jasper",
            "Kasimir", "Leander", "Maximo", "Nestor", "Orson", "Peregrin"]
_LAST = ["Ashgrove", "Brackwater", "Coldmere", "Dunhallow", "Eastwick", "Fernsby", "Glenhollow", "Harrowgate",
         "Ivybridge", "Juniperhill", "Kestrelford", "Larkspur", "Mossbank", "Northcote", "Oakenshaw", "Pebbleford",
         "Quillon", "Ravensworth", "Stonebridge", "Thistlewood"]


@dataclass(frozen=True)
class Identity:
    """Synthetic (fake) identifiers written into the DICOM headers so that de-identification is exercised."""

    patient_id: str
    name: str            # DICOM PN "Last^First"
    birth_date: str      # YYYYMMDD
    accession: str
    study_date: str      # YYYYMMDD
    study_time: str      # HHMMSS
    study_uid: str
    series_uid: str
    frame_uid: str
    uid_seed: str        # entropy for per-slice SOP Instance UIDs


def make_identity(seed: int, index: int, sex: str, age: int, rng: np.random.Generator,
                  preset: str = "default") -> Identity:
    """Fake identifiers and deterministic UIDs for patient ``index`` of an archive generated with ``seed``."""
    from pydicom.uid import generate_uid

    first = (_FIRST_F if sex == "F" else _FIRST_M)[int(rng.integers(16))]
    last = _LAST[int(rng.integers(len(_LAST)))]
    day0 = _dt.date(2016, 1, 4) + _dt.timedelta(days=int(rng.integers(0, 9 * 365)))
    birth = day0 - _dt.timedelta(days=int(age * 365.25 + rng.integers(0, 365)))
    # Unique within an archive: an affine map of the index (7919 is prime, coprime with 10**7).
    pid = f"SYN{(index * 7919 + (seed * 104729) % 9_000_000) % 10_000_000:07d}"
    acc = f"A{(seed % 1000):03d}{index:06d}"
    # One separated string: pydicom joins entropy sources without a separator, so ["1", "23"] and ["12", "3"]
    # (patient 23 of seed 1, patient 3 of seed 12) gave the same UIDs, and two archives collided in one index.
    # The preset enters too: a small and a default archive of one seed hold different pixels.
    base = [f"ctglip-synth/{seed}/{index}/{preset}"]
    return Identity(
        patient_id=pid, name=f"{last}^{first}", birth_date=birth.strftime("%Y%m%d"), accession=acc,
        study_date=day0.strftime("%Y%m%d"), study_time=f"{int(rng.integers(7, 19)):02d}{int(rng.integers(60)):02d}00",
        study_uid=str(generate_uid(entropy_srcs=base + ["study"])),
        series_uid=str(generate_uid(entropy_srcs=base + ["series"])),
        frame_uid=str(generate_uid(entropy_srcs=base + ["frame"])), uid_seed="/".join(base))


def dicom_slice(hu: np.ndarray, k: int) -> np.ndarray:
    """Slice k of a RAS+ (I, J, K) array as DICOM rows x columns (rows -> posterior, columns -> patient left)."""
    return hu[::-1, ::-1, k].T


def write_dicom_series(folder: Path, hu: np.ndarray, affine: np.ndarray, ident: Identity, meta: dict) -> int:
    """Write one CT Image Storage file per slice; returns the number of files.

    Pixel data are stored unsigned (HU + 1024, 12 bits) with RescaleSlope 1 / RescaleIntercept -1024. The
    geometry is derived from the RAS+ affine: ImagePositionPatient is the LPS centre of each slice's first
    pixel, ImageOrientationPatient axial (1,0,0,0,1,0).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    ni, nj, nk = hu.shape
    sx, sy, sz = (float(np.linalg.norm(affine[:3, a])) for a in range(3))
    # First pixel of a slice = voxel (I-1, J-1, k): RAS -> LPS negates x and y.
    corner = affine @ np.array([ni - 1, nj - 1, 0, 1.0])
    x0, y0, z0 = -corner[0], -corner[1], corner[2]
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = CTImageStorage
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = fm
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = ident.study_date
    ds.StudyTime = ds.SeriesTime = ident.study_time
    ds.AccessionNumber = ident.accession
    ds.Modality = "CT"
    ds.Manufacturer = "ctglip-sdk synthetic"
    ds.InstitutionName = "Synthetic General Hospital"
    ds.ReferringPhysicianName = "Quillon^Ada"
    ds.StudyDescription = "CT CHEST ABDOMEN PELVIS" + (" W CONTRAST" if meta["contrast"] else " WO CONTRAST")
    ds.SeriesDescription = f"AXIAL {sz:g}MM {'PORTAL VENOUS' if meta['contrast'] else 'NON-CONTRAST'}"
    ds.PatientName = ident.name
    ds.PatientID = ident.patient_id
    ds.PatientBirthDate = ident.birth_date
    ds.PatientSex = meta["sex"]
    ds.PatientAge = f"{int(meta['age']):03d}Y"
    ds.BodyPartExamined = "CHESTABDPELVIS"
    ds.SliceThickness = f"{sz:g}"
    ds.SpacingBetweenSlices = f"{sz:g}"
    ds.KVP = "120"
    ds.ConvolutionKernel = "STANDARD"
    ds.PatientPosition = "HFS"
    if meta["contrast"]:
        ds.ContrastBolusAgent = str(meta.get("contrast_agent") or "iohexol 350").upper()
        ds.ContrastBolusRoute = "IV"
    ds.StudyInstanceUID = ident.study_uid
    ds.SeriesInstanceUID = ident.series_uid
    ds.FrameOfReferenceUID = ident.frame_uid
    ds.StudyID = ident.accession[-6:]
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = nj, ni
    ds.PixelSpacing = [f"{sy:g}", f"{sx:g}"]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
    # pydicom spends ~4 ms per file encoding ~60 constant elements; encode them once, in tag order, and splice
    # in the five elements that change per slice (the bytes equal what Dataset.save_as writes).
    var = {0x00080018: "SOPInstanceUID", 0x00200013: "InstanceNumber", 0x00200032: "ImagePositionPatient",
           0x00201041: "SliceLocation", 0x7FE00010: "PixelData"}
    ds.SOPInstanceUID, ds.InstanceNumber, ds.ImagePositionPatient, ds.SliceLocation = "1.2", 1, [0, 0, 0], "0"
    ds.PixelData = b"\0\0"
    runs: list = [[]]
    for elem in ds:  # iterates in tag order
        if int(elem.tag) in var:
            runs.append(var[int(elem.tag)])
            runs.append([])
        else:
            runs[-1].append(elem)
    runs = [_encode(_subset(r)) if isinstance(r, list) else r for r in runs]
    for k in range(nk):
        # Head first: instance 1 is the most superior slice, as scanners number a supine CAP acquisition.
        n = nk - k
        uid = generate_uid(entropy_srcs=[ident.uid_seed, "sop", str(k)])
        fm.MediaStorageSOPInstanceUID = uid
        z = z0 + k * sz
        values = {"SOPInstanceUID": uid, "InstanceNumber": n, "ImagePositionPatient": [f"{x0:.4f}", f"{y0:.4f}",
                  f"{z:.4f}"], "SliceLocation": f"{z:.4f}",
                  "PixelData": _stored(dicom_slice(hu, k)).tobytes()}
        parts = [b"\0" * 128, b"DICM", _encode_meta(fm)]
        for r in runs:
            if isinstance(r, bytes):
                parts.append(r)
            else:
                one = Dataset()
                if r == "PixelData":  # OB/OW is ambiguous without BitsAllocated in this partial dataset
                    one.add_new(0x7FE00010, "OW", values[r])
                else:
                    setattr(one, r, values[r])
                parts.append(_encode(one))
        (folder / f"IM{n:04d}.dcm").write_bytes(b"".join(parts))
    return nk


def _stored(sl: np.ndarray) -> np.ndarray:
    """HU -> stored value (HU + 1024, 12 bits, little-endian uint16), one slice at a time."""
    return (np.clip(sl, -1024, 3071).astype(np.int32) + 1024).astype("<u2", order="C")


def _subset(elems: list):
    from pydicom.dataset import Dataset

    d = Dataset()
    for e in elems:
        d.add(e)
    return d


def _encode(d) -> bytes:
    """Explicit VR little endian encoding of a (partial) dataset."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, d)
    return fp.getvalue()


def _encode_meta(fm) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_file_meta_info(fp, fm, enforce_standard=True)
    return fp.getvalue()


def _nifti(array: np.ndarray, affine: np.ndarray):
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def write_nifti(path: Path, hu: np.ndarray, affine: np.ndarray) -> None:
    """HU volume as int16 NIfTI (RAS+ affine, scanner space)."""
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(_nifti(np.asarray(hu, dtype=np.int16), affine), os.fspath(path))


def write_mask(path: Path, labels: np.ndarray, affine: np.ndarray) -> None:
    """Multi-label mask (uint8, TotalSegmentator v1 ids) on the image grid."""
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(_nifti(np.asarray(labels, dtype=np.uint8), affine), os.fspath(path))


def write_class_masks(folder: Path, labels: np.ndarray, affine: np.ndarray,
                      classes: Sequence[str] | None = None) -> Dict[str, str]:
    """TotalSegmentator's per-class layout: one binary ``<class>.nii.gz`` per v1 class (empty ones included)."""
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, name in sorted(V1.items()):
        if classes is not None and name not in classes:
            continue
        p = folder / f"{name}.nii.gz"
        nib.save(_nifti((labels == i).astype(np.uint8), affine), os.fspath(p))
        out[name] = p.name
    return out

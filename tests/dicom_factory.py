"""Write small, valid CT DICOM files with pydicom for tests: single-frame series and Enhanced CT multi-frame."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid

#: Identifiers the factory writes unless told otherwise; tests check they never leak.
DEFAULT_PATIENT: Dict[str, str] = {
    "PatientName": "Factory^Patient",
    "PatientID": "FACTORY-0001",
    "PatientBirthDate": "19600301",
    "AccessionNumber": "ACCFACTORY1",
    "PatientSex": "F",
    "StudyDate": "20200615",
}

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass
class SeriesSpec:
    """What was written: files (in slice order), UIDs and per-slice geometry (LPS mm)."""

    files: List[Path]
    series_uid: str
    study_uid: str
    positions: np.ndarray  # (n, 3) ImagePositionPatient of each written slice, in slice order
    orientation: np.ndarray  # (6,)
    pixel_spacing: tuple  # (row spacing, column spacing)
    extra: Dict[str, Any] = field(default_factory=dict)

    def ras(self, s: int, r: float, c: float) -> np.ndarray:
        """RAS+ world mm of pixel (row r, column c) of slice s, from the DICOM definition."""
        x, y = self.orientation[:3], self.orientation[3:]
        lps = self.positions[s] + c * self.pixel_spacing[1] * x + r * self.pixel_spacing[0] * y
        return lps * np.array([-1.0, -1.0, 1.0])


def _save(ds: FileDataset, path: Path) -> None:
    try:
        ds.save_as(path, enforce_file_format=True)  # pydicom >= 3
    except TypeError:  # pydicom 2.x
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)


def _base(path: Path, sop_class: str, study_uid: str, series_uid: str, patient: Dict[str, str]) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = series_uid + ".1" if len(series_uid) < 60 else generate_uid()
    ds.Modality = "CT"
    ds.Manufacturer = "ctglip-tests"
    ds.KVP = "120"
    ds.BodyPartExamined = "ABDOMEN"
    ds.SeriesDescription = "factory series"
    for key, value in patient.items():
        setattr(ds, key, value)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    return ds


def stored_values(hu: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """HU -> int16 stored pixel values for a rescale slope/intercept."""
    return np.round((np.asarray(hu, dtype=np.float64) - intercept) / slope).astype(np.int16)


def write_slice(path: Union[str, Path], hu: np.ndarray, *, position: Sequence[float],
                orientation: Sequence[float] = AXIAL, pixel_spacing: Sequence[float] = (0.8, 0.7),
                thickness: float = 2.5, slope: float = 1.0, intercept: float = -1024.0,
                series_uid: str, study_uid: str, instance: int = 1,
                patient: Optional[Dict[str, str]] = None, **tags: Any) -> Path:
    """Write one CT Image Storage file holding ``hu`` (rows, columns)."""
    path = Path(path)
    ds = _base(path, CTImageStorage, study_uid, series_uid, dict(DEFAULT_PATIENT if patient is None else patient))
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
    ds.PixelSpacing = [f"{v:.6f}" for v in pixel_spacing]
    ds.SliceThickness = f"{thickness:.4f}"
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    ds.RescaleType = "HU"
    stored = stored_values(hu, slope, intercept)
    ds.Rows, ds.Columns = stored.shape
    ds.PixelData = stored.tobytes()
    for key, value in tags.items():
        setattr(ds, key, value)
    _save(ds, path)
    return path


def write_series(folder: Union[str, Path], hu: np.ndarray, *, origin: Sequence[float] = (-100.0, -120.0, 40.0),
                 orientation: Sequence[float] = AXIAL, pixel_spacing: Sequence[float] = (0.8, 0.7),
                 spacing: float = 2.5, positions: Optional[np.ndarray] = None,
                 slopes: Union[float, Sequence[float]] = 1.0, intercepts: Union[float, Sequence[float]] = -1024.0,
                 series_uid: Optional[str] = None, study_uid: Optional[str] = None, drop: Sequence[int] = (),
                 shuffle_names: bool = True, seed: int = 0, prefix: str = "",
                 patient: Optional[Dict[str, str]] = None, **tags: Any) -> SeriesSpec:
    """Write ``hu`` (slices, rows, columns) as a single-frame CT series in ``folder``.

    Slice s sits at ``origin + s * spacing * normal`` unless ``positions`` (n, 3) is given. File names are random
    when ``shuffle_names`` (so that nothing can rely on their order) and InstanceNumbers run backwards, for the
    same reason. ``drop`` leaves slices out (missing slices).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hu = np.asarray(hu)
    n = hu.shape[0]
    ori = np.asarray(orientation, dtype=np.float64)
    normal = np.cross(ori[:3], ori[3:])
    if positions is None:
        positions = np.asarray(origin, dtype=np.float64)[None, :] + np.arange(n)[:, None] * spacing * normal
    slopes = list(slopes) if isinstance(slopes, (list, tuple, np.ndarray)) else [slopes] * n
    intercepts = list(intercepts) if isinstance(intercepts, (list, tuple, np.ndarray)) else [intercepts] * n
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    rng = np.random.default_rng(seed)
    names = rng.permutation(n) if shuffle_names else np.arange(n)
    files, kept = [], []
    for s in range(n):
        if s in drop:
            continue
        name = f"{prefix}IM{int(names[s]) * 7919 % 100003:06d}" if shuffle_names else f"{prefix}slice_{s:04d}.dcm"
        files.append(write_slice(folder / name, hu[s], position=positions[s], orientation=ori,
                                 pixel_spacing=pixel_spacing, thickness=spacing, slope=slopes[s],
                                 intercept=intercepts[s], series_uid=series_uid, study_uid=study_uid,
                                 instance=n - s, patient=patient, **tags))
        kept.append(s)
    return SeriesSpec(files, series_uid, study_uid, np.asarray(positions)[kept], ori, tuple(pixel_spacing))


def write_enhanced_ct(path: Union[str, Path], hu: np.ndarray, *, origin: Sequence[float] = (-100.0, -120.0, 40.0),
                      orientation: Sequence[float] = AXIAL, pixel_spacing: Sequence[float] = (0.8, 0.7),
                      spacing: float = 2.5, slope: float = 1.0, intercept: float = -1024.0,
                      frame_order: Optional[Sequence[int]] = None,
                      patient: Optional[Dict[str, str]] = None) -> SeriesSpec:
    """Write ``hu`` (slices, rows, columns) as one Enhanced CT multi-frame file (functional groups).

    ``frame_order`` stores slice ``frame_order[f]`` as frame f, to check that frames are sorted by position.
    """
    path = Path(path)
    series_uid, study_uid = generate_uid(), generate_uid()
    ds = _base(path, EnhancedCTImageStorage, study_uid, series_uid,
               dict(DEFAULT_PATIENT if patient is None else patient))
    hu = np.asarray(hu)
    n = hu.shape[0]
    order = list(frame_order) if frame_order is not None else list(range(n))
    ori = np.asarray(orientation, dtype=np.float64)
    normal = np.cross(ori[:3], ori[3:])
    positions = np.asarray(origin, dtype=np.float64)[None, :] + np.arange(n)[:, None] * spacing * normal
    shared = Dataset()
    plane_ori, measures, rescale = Dataset(), Dataset(), Dataset()
    plane_ori.ImageOrientationPatient = [f"{v:.6f}" for v in ori]
    measures.PixelSpacing = [f"{v:.6f}" for v in pixel_spacing]
    measures.SliceThickness = f"{spacing:.4f}"
    rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = f"{slope:g}", f"{intercept:g}", "HU"
    shared.PlaneOrientationSequence = DicomSequence([plane_ori])
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PixelValueTransformationSequence = DicomSequence([rescale])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for s in order:
        item, pos = Dataset(), Dataset()
        pos.ImagePositionPatient = [f"{v:.6f}" for v in positions[s]]
        item.PlanePositionSequence = DicomSequence([pos])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    stored = stored_values(hu[order], slope, intercept)
    ds.NumberOfFrames = n
    ds.Rows, ds.Columns = stored.shape[1:]
    ds.PixelData = stored.tobytes()
    _save(ds, path)
    return SeriesSpec([path], series_uid, study_uid, positions, ori, tuple(pixel_spacing))


def unique_hu(shape: Sequence[int], start: int = -1000) -> np.ndarray:
    """A test volume whose voxels all differ, so that a value identifies its voxel."""
    return (start + np.arange(int(np.prod(shape)))).reshape(tuple(shape)).astype(np.float64)


def read(path: Union[str, Path]) -> Any:
    """Full dataset of a written file (for tests that edit headers)."""
    return pydicom.dcmread(str(path))

"""Small real DICOM radiographs and heat-map overlays for the PACS-sending tests (made with pydicom)."""

import io

import numpy as np
from django.core.files.base import ContentFile
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from studies.models import ImageFormat, ImageStatus, Study
from tests.factories import PredictionFactory, RadiographFactory, StudyResultFactory

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
WIDTH, HEIGHT = 96, 64


def cr_dicom(
    *,
    study_instance_uid: str,
    patient_id: str,
    seed: int = 0,
    orientation: bool = True,
    type2_patient_attributes: bool = True,
) -> tuple[bytes, str]:
    """A 16-bit CR file (uncompressed) and its SOPInstanceUID."""
    rng = np.random.default_rng(seed)
    pixels = (rng.random((HEIGHT, WIDTH)) * 4000).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_instance_uid = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyInstanceUID = study_instance_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.PatientID = patient_id
    if type2_patient_attributes:
        ds.PatientName = "Doe^Jane"
        ds.PatientBirthDate = "19800101"
        ds.PatientSex = "F"
        ds.StudyDate = "20260102"
        ds.StudyTime = "101500"
        ds.AccessionNumber = "ACC-PACS-1"
        ds.StudyID = "1"
        ds.ReferringPhysicianName = "Who^Doctor"
    ds.BodyPartExamined = "HAND"
    ds.ImageLaterality = "R"
    ds.SeriesNumber = 1
    ds.InstanceNumber = seed + 1
    if orientation:
        ds.PatientOrientation = ["P", "F"]
        ds.ImagerPixelSpacing = [0.1, 0.1]
    ds.Rows, ds.Columns = HEIGHT, WIDTH
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), sop_instance_uid


def overlay_png(*, seed: int = 0) -> bytes:
    """A heat-map overlay as the worker stores it: the radiograph in gray, a hot blob in colour."""
    rng = np.random.default_rng(seed + 100)
    gray = rng.integers(40, 200, size=(HEIGHT, WIDTH), dtype=np.uint8)
    rgb = np.repeat(gray[:, :, np.newaxis], 3, axis=2)
    rgb[20:40, 30:60] = [230, 40, 20]  # the hot area
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def dicom_study(
    *,
    images: int = 2,
    demo: bool = False,
    probability: float = 0.8,
    indeterminate: tuple[float, float] | None = None,
    heatmaps: bool = True,
    **dicom_options,
) -> tuple[Study, list[str]]:
    """A predicted study of DICOM radiographs with heat maps and a result; returns it and the
    source SOPInstanceUIDs."""
    study_uid = generate_uid()
    result = StudyResultFactory(
        abnormal_probability=probability, demo=demo, model_name="HAND", indeterminate=indeterminate
    )
    study = result.study
    uids = []
    for index in range(images):
        data, uid = cr_dicom(
            study_instance_uid=study_uid, patient_id=study.patient.mrn, seed=index, **dicom_options
        )
        image = RadiographFactory(
            study=study,
            content=data,
            format=ImageFormat.DICOM,
            width=WIDTH,
            height=HEIGHT,
            status=ImageStatus.DONE,
            original_name=f"image{index}.dcm",
        )
        prediction = PredictionFactory(
            radiograph=image,
            model_name="HAND",
            abnormal_probability=probability,
            demo=demo,
            indeterminate=indeterminate,
            heatmap_note="" if heatmaps else "No heat map: HAND is an opaque graph.",
        )
        if heatmaps:
            prediction.heatmap.save("gradcam.png", ContentFile(overlay_png(seed=index)), save=True)
        uids.append(uid)
    return study, uids

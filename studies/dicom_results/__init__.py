"""Results sent back to the PACS as DICOM: a Structured Report and heat-map secondary captures.

`destinations` (pure Python; the settings import it to check MSKDETECT_DICOM_DESTINATIONS),
`sources` (what the stored original DICOM files say), `sr` and `secondary_capture` (highdicom),
`cstore` (pynetdicom) and `stowrs` (DICOMweb over urllib). No model or database code here: the
writes are in studies.services.pacs_sends, the Celery adapter in studies.tasks.
"""

"""The cohort section's logic, without Qt: the choices it offers, DICOM series as named cases, what is missing."""

from __future__ import annotations

from collections.abc import Iterable

# (shown in the panel, value) in the order of the panel's combo boxes
SOURCES = (("Volumes in the scene", "volumes"), ("Folder", "folder"),
           ("Series selected in the DICOM browser", "dicom"))
OUTPUT_FORMATS = (("NIfTI label maps (.nii.gz)", "nii.gz"), ("NRRD label maps (.nrrd)", "nrrd"),
                  ("DICOM SEG (DICOM series inputs only)", "dicom-seg"))

# DICOM tags as ctkDICOMDatabase.fileValue takes them ("group,element")
PATIENT_NAME, PATIENT_ID, SERIES_DESCRIPTION, SERIES_NUMBER = "0010,0010", "0010,0020", "0008,103e", "0020,0011"


def dicom_series_cases(database, series_uids: Iterable[str]) -> dict[str, list[str]]:
    """Case name -> files of each series, from Slicer's DICOM database (ctkDICOMDatabase's filesForSeries and
    fileValue). The name is the patient (name, else ID) and the series (description, else number, else UID); a
    repeated name is numbered, so each series stays a case."""
    cases: dict[str, list[str]] = {}
    for uid in series_uids:
        files = [str(file) for file in database.filesForSeries(uid)]
        if not files:
            raise ValueError(f"the DICOM database has no files for series {uid}")

        def tag(code: str, first: str = files[0]) -> str:
            return " ".join(str(database.fileValue(first, code) or "").replace("^", " ").split())

        number = tag(SERIES_NUMBER)
        series = tag(SERIES_DESCRIPTION) or (f"series {number}" if number else uid)
        name = " ".join(part for part in (tag(PATIENT_NAME) or tag(PATIENT_ID), series) if part)
        unique, count = name, 1
        while unique in cases:
            count += 1
            unique = f"{name} ({count})"
        cases[unique] = files
    return cases


def cohort_problem(source: str, has_cases: bool, output_folder: str, output_format: str) -> str:
    """What keeps a cohort from starting ("" if nothing): a source of cases, an output folder, and a DICOM SEG only
    of DICOM inputs (scene volumes are exported as plain images)."""
    if not has_cases:
        return {"volumes": "Check the volumes to segment", "folder": "Choose the folder of images or DICOM series",
                "dicom": "Select series in the DICOM browser, then Refresh"}[source]
    if not output_folder:
        return "Choose an output folder"
    if output_format == "dicom-seg" and source == "volumes":
        return "DICOM SEG needs DICOM inputs: a folder of DICOM series or series of the DICOM browser"
    return ""


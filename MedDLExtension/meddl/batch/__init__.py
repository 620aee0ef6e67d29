"""Cohorts: one command over many cases (a folder, a DICOM tree or a CSV table), on this machine or a Ray
cluster, with a summary of every case and resumable runs."""

from .cases import Case, find_cases
from .runner import BatchOutcome, run_batch
from .summary import CaseRecord

__all__ = ["BatchOutcome", "Case", "CaseRecord", "find_cases", "run_batch"]

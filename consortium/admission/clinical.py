"""Clinical tables the patient rules read: deterministic, deliberately generous.

A rule may only flag what no real record could mean, so every bound here is wider than any
reference range: a value outside it is a unit mix-up, a typo or an invention, not an illness.
Sources: LOINC's property and example UCUM units of each code; ICD-10-CM's sex and age edits
(the "Medicare Code Editor" tables, narrowed to the certain cases); medicines' labelled
minimum ages (EMA/MHRA summaries of product characteristics).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LabTest:
    name: str
    bounds: Mapping[str, tuple[float, float]]
    """UCUM unit that fits the test's LOINC property (mass vs substance concentration...) ->
    (lowest, highest) value a living patient can have in it."""
    sex: str | None = None
    """female / male when the test only makes sense for that sex."""


def _test(name: str, bounds: Mapping[str, tuple[float, float]],
          sex: str | None = None) -> LabTest:
    return LabTest(name, dict(bounds), sex)


LOINC_TESTS: Mapping[str, LabTest] = {
    # vital signs
    "8867-4": _test("heart rate", {"/min": (20, 250)}),
    "8480-6": _test("systolic blood pressure", {"mm[Hg]": (50, 260)}),
    "8462-4": _test("diastolic blood pressure", {"mm[Hg]": (20, 160)}),
    "8310-5": _test("body temperature", {"Cel": (30, 43), "[degF]": (86, 109.4)}),
    "59408-5": _test("oxygen saturation (pulse oximetry)", {"%": (50, 100)}),
    "2708-6": _test("oxygen saturation (arterial)", {"%": (50, 100)}),
    "9279-1": _test("respiratory rate", {"/min": (4, 60)}),
    "29463-7": _test("body weight", {"kg": (0.3, 350), "g": (300, 350_000),
                                     "[lb_av]": (0.66, 772)}),
    "8302-2": _test("body height", {"cm": (20, 272), "m": (0.2, 2.72)}),
    # chemistry and haematology
    "15074-8": _test("glucose (substance)", {"mmol/L": (0.5, 60)}),
    "2339-0": _test("glucose (mass, blood)", {"mg/dL": (10, 1100)}),
    "2345-7": _test("glucose (mass, serum)", {"mg/dL": (10, 1100)}),
    "4548-4": _test("HbA1c", {"%": (3, 20)}),
    "2823-3": _test("potassium", {"mmol/L": (1, 10), "meq/L": (1, 10)}),
    "2951-2": _test("sodium", {"mmol/L": (95, 190), "meq/L": (95, 190)}),
    "718-7": _test("haemoglobin", {"g/dL": (2, 25), "g/L": (20, 250)}),
    "2160-0": _test("creatinine (mass)", {"mg/dL": (0.1, 30)}),
    "14682-9": _test("creatinine (substance)", {"umol/L": (10, 2500)}),
    "2093-3": _test("cholesterol", {"mg/dL": (40, 1000)}),
    "14647-2": _test("cholesterol (substance)", {"mmol/L": (1, 25)}),
    "6301-6": _test("INR", {"{INR}": (0.5, 15), "1": (0.5, 15)}),
    "3016-3": _test("TSH", {"m[IU]/L": (0.001, 200), "u[IU]/mL": (0.001, 200)}),
    "6690-2": _test("leukocytes", {"10*3/uL": (0.1, 500), "10*9/L": (0.1, 500)}),
    "777-3": _test("platelets", {"10*3/uL": (1, 2000), "10*9/L": (1, 2000)}),
    "1988-5": _test("CRP", {"mg/L": (0, 600)}),
    "1742-6": _test("ALT", {"U/L": (1, 10_000)}),
    "19080-1": _test("hCG (quantitative)", {"[IU]/L": (0, 500_000), "m[IU]/mL": (0, 500_000)}),
    # sex-specific
    "2106-3": _test("pregnancy test (urine hCG presence)", {"1": (0, 1)}, sex="female"),
    "2118-8": _test("pregnancy test (serum hCG presence)", {"1": (0, 1)}, sex="female"),
    "2857-1": _test("prostate specific antigen", {"ng/mL": (0, 10_000)}, sex="male"),
    "10886-0": _test("free prostate specific antigen", {"ng/mL": (0, 10_000)}, sex="male"),
}
"""LOINC code -> what fits it. Quantitative values in another unit are a unit that does not
fit the test (suspect); within a fitting unit, outside the bounds is impossible (certain)."""

BLOOD_PRESSURE_PANEL = "85354-9"

ICD10_SEX: tuple[tuple[str, str], ...] = (
    ("O", "female"), ("N70", "female"), ("N71", "female"), ("N72", "female"),
    ("N73", "female"), ("N74", "female"), ("N75", "female"), ("N76", "female"),
    ("N77", "female"), ("N8", "female"), ("N9", "female"), ("C51", "female"),
    ("C52", "female"), ("C53", "female"), ("C54", "female"), ("C55", "female"),
    ("C56", "female"), ("C57", "female"), ("C58", "female"), ("M81.0", "female"),
    ("C60", "male"), ("C61", "male"), ("C62", "male"), ("C63", "male"), ("N40", "male"),
    ("N41", "male"), ("N42", "male"), ("N43", "male"), ("N44", "male"), ("N45", "male"),
    ("N46", "male"), ("N47", "male"), ("N48", "male"), ("N49", "male"), ("N50", "male"),
    ("N51", "male"),
)
"""ICD-10 code prefixes that only one sex can have: pregnancy and childbirth (O), female
genital organs (N70-N98, C51-C58), postmenopausal osteoporosis (M81.0); male genital organs
(C60-C63, N40-N51)."""

ICD10_AGE: tuple[tuple[str, float, float, str], ...] = (
    ("O", 8, 66, "pregnancy"),
    ("M81.0", 30, 130, "postmenopausal osteoporosis"),
    ("N95", 25, 130, "menopausal disorders"),
    ("N40", 20, 130, "benign prostatic hyperplasia"),
)
"""ICD-10 prefix, youngest and oldest age (years, inclusive) it is possible at, and what it
is: wider than ICD-10-CM's edits, which flag the merely unusual."""

SNOMED_BODY_SITE_SEX: Mapping[str, tuple[str, str]] = {
    "35039007": ("uterus", "female"), "15497006": ("ovary", "female"),
    "71252005": ("cervix uteri", "female"), "76784001": ("vagina", "female"),
    "41216001": ("prostate", "male"), "40689003": ("testis", "male"),
}
"""SNOMED CT body structures only one sex has (imaging bodySite)."""

DICOM_MODALITIES = frozenset({"CR", "DX", "CT", "MR", "US", "PT", "NM", "MG", "XA", "RF",
                              "OT", "SM", "ES", "IO", "PX", "OP", "XC", "BMD"})
"""DICOM modality codes (system http://dicom.nema.org/resources/ontology/DCM)."""

MAX_DAILY_MG: Mapping[str, float] = {
    "paracetamol": 4000, "acetaminophen": 4000, "ibuprofen": 3200, "naproxen": 1500,
    "aspirin": 4000, "amoxicillin": 6000, "azithromycin": 2000, "ciprofloxacin": 1500,
    "doxycycline": 300, "metformin": 3000, "atorvastatin": 80, "simvastatin": 80,
    "lisinopril": 80, "amlodipine": 10, "metoprolol": 400, "losartan": 100,
    "omeprazole": 120, "pantoprazole": 240, "sertraline": 200, "fluoxetine": 80,
    "levothyroxine": 0.3, "warfarin": 20, "prednisone": 250, "furosemide": 600,
    "gabapentin": 3600, "morphine": 300, "oxycodone": 160, "tramadol": 400,
    "codeine": 240, "diazepam": 40, "insulin glargine": 10, "salbutamol": 32,
    "cetirizine": 20, "clopidogrel": 300, "apixaban": 20, "alendronate": 70,
}
"""Upper bounds on the daily oral dose (mg/day) of common drugs, deliberately generous."""
GENERIC_DOSE_MG_MAX = 4000.0
PAEDIATRIC_AGE = 12

MIN_AGE_YEARS: Mapping[str, float] = {
    "codeine": 12, "tramadol": 12, "oxycodone": 12, "aspirin": 16, "alendronate": 18,
    "doxycycline": 8, "metformin": 10, "atorvastatin": 10, "simvastatin": 10,
    "warfarin": 1,
}
"""Labelled minimum ages: below them the drug is contraindicated or not authorised for
children (codeine and tramadol: EMA contraindication under 12; oxycodone: not recommended
under 12; aspirin: Reye's syndrome under 16; alendronate: adults only; doxycycline: tooth
discolouration under 8)."""

ATC_NAMES: Mapping[str, str] = {
    "N02BE01": "paracetamol", "M01AE01": "ibuprofen", "M01AE02": "naproxen",
    "N02BA01": "aspirin", "J01CA04": "amoxicillin", "J01FA10": "azithromycin",
    "J01MA02": "ciprofloxacin", "J01AA02": "doxycycline", "A10BA02": "metformin",
    "C10AA05": "atorvastatin", "C10AA01": "simvastatin", "C09AA03": "lisinopril",
    "C08CA01": "amlodipine", "C07AB02": "metoprolol", "C09CA01": "losartan",
    "A02BC01": "omeprazole", "A02BC02": "pantoprazole", "N06AB06": "sertraline",
    "N06AB03": "fluoxetine", "H03AA01": "levothyroxine", "B01AA03": "warfarin",
    "H02AB07": "prednisone", "C03CA01": "furosemide", "N03AX12": "gabapentin",
    "N02AA01": "morphine", "N02AA05": "oxycodone", "N02AX02": "tramadol",
    "R05DA04": "codeine", "N05BA01": "diazepam", "A10AE04": "insulin glargine",
    "R03AC02": "salbutamol", "R06AE07": "cetirizine", "B01AC04": "clopidogrel",
    "B01AF02": "apixaban", "M05BA04": "alendronate",
}
"""WHO ATC codes -> the drug names the dose tables use."""

WEIGHT_FOR_AGE_KG_MAX: tuple[tuple[float, float], ...] = (
    (1, 20), (3, 35), (6, 60), (10, 110), (14, 180))
"""(age below, heaviest possible weight in kg): far above the WHO growth charts' extremes."""

MASS_UNITS_TO_MG: Mapping[str, float] = {"mg": 1, "g": 1000, "ug": 0.001, "mcg": 0.001,
                                         "kg": 1_000_000}
PERIOD_UNITS_PER_DAY: Mapping[str, float] = {"d": 1, "h": 24, "wk": 1 / 7, "min": 1440}

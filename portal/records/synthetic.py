"""Deterministic, offline generator of synthetic FHIR R4 patient records.

Used by the portal's demo mode and by tests. Everything here is plain ``dict``/JSON: the runtime
never imports ``fhir.resources`` (that package is a test-only dependency used to check the output).

Shape of the output, modelled on Synthea's bundles:

* one ``Bundle`` per patient (``collection`` by default, or ``transaction`` with ``POST`` requests);
* every ``fullUrl`` is ``urn:uuid:<uuid>`` with the uuid drawn from the patient's own
  ``random.Random(seed)``, and every reference between resources points at one of those fullUrls;
* resources only ever reference resources emitted *before* them, so any prefix of the entry list
  is self-contained (this is how an exact ``size=int`` is honoured: the plan is cut at the target);
* everything is obviously fictional: made-up names, the town of Synthville, 555-01xx phone numbers,
  example.org e-mail, fictional insurers, and ``meta.tag`` ``synthetic`` on every resource.

Codes (LOINC, SNOMED CT, RxNorm, CVX, UCUM) are real, so exports look like real-world records.
"""

from __future__ import annotations

import base64
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

__all__ = [
    "MRN_SYSTEM",
    "RESOURCE_TYPES",
    "SIZE_RANGES",
    "SYNTHETIC_TAG",
    "BundleType",
    "generate_patient_bundle",
    "generate_population",
]

JSON = dict[str, Any]
BundleType = Literal["collection", "transaction"]

RESOURCE_TYPES: tuple[str, ...] = (
    "Patient",
    "Coverage",
    "Encounter",
    "Condition",
    "AllergyIntolerance",
    "Observation",
    "DiagnosticReport",
    "Immunization",
    "Procedure",
    "MedicationRequest",
    "DocumentReference",
)

SYNTHETIC_TAG: dict[str, str] = {
    "system": "https://portal.example/fhir/tags",
    "code": "synthetic",
    "display": "Synthetic test data",
}
MRN_SYSTEM = "urn:oid:2.16.840.1.113883.19.5"

#: Inclusive resource-count ranges of the named sizes (the exact count is drawn from the seed).
SIZE_RANGES: dict[str, tuple[int, int]] = {
    "small": (20, 60),
    "typical": (100, 400),
    "large": (5_000, 6_000),
}
HISTORY_YEARS = 15

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CVX = "http://hl7.org/fhir/sid/cvx"
UCUM = "http://unitsofmeasure.org"
_TERMINOLOGY = "http://terminology.hl7.org/CodeSystem"


# --------------------------------------------------------------------------------------------
# Code tables
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Code:
    """One coded concept: a system, a code and its display text."""

    system: str
    code: str
    display: str

    def coding(self) -> JSON:
        return {"system": self.system, "code": self.code, "display": self.display}

    def concept(self) -> JSON:
        return {"coding": [self.coding()], "text": self.display}


def _loinc(code: str, display: str) -> Code:
    return Code(LOINC, code, display)


def _sct(code: str, display: str) -> Code:
    return Code(SNOMED, code, display)


def _rx(code: str, display: str) -> Code:
    return Code(RXNORM, code, display)


def _cvx(code: str, display: str) -> Code:
    return Code(CVX, code, display)


def _hl7(code_system: str, code: str, display: str) -> Code:
    return Code(f"{_TERMINOLOGY}/{code_system}", code, display)


@dataclass(frozen=True, slots=True)
class _Measure:
    """A quantitative observation: its LOINC code, UCUM unit and normal range."""

    code: Code
    unit: str
    low: float
    high: float
    decimals: int = 0


@dataclass(frozen=True, slots=True)
class _Panel:
    """A lab panel: the DiagnosticReport code and the Observations it groups."""

    code: Code
    tests: tuple[_Measure, ...]


@dataclass(frozen=True, slots=True)
class _Medication:
    code: Code
    dosage: str
    per_day: int


@dataclass(frozen=True, slots=True)
class _Chronic:
    """A long-term condition: what it is treated with and how it is monitored."""

    condition: Code
    medications: tuple[_Medication, ...] = ()
    panels: tuple[_Panel, ...] = ()
    procedures: tuple[Code, ...] = ()
    lab_ranges: tuple[tuple[str, float, float], ...] = ()  # (LOINC code, low, high) once diagnosed
    systolic_shift: int = 0


@dataclass(frozen=True, slots=True)
class _Acute:
    """A short illness or injury, seen at an ambulatory or an emergency visit."""

    condition: Code
    medications: tuple[_Medication, ...] = ()
    procedures: tuple[Code, ...] = ()
    emergency: bool = False


@dataclass(frozen=True, slots=True)
class _Allergy:
    code: Code
    category: Literal["food", "medication", "environment", "biologic"]
    reaction: Code


@dataclass(frozen=True, slots=True)
class _Vaccine:
    code: Code
    available_from: date | None = None


@dataclass(frozen=True, slots=True)
class _VisitKind:
    name: str
    code: Code
    encounter_class: Code
    note_type: Code
    minutes: tuple[int, int]
    provider: str


_VS_CATEGORY = _hl7("observation-category", "vital-signs", "Vital Signs")
_LAB_CATEGORY = _hl7("observation-category", "laboratory", "Laboratory")
_REPORT_CATEGORY = _hl7("v2-0074", "LAB", "Laboratory")

_HEIGHT = _Measure(_loinc("8302-2", "Body height"), "cm", 150, 190, 1)
_WEIGHT = _Measure(_loinc("29463-7", "Body weight"), "kg", 45, 140, 1)
_BMI = _Measure(_loinc("39156-5", "Body mass index (BMI) [Ratio]"), "kg/m2", 18.5, 25, 1)
_HEART_RATE = _Measure(_loinc("8867-4", "Heart rate"), "/min", 58, 92)
_RESP_RATE = _Measure(_loinc("9279-1", "Respiratory rate"), "/min", 12, 19)
_TEMPERATURE = _Measure(_loinc("8310-5", "Body temperature"), "Cel", 36.1, 37.3, 1)
_SPO2 = _Measure(_loinc("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry"), "%", 94, 100)
_BP_PANEL = _loinc("85354-9", "Blood pressure panel with all children optional")
_SYSTOLIC = _Measure(_loinc("8480-6", "Systolic blood pressure"), "mm[Hg]", 105, 135)
_DIASTOLIC = _Measure(_loinc("8462-4", "Diastolic blood pressure"), "mm[Hg]", 64, 86)

_FULL_VITALS = (_HEIGHT, _WEIGHT, _BMI, _HEART_RATE, _RESP_RATE, _TEMPERATURE, _SPO2)
_FOLLOWUP_VITALS = (_WEIGHT, _BMI, _HEART_RATE)
_SICK_VITALS = (_HEART_RATE, _RESP_RATE, _TEMPERATURE, _SPO2)

_BMP = _Panel(
    _loinc("51990-0", "Basic metabolic panel - Blood"),
    (
        _Measure(_loinc("2339-0", "Glucose [Mass/volume] in Blood"), "mg/dL", 70, 100),
        _Measure(_loinc("6299-2", "Urea nitrogen [Mass/volume] in Blood"), "mg/dL", 7, 20),
        _Measure(_loinc("38483-4", "Creatinine [Mass/volume] in Blood"), "mg/dL", 0.6, 1.3, 2),
        _Measure(_loinc("49765-1", "Calcium [Mass/volume] in Blood"), "mg/dL", 8.5, 10.2, 1),
        _Measure(_loinc("2947-0", "Sodium [Moles/volume] in Blood"), "mmol/L", 136, 145),
        _Measure(_loinc("6298-4", "Potassium [Moles/volume] in Blood"), "mmol/L", 3.5, 5.1, 1),
        _Measure(_loinc("2069-3", "Chloride [Moles/volume] in Blood"), "mmol/L", 98, 107),
        _Measure(_loinc("20565-8", "Carbon dioxide, total [Moles/volume] in Blood"), "mmol/L", 22, 29),
    ),
)
_LIPIDS = _Panel(
    _loinc("57698-3", "Lipid panel with direct LDL - Serum or Plasma"),
    (
        _Measure(_loinc("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma"), "mg/dL", 125, 200),
        _Measure(_loinc("2571-8", "Triglyceride [Mass/volume] in Serum or Plasma"), "mg/dL", 50, 150),
        _Measure(
            _loinc("18262-6", "Cholesterol in LDL [Mass/volume] in Serum or Plasma by Direct assay"),
            "mg/dL",
            50,
            130,
        ),
        _Measure(_loinc("2085-9", "Cholesterol in HDL [Mass/volume] in Serum or Plasma"), "mg/dL", 40, 80),
    ),
)
_CBC = _Panel(
    _loinc("58410-2", "CBC panel - Blood by Automated count"),
    (
        _Measure(_loinc("6690-2", "Leukocytes [#/volume] in Blood by Automated count"), "10*3/uL", 4.5, 11, 1),
        _Measure(_loinc("789-8", "Erythrocytes [#/volume] in Blood by Automated count"), "10*6/uL", 4.2, 5.9, 2),
        _Measure(_loinc("718-7", "Hemoglobin [Mass/volume] in Blood"), "g/dL", 12, 17.5, 1),
        _Measure(_loinc("4544-3", "Hematocrit [Volume Fraction] of Blood by Automated count"), "%", 36, 50, 1),
        _Measure(_loinc("777-3", "Platelets [#/volume] in Blood by Automated count"), "10*3/uL", 150, 400),
    ),
)
_HBA1C_CODE = _loinc("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood")
_HBA1C = _Panel(_HBA1C_CODE, (_Measure(_HBA1C_CODE, "%", 4.0, 5.6, 1),))

_METFORMIN = _Medication(
    _rx("860975", "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet"),
    "Take 1 tablet by mouth once daily with the evening meal",
    1,
)
_LISINOPRIL = _Medication(_rx("314076", "lisinopril 10 MG Oral Tablet"), "Take 1 tablet by mouth daily", 1)
_AMLODIPINE = _Medication(_rx("197361", "amLODIPine 5 MG Oral Tablet"), "Take 1 tablet by mouth daily", 1)
_SIMVASTATIN = _Medication(_rx("316672", "Simvastatin 10 MG Oral Tablet"), "Take 1 tablet by mouth at bedtime", 1)
_FLUTICASONE = _Medication(
    _rx("895994", "120 ACTUAT Fluticasone propionate 0.044 MG/ACTUAT Metered Dose Inhaler"),
    "Inhale 2 puffs twice daily",
    2,
)
_ACETAMINOPHEN = _Medication(
    _rx("313782", "Acetaminophen 325 MG Oral Tablet"), "Take 2 tablets every 6 hours as needed", 4
)
_IBUPROFEN = _Medication(_rx("310965", "Ibuprofen 200 MG Oral Tablet"), "Take 1-2 tablets every 6 hours as needed", 4)
_NAPROXEN = _Medication(
    _rx("849574", "Naproxen sodium 220 MG Oral Tablet"), "Take 1 tablet every 12 hours as needed", 2
)
_AMOXICILLIN = _Medication(
    _rx("308182", "Amoxicillin 250 MG Oral Capsule"), "Take 2 capsules by mouth three times daily", 3
)
_PENICILLIN_V = _Medication(
    _rx("834060", "Penicillin V Potassium 250 MG Oral Tablet"), "Take 1 tablet by mouth four times daily", 4
)

_MED_RECONCILIATION = _sct("430193006", "Medication reconciliation (procedure)")
_DEPRESSION_SCREENING = _sct("171207006", "Depression screening (procedure)")
_NEEDS_ASSESSMENT = _sct("710824005", "Assessment of health and social care needs (procedure)")
_SPIROMETRY = _sct("23426006", "Measurement of respiratory function (procedure)")
_THROAT_CULTURE = _sct("117015009", "Throat culture (procedure)")
_SPUTUM_EXAM = _sct("269911007", "Sputum examination (procedure)")

_CHRONIC: tuple[_Chronic, ...] = (
    _Chronic(
        _sct("44054006", "Diabetes mellitus type 2 (disorder)"),
        (_METFORMIN,),
        (_HBA1C, _BMP),
        lab_ranges=(("4548-4", 6.4, 9.2), ("2339-0", 105, 210)),
    ),
    _Chronic(
        _sct("38341003", "Hypertensive disorder, systemic arterial (disorder)"),
        (_LISINOPRIL, _AMLODIPINE),
        (_BMP,),
        systolic_shift=14,
    ),
    _Chronic(
        _sct("55822004", "Hyperlipidemia (disorder)"),
        (_SIMVASTATIN,),
        (_LIPIDS,),
        lab_ranges=(("2093-3", 190, 260), ("18262-6", 120, 190)),
    ),
    _Chronic(_sct("195967001", "Asthma (disorder)"), (_FLUTICASONE,), procedures=(_SPIROMETRY,)),
    _Chronic(_sct("15777000", "Prediabetes (finding)"), panels=(_HBA1C,), lab_ranges=(("4548-4", 5.7, 6.4),)),
    _Chronic(
        _sct("271737000", "Anemia (disorder)"),
        panels=(_CBC,),
        lab_ranges=(("718-7", 9.5, 11.8), ("4544-3", 29, 35)),
    ),
)
_LONG_TERM = _CHRONIC[:3]  # the "large" patient always has these, with years of monitoring labs

_ACUTE: tuple[_Acute, ...] = (
    _Acute(_sct("195662009", "Acute viral pharyngitis (disorder)"), (_ACETAMINOPHEN,), (_THROAT_CULTURE,)),
    _Acute(_sct("43878008", "Streptococcal sore throat (disorder)"), (_PENICILLIN_V,), (_THROAT_CULTURE,)),
    _Acute(_sct("10509002", "Acute bronchitis (disorder)"), (_ACETAMINOPHEN,), (_SPUTUM_EXAM,)),
    _Acute(_sct("444814009", "Viral sinusitis (disorder)")),
    _Acute(_sct("65363002", "Otitis media (disorder)"), (_AMOXICILLIN,)),
    _Acute(_sct("39848009", "Whiplash injury to neck (disorder)"), (_NAPROXEN,), emergency=True),
    _Acute(_sct("70704007", "Sprain of wrist (disorder)"), (_IBUPROFEN,), emergency=True),
    _Acute(
        _sct("62106007", "Concussion with no loss of consciousness (disorder)"),
        (_ACETAMINOPHEN,),
        emergency=True,
    ),
)
_OFFICE_ACUTE = tuple(a for a in _ACUTE if not a.emergency)
_EMERGENCY_ACUTE = tuple(a for a in _ACUTE if a.emergency)

_ALLERGIES: tuple[_Allergy, ...] = (
    _Allergy(_sct("762952008", "Peanut (substance)"), "food", _sct("247472004", "Wheal (finding)")),
    _Allergy(_sct("227493005", "Cashew nuts (substance)"), "food", _sct("271807003", "Eruption of skin (disorder)")),
    _Allergy(_rx("7980", "Penicillin G"), "medication", _sct("271807003", "Eruption of skin (disorder)")),
    _Allergy(
        _sct("256277009", "Grass pollen (substance)"),
        "environment",
        _sct("878820003", "Rhinoconjunctivitis (disorder)"),
    ),
    _Allergy(
        _sct("260147004", "House dust mite (substance)"),
        "environment",
        _sct("267036007", "Dyspnea (finding)"),
    ),
    _Allergy(_sct("111088007", "Latex (substance)"), "environment", _sct("247472004", "Wheal (finding)")),
)

_FLU = _Vaccine(_cvx("140", "Influenza, seasonal, injectable, preservative free"))
_OTHER_VACCINES: tuple[_Vaccine, ...] = (
    _Vaccine(_cvx("113", "Td (adult) preservative free")),
    _Vaccine(_cvx("115", "Tdap")),
    _Vaccine(_cvx("133", "Pneumococcal conjugate PCV 13")),
    _Vaccine(_cvx("33", "pneumococcal polysaccharide vaccine, 23 valent")),
    _Vaccine(_cvx("43", "Hep B, adult")),
    _Vaccine(_cvx("52", "Hep A, adult")),
    _Vaccine(_cvx("187", "zoster vaccine recombinant"), date(2017, 10, 20)),
    _Vaccine(
        _cvx(
            "208",
            "SARS-COV-2 (COVID-19) vaccine, mRNA, spike protein, LNP, preservative free, 30 mcg/0.3mL dose",
        ),
        date(2020, 12, 11),
    ),
)

_AMBULATORY = _hl7("v3-ActCode", "AMB", "ambulatory")
_EMERGENCY = _hl7("v3-ActCode", "EMER", "emergency")
_CLINIC = "Synthville Community Clinic (fictional)"
_HOSPITAL = "Synthville General Hospital (fictional)"
_PROGRESS_NOTE = _loinc("11506-3", "Progress note")
_VISIT_KINDS: dict[str, _VisitKind] = {
    "wellness": _VisitKind(
        "wellness",
        _sct("162673000", "General examination of patient (procedure)"),
        _AMBULATORY,
        _loinc("34117-2", "History and physical note"),
        (30, 45),
        _CLINIC,
    ),
    "followup": _VisitKind(
        "followup",
        _sct("390906007", "Follow-up encounter (procedure)"),
        _AMBULATORY,
        _PROGRESS_NOTE,
        (15, 30),
        _CLINIC,
    ),
    "acute": _VisitKind(
        "acute",
        _sct("185345009", "Encounter for symptom (procedure)"),
        _AMBULATORY,
        _PROGRESS_NOTE,
        (15, 30),
        _CLINIC,
    ),
    "emergency": _VisitKind(
        "emergency",
        _sct("50849002", "Emergency room admission (procedure)"),
        _EMERGENCY,
        _loinc("34111-5", "Emergency department note"),
        (90, 300),
        _HOSPITAL,
    ),
}

_CLINICAL_ACTIVE = _hl7("condition-clinical", "active", "Active")
_CLINICAL_RESOLVED = _hl7("condition-clinical", "resolved", "Resolved")
_CONFIRMED = _hl7("condition-ver-status", "confirmed", "Confirmed")
_ENCOUNTER_DIAGNOSIS = _hl7("condition-category", "encounter-diagnosis", "Encounter Diagnosis")
_ALLERGY_ACTIVE = _hl7("allergyintolerance-clinical", "active", "Active")
_ALLERGY_CONFIRMED = _hl7("allergyintolerance-verification", "confirmed", "Confirmed")
_MRN_TYPE = _hl7("v2-0203", "MR", "Medical record number")
_HEALTH_PLAN = _hl7("v3-ActCode", "HIP", "health insurance plan policy")
_SELF = _hl7("subscriber-relationship", "self", "Self")
_PLAN_CLASS = _hl7("coverage-class", "plan", "Plan")
_CLINICAL_NOTE = Code(
    "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
    "clinical-note",
    "Clinical Note",
)
_LANGUAGES = (
    Code("urn:ietf:bcp:47", "en-US", "English (United States)"),
    Code("urn:ietf:bcp:47", "es", "Spanish"),
    Code("urn:ietf:bcp:47", "fr", "French"),
    Code("urn:ietf:bcp:47", "de", "German"),
)
_MARITAL = (
    _hl7("v3-MaritalStatus", "M", "Married"),
    _hl7("v3-MaritalStatus", "S", "Never Married"),
    _hl7("v3-MaritalStatus", "D", "Divorced"),
    _hl7("v3-MaritalStatus", "W", "Widowed"),
)

# Made-up names, street names and businesses: nothing here should look like a real person.
_GIVEN = {
    "female": ("Alba", "Brisa", "Coralie", "Delphine", "Elowen", "Fenna", "Gwyneth", "Isolde"),
    "male": ("Anders", "Bram", "Caspian", "Dorian", "Emrys", "Florin", "Gideon", "Ivo"),
    "other": ("Rowan", "Sky", "Quinn", "Ash"),
}
_FAMILY = (
    "Testwell", "Sampleton", "Mockridge", "Fauxley", "Dummond", "Placeholt",
    "Fictor", "Synthwaite", "Demoreaux", "Exampleby", "Stubbington", "Fixturo",
)  # fmt: skip
_STREETS = (
    "Mockingbird Lane",
    "Placeholder Way",
    "Sample Street",
    "Fixture Court",
    "Synthetic Row",
    "Demo Drive",
)
_TOWN = "Synthville"
_STATE = "Fictionland"
_COUNTRY = "ZZ"  # ISO 3166 user-assigned code: no real country
_CLINICIANS = (
    "Dr. Ima Placeholder (synthetic)",
    "Dr. Sam Pleton (synthetic)",
    "Dr. Mo Cking (synthetic)",
    "NP Faye Kerr (synthetic)",
)
_INSURERS = (
    "Bluebird Mutual Health (fictional)",
    "Northwind Health Assurance (fictional)",
    "Harborlight Insurance Co. (fictional)",
    "Meadowlark Care Plans (fictional)",
)


# --------------------------------------------------------------------------------------------
# Plans: what happens at each visit (counted exactly before any resource is built)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Profile:
    ages: tuple[int, int]
    chronic_count: tuple[int, int]
    allergy_count: tuple[int, int]
    visit_weights: dict[str, int]
    diagnose_chance: float
    always_chronic: tuple[_Chronic, ...] = ()


_EVERYDAY = _Profile(
    ages=(25, 88),
    chronic_count=(0, 2),
    allergy_count=(0, 2),
    visit_weights={"wellness": 40, "followup": 20, "acute": 30, "emergency": 10},
    diagnose_chance=0.3,
)
_LONG_TERM_CARE = _Profile(
    ages=(45, 85),
    chronic_count=(0, 2),
    allergy_count=(1, 3),
    visit_weights={"wellness": 18, "followup": 62, "acute": 15, "emergency": 5},
    diagnose_chance=0.9,
    always_chronic=_LONG_TERM,
)
_LONG_TERM_THRESHOLD = 1_000  # targets at least this big get the long-term-care profile


@dataclass(slots=True)
class _Visit:
    kind: _VisitKind
    new_chronic: list[_Chronic] = field(default_factory=list)
    acute: _Acute | None = None
    allergies: list[_Allergy] = field(default_factory=list)
    vitals: tuple[_Measure, ...] = ()
    blood_pressure: bool = True
    panels: list[_Panel] = field(default_factory=list)
    vaccines: int = 0
    procedures: list[tuple[Code, Code | None]] = field(default_factory=list)
    medications: list[tuple[_Medication, Code]] = field(default_factory=list)

    def size(self) -> int:
        """How many resources this visit produces (encounter and note included)."""
        conditions = len(self.new_chronic) + (self.acute is not None)
        labs = sum(len(panel.tests) + 1 for panel in self.panels)
        return (
            2
            + conditions
            + len(self.allergies)
            + len(self.vitals)
            + self.blood_pressure
            + labs
            + self.vaccines
            + len(self.procedures)
            + len(self.medications)
        )


@dataclass(slots=True)
class _Planner:
    rng: random.Random
    profile: _Profile
    pending: list[_Chronic]
    active: list[_Chronic] = field(default_factory=list)

    def plan(self, target: int, allergies: list[_Allergy]) -> list[_Visit]:
        visits: list[_Visit] = []
        total = 0
        while total < target:
            visit = self._next_visit()
            if not visits:
                visit.allergies.extend(allergies)
            visits.append(visit)
            total += visit.size()
        return visits

    def _next_visit(self) -> _Visit:
        kinds = list(self.profile.visit_weights)
        name = self.rng.choices(kinds, weights=list(self.profile.visit_weights.values()))[0]
        if name == "followup" and not self.active and not self.pending:
            name = "wellness"
        if name in ("acute", "emergency"):
            return self._sick_visit(_VISIT_KINDS[name])
        return self._care_visit(_VISIT_KINDS[name])

    def _care_visit(self, kind: _VisitKind) -> _Visit:
        """Wellness or follow-up: may diagnose a chronic condition; renews chronic medication."""
        rng = self.rng
        wellness = kind.name == "wellness"
        visit = _Visit(kind, vitals=_FULL_VITALS if wellness else _FOLLOWUP_VITALS)
        if self.pending and rng.random() < self.profile.diagnose_chance:
            visit.new_chronic.append(self.pending.pop(0))
            self.active.extend(visit.new_chronic)
        panels: dict[str, _Panel] = {}
        for chronic in self.active:
            for panel in chronic.panels:
                if chronic in visit.new_chronic or rng.random() < 0.85:
                    panels.setdefault(panel.code.code, panel)
            visit.procedures.extend((p, chronic.condition) for p in chronic.procedures if rng.random() < 0.5)
            visit.medications.extend((m, chronic.condition) for m in chronic.medications)
        if wellness:
            for panel, chance in ((_BMP, 0.5), (_LIPIDS, 0.35), (_CBC, 0.25)):
                if rng.random() < chance:
                    panels.setdefault(panel.code.code, panel)
            visit.vaccines = (rng.random() < 0.7) + (rng.random() < 0.25)
            for procedure, chance in ((_DEPRESSION_SCREENING, 0.5), (_NEEDS_ASSESSMENT, 0.4)):
                if rng.random() < chance:
                    visit.procedures.append((procedure, None))
        if visit.medications and rng.random() < 0.6:
            visit.procedures.append((_MED_RECONCILIATION, None))
        visit.panels = list(panels.values())
        return visit

    def _sick_visit(self, kind: _VisitKind) -> _Visit:
        """Acute office visit or emergency: one new short-lived condition and its treatment."""
        rng = self.rng
        acute = rng.choice(_EMERGENCY_ACUTE if kind.name == "emergency" else _OFFICE_ACUTE)
        visit = _Visit(kind, acute=acute, vitals=_SICK_VITALS)
        visit.medications = [(m, acute.condition) for m in acute.medications]
        visit.procedures = [(p, acute.condition) for p in acute.procedures if rng.random() < 0.8]
        if kind.name == "emergency" and rng.random() < 0.4:
            visit.panels.append(_CBC)
        return visit


# --------------------------------------------------------------------------------------------
# Resource helpers
# --------------------------------------------------------------------------------------------


def _new_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _meta() -> JSON:
    return {"tag": [dict(SYNTHETIC_TAG)]}


def _resource(rng: random.Random, resource_type: str, **fields: Any) -> JSON:
    return {"resourceType": resource_type, "id": _new_uuid(rng), "meta": _meta(), **fields}


def _full_url(resource: JSON) -> str:
    return f"urn:uuid:{resource['id']}"


def _ref(full_url: str, display: str | None = None) -> JSON:
    return {"reference": full_url, "display": display} if display else {"reference": full_url}


def _stamp(moment: datetime) -> str:
    """FHIR dateTime/instant in UTC, in the ``Z`` form fhir.resources itself serialises to."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _quantity(value: float, unit: str) -> JSON:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def _draw(rng: random.Random, low: float, high: float, decimals: int) -> float:
    value = round(rng.uniform(low, high), decimals)
    return int(value) if decimals == 0 else value


def _shift_years(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February
        return day.replace(year=day.year + years, day=28)


@dataclass(slots=True)
class _Chart:
    """Mutable per-patient state while building: where things are, and the body's numbers."""

    rng: random.Random
    today: date
    patient_url: str
    patient_name: str
    height: float
    weight: float
    entries: list[JSON] = field(default_factory=list)
    condition_urls: dict[str, str] = field(default_factory=dict)
    lab_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    systolic_shift: int = 0

    def add(self, resource: JSON) -> str:
        self.entries.append(resource)
        return _full_url(resource)

    def subject(self) -> JSON:
        return _ref(self.patient_url, self.patient_name)


@dataclass(frozen=True, slots=True)
class _Context:
    """Where a clinical resource sits: its chart, encounter and time."""

    chart: _Chart
    encounter_url: str
    start: datetime
    clinician: str

    def links(self, subject_key: str = "subject") -> JSON:
        return {subject_key: self.chart.subject(), "encounter": _ref(self.encounter_url)}


def _patient(rng: random.Random, seed: int, profile: _Profile, today: date) -> tuple[JSON, date]:
    gender = rng.choices(("female", "male", "other", "unknown"), weights=(48, 48, 3, 1))[0]
    given = rng.choice(_GIVEN.get(gender, _GIVEN["other"]))
    family = rng.choice(_FAMILY)
    age = rng.randint(*profile.ages)
    birth = _shift_years(today, -age) - timedelta(days=rng.randrange(1, 365))
    email = f"{given}.{family}.{rng.randrange(100, 1000)}@example.org".lower()
    resource = _resource(
        rng,
        "Patient",
        identifier=[{"use": "usual", "type": _MRN_TYPE.concept(), "system": MRN_SYSTEM, "value": _mrn(seed)}],
        active=True,
        name=[{"use": "official", "text": f"{given} {family}", "family": family, "given": [given]}],
        telecom=[
            {"system": "phone", "value": f"(555) 555-01{rng.randrange(100):02d}", "use": "home"},
            {"system": "email", "value": email, "use": "home"},
        ],
        gender=gender,
        birthDate=birth.isoformat(),
        address=[
            {
                "use": "home",
                "line": [f"{rng.randint(1, 999)} {rng.choice(_STREETS)}"],
                "city": _TOWN,
                "state": _STATE,
                "postalCode": f"00{rng.randrange(1000):03d}",
                "country": _COUNTRY,
            }
        ],
        maritalStatus=rng.choice(_MARITAL).concept(),
        communication=[{"language": rng.choices(_LANGUAGES, weights=(80, 10, 5, 5))[0].concept(), "preferred": True}],
    )
    return resource, birth


def _mrn(seed: int) -> str:
    return f"MRN-{seed % 1_000_000:06d}"


def _coverage(chart: _Chart, since: date) -> JSON:
    rng = chart.rng
    insurer = rng.choice(_INSURERS)
    return _resource(
        rng,
        "Coverage",
        status="active",
        type=_HEALTH_PLAN.concept(),
        subscriberId=f"SYN-{rng.randrange(10**8):08d}",
        beneficiary=chart.subject(),
        relationship=_SELF.concept(),
        period={"start": since.isoformat()},
        payor=[{"display": insurer}],
        **{
            "class": [
                {
                    "type": _PLAN_CLASS.concept(),
                    "value": f"SYN-PLAN-{rng.randint(1, 9)}",
                    "name": "Synthetic plan",
                }
            ]
        },
    )


def _encounter(chart: _Chart, kind: _VisitKind, start: datetime, clinician: str) -> JSON:
    end = start + timedelta(minutes=chart.rng.randint(*kind.minutes))
    return _resource(
        chart.rng,
        "Encounter",
        status="finished",
        **{"class": kind.encounter_class.coding()},
        type=[kind.code.concept()],
        subject=chart.subject(),
        participant=[{"individual": {"display": clinician}}],
        period={"start": _stamp(start), "end": _stamp(end)},
        serviceProvider={"display": kind.provider},
    )


def _condition(ctx: _Context, code: Code, abated: datetime | None) -> JSON:
    resolved = abated is not None and abated.date() < ctx.chart.today
    fields: JSON = {
        "clinicalStatus": (_CLINICAL_RESOLVED if resolved else _CLINICAL_ACTIVE).concept(),
        "verificationStatus": _CONFIRMED.concept(),
        "category": [_ENCOUNTER_DIAGNOSIS.concept()],
        "code": code.concept(),
        **ctx.links(),
        "onsetDateTime": _stamp(ctx.start),
        "recordedDate": _stamp(ctx.start),
    }
    if resolved and abated is not None:
        fields["abatementDateTime"] = _stamp(abated)
    return _resource(ctx.chart.rng, "Condition", **fields)


def _allergy(ctx: _Context, allergy: _Allergy) -> JSON:
    rng = ctx.chart.rng
    return _resource(
        rng,
        "AllergyIntolerance",
        clinicalStatus=_ALLERGY_ACTIVE.concept(),
        verificationStatus=_ALLERGY_CONFIRMED.concept(),
        type="allergy",
        category=[allergy.category],
        criticality=rng.choice(("low", "high")),
        code=allergy.code.concept(),
        **ctx.links("patient"),
        recordedDate=_stamp(ctx.start),
        reaction=[{"manifestation": [allergy.reaction.concept()], "severity": rng.choice(("mild", "moderate"))}],
    )


def _observation(ctx: _Context, code: Code, category: Code, issued: datetime, **value: Any) -> JSON:
    return _resource(
        ctx.chart.rng,
        "Observation",
        status="final",
        category=[category.concept()],
        code=code.concept(),
        **ctx.links(),
        effectiveDateTime=_stamp(ctx.start),
        issued=_stamp(issued),
        **value,
    )


def _reference_range(measure: _Measure) -> list[JSON]:
    return [{"low": _quantity(measure.low, measure.unit), "high": _quantity(measure.high, measure.unit)}]


def _vital_value(chart: _Chart, measure: _Measure, kind: _VisitKind) -> float:
    rng = chart.rng
    if measure is _HEIGHT:
        return round(chart.height, 1)
    if measure is _WEIGHT:
        chart.weight = min(max(chart.weight + rng.gauss(0, 1.2), 40.0), 180.0)
        return round(chart.weight, 1)
    if measure is _BMI:
        return round(chart.weight / (chart.height / 100) ** 2, 1)
    if measure is _TEMPERATURE and kind.name == "acute":
        return _draw(rng, 37.0, 38.9, 1)
    return _draw(rng, measure.low, measure.high, measure.decimals)


def _vital_sign(ctx: _Context, measure: _Measure, kind: _VisitKind) -> JSON:
    value = _vital_value(ctx.chart, measure, kind)
    return _observation(ctx, measure.code, _VS_CATEGORY, ctx.start, valueQuantity=_quantity(value, measure.unit))


def _blood_pressure(ctx: _Context) -> JSON:
    rng = ctx.chart.rng
    shift = ctx.chart.systolic_shift
    components = [
        {
            "code": measure.code.concept(),
            "valueQuantity": _quantity(_draw(rng, measure.low + extra, measure.high + extra, 0), measure.unit),
        }
        for measure, extra in ((_SYSTOLIC, shift), (_DIASTOLIC, shift // 2))
    ]
    return _observation(ctx, _BP_PANEL, _VS_CATEGORY, ctx.start, component=components)


def _lab_result(ctx: _Context, measure: _Measure, issued: datetime) -> JSON:
    spread = (measure.high - measure.low) * 0.1
    low, high = ctx.chart.lab_ranges.get(measure.code.code, (measure.low - spread, measure.high + spread))
    value = _draw(ctx.chart.rng, max(low, 0.0), high, measure.decimals)
    return _observation(
        ctx,
        measure.code,
        _LAB_CATEGORY,
        issued,
        valueQuantity=_quantity(value, measure.unit),
        referenceRange=_reference_range(measure),
    )


def _diagnostic_report(ctx: _Context, panel: _Panel, results: list[str], issued: datetime) -> JSON:
    return _resource(
        ctx.chart.rng,
        "DiagnosticReport",
        status="final",
        category=[_REPORT_CATEGORY.concept()],
        code=panel.code.concept(),
        **ctx.links(),
        effectiveDateTime=_stamp(ctx.start),
        issued=_stamp(issued),
        performer=[{"display": _HOSPITAL}],
        result=[_ref(url) for url in results],
    )


def _immunization(ctx: _Context, vaccine: _Vaccine) -> JSON:
    rng = ctx.chart.rng
    return _resource(
        rng,
        "Immunization",
        status="completed",
        vaccineCode=vaccine.code.concept(),
        **ctx.links("patient"),
        occurrenceDateTime=_stamp(ctx.start),
        primarySource=True,
        lotNumber=f"SYN{rng.randrange(10**5):05d}",
    )


def _procedure(ctx: _Context, code: Code, reason_url: str | None) -> JSON:
    end = ctx.start + timedelta(minutes=ctx.chart.rng.randint(5, 20))
    fields: JSON = {
        "status": "completed",
        "code": code.concept(),
        **ctx.links(),
        "performedPeriod": {"start": _stamp(ctx.start), "end": _stamp(end)},
    }
    if reason_url:
        fields["reasonReference"] = [_ref(reason_url)]
    return _resource(ctx.chart.rng, "Procedure", **fields)


def _medication_request(ctx: _Context, medication: _Medication, reason_url: str | None, days: int) -> JSON:
    still_running = ctx.start.date() + timedelta(days=days) >= ctx.chart.today
    fields: JSON = {
        "status": "active" if still_running else "completed",
        "intent": "order",
        "medicationCodeableConcept": medication.code.concept(),
        **ctx.links(),
        "authoredOn": _stamp(ctx.start),
        "requester": {"display": ctx.clinician},
        "dosageInstruction": [
            {
                "sequence": 1,
                "text": medication.dosage,
                "timing": {"repeat": {"frequency": medication.per_day, "period": 1, "periodUnit": "d"}},
            }
        ],
        "dispenseRequest": {"expectedSupplyDuration": {**_quantity(days, "d"), "unit": "days"}},
    }
    if reason_url:
        fields["reasonReference"] = [_ref(reason_url)]
    return _resource(ctx.chart.rng, "MedicationRequest", **fields)


def _note_text(ctx: _Context, visit: _Visit) -> str:
    assessment = [c.condition.display for c in visit.new_chronic]
    if visit.acute:
        assessment.append(visit.acute.condition.display)
    plan = sorted({m.code.display for m, _ in visit.medications}) or ["no new medication"]
    return (
        "SYNTHETIC RECORD - NOT A REAL PATIENT\n"
        f"{visit.kind.code.display} for {ctx.chart.patient_name} on {ctx.start.date().isoformat()}.\n"
        f"Assessment: {'; '.join(assessment) or 'no new problems'}.\n"
        f"Plan: {'; '.join(plan)}. Return as needed.\n"
        f"Signed: {ctx.clinician}\n"
    )


def _document_reference(ctx: _Context, visit: _Visit, end: str) -> JSON:
    text = _note_text(ctx, visit)
    return _resource(
        ctx.chart.rng,
        "DocumentReference",
        status="current",
        docStatus="final",
        type=visit.kind.note_type.concept(),
        category=[_CLINICAL_NOTE.concept()],
        subject=ctx.chart.subject(),
        date=_stamp(ctx.start),
        author=[{"display": ctx.clinician}],
        description=f"{visit.kind.note_type.display} (synthetic)",
        content=[
            {
                "attachment": {
                    "contentType": "text/plain; charset=utf-8",
                    "language": "en-US",
                    "data": base64.b64encode(text.encode()).decode("ascii"),
                    "title": visit.kind.note_type.display,
                    "creation": _stamp(ctx.start),
                }
            }
        ],
        context={"encounter": [_ref(ctx.encounter_url)], "period": {"start": _stamp(ctx.start), "end": end}},
    )


# --------------------------------------------------------------------------------------------
# Visits: turning a plan into resources, in an order where references only point backwards
# --------------------------------------------------------------------------------------------


def _build_visit(chart: _Chart, visit: _Visit, start: datetime) -> None:
    rng = chart.rng
    clinician = rng.choice(_CLINICIANS)
    encounter = _encounter(chart, visit.kind, start, clinician)
    ctx = _Context(chart, chart.add(encounter), start, clinician)
    _record_diagnoses(ctx, visit)
    for allergy in visit.allergies:
        chart.add(_allergy(ctx, allergy))
    for measure in visit.vitals:
        chart.add(_vital_sign(ctx, measure, visit.kind))
    if visit.blood_pressure:
        chart.add(_blood_pressure(ctx))
    for panel in visit.panels:
        _record_panel(ctx, panel)
    for vaccine in _pick_vaccines(rng, visit.vaccines, start.date()):
        chart.add(_immunization(ctx, vaccine))
    for code, reason in visit.procedures:
        chart.add(_procedure(ctx, code, _reason_url(chart, reason)))
    days = 90 if visit.acute is None else rng.randint(5, 14)
    for medication, reason in visit.medications:
        chart.add(_medication_request(ctx, medication, _reason_url(chart, reason), days))
    chart.add(_document_reference(ctx, visit, encounter["period"]["end"]))


def _record_diagnoses(ctx: _Context, visit: _Visit) -> None:
    chart = ctx.chart
    for chronic in visit.new_chronic:
        chart.condition_urls[chronic.condition.code] = chart.add(_condition(ctx, chronic.condition, None))
        chart.lab_ranges.update((code, (low, high)) for code, low, high in chronic.lab_ranges)
        chart.systolic_shift += chronic.systolic_shift
    if visit.acute is not None:
        abated = ctx.start + timedelta(days=chart.rng.randint(7, 21))
        code = visit.acute.condition
        chart.condition_urls[code.code] = chart.add(_condition(ctx, code, abated))


def _record_panel(ctx: _Context, panel: _Panel) -> None:
    issued = ctx.start + timedelta(hours=ctx.chart.rng.randint(1, 6))
    results = [ctx.chart.add(_lab_result(ctx, measure, issued)) for measure in panel.tests]
    ctx.chart.add(_diagnostic_report(ctx, panel, results, issued))


def _reason_url(chart: _Chart, reason: Code | None) -> str | None:
    return None if reason is None else chart.condition_urls.get(reason.code)


def _pick_vaccines(rng: random.Random, count: int, day: date) -> list[_Vaccine]:
    if count <= 0:
        return []
    available = [v for v in _OTHER_VACCINES if v.available_from is None or v.available_from <= day]
    return [_FLU, *rng.sample(available, count - 1)]


def _visit_starts(rng: random.Random, count: int, first: date, today: date) -> list[datetime]:
    span = max((today - first).days, 1)
    days = sorted(rng.randrange(span) for _ in range(count))
    return [
        datetime.combine(first + timedelta(days=day), time(rng.randint(8, 16), rng.choice((0, 15, 30, 45))), UTC)
        for day in days
    ]


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _target_count(rng: random.Random, size: str | int) -> int:
    if isinstance(size, bool):
        raise TypeError("size must be 'small', 'typical', 'large' or an int")
    if isinstance(size, int):
        if size < 1:
            raise ValueError(f"size must be at least 1 resource, got {size}")
        return size
    if size not in SIZE_RANGES:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(SIZE_RANGES)} or an int")
    return rng.randint(*SIZE_RANGES[size])


def _bundle_entry(resource: JSON, bundle_type: BundleType) -> JSON:
    entry: JSON = {"fullUrl": _full_url(resource), "resource": resource}
    if bundle_type == "transaction":
        entry["request"] = {"method": "POST", "url": resource["resourceType"]}
        if resource["resourceType"] == "Patient":
            mrn = resource["identifier"][0]["value"]
            entry["request"]["ifNoneExist"] = f"identifier={MRN_SYSTEM}|{mrn}"
    return entry


def generate_patient_bundle(
    seed: int,
    *,
    size: str | int = "typical",
    bundle_type: BundleType = "collection",
    today: date | None = None,
) -> dict[str, Any]:
    """One synthetic patient's record as a FHIR R4 ``Bundle`` (plain JSON-ready dict).

    ``size`` is ``"small"`` (20-60 resources), ``"typical"`` (100-400), ``"large"`` (5,000-6,000,
    15 years of chronic-care visits with labs) or an exact resource count. The output depends only
    on ``seed``, ``size``, ``bundle_type`` and ``today``; pass ``today`` to make it reproducible.
    The Patient's MRN is ``MRN-<seed mod 10**6, six digits>``.
    """
    if bundle_type not in ("collection", "transaction"):
        raise ValueError(f"unknown bundle_type {bundle_type!r}")
    today = today or date.today()
    rng = random.Random(seed)  # noqa: S311 - synthetic demo data, not security
    target = _target_count(rng, size)
    profile = _LONG_TERM_CARE if target >= _LONG_TERM_THRESHOLD else _EVERYDAY

    patient, birth = _patient(rng, seed, profile, today)
    first = max(_shift_years(today, -HISTORY_YEARS), _shift_years(birth, 18))
    height = rng.uniform(165, 190) if patient["gender"] == "male" else rng.uniform(152, 176)
    chart = _Chart(
        rng=rng,
        today=today,
        patient_url=_full_url(patient),
        patient_name=patient["name"][0]["text"],
        height=height,
        weight=rng.uniform(19, 34) * (height / 100) ** 2,  # a BMI between 19 and 34
    )
    chart.add(patient)
    chart.add(_coverage(chart, first))

    others = [c for c in _CHRONIC if c not in profile.always_chronic]
    pending = list(profile.always_chronic) + rng.sample(others, rng.randint(*profile.chronic_count))
    allergies = rng.sample(_ALLERGIES, rng.randint(*profile.allergy_count))
    visits = _Planner(rng, profile, pending).plan(target - len(chart.entries), allergies)
    for visit, start in zip(visits, _visit_starts(rng, len(visits), first, today), strict=True):
        _build_visit(chart, visit, start)

    return {
        "resourceType": "Bundle",
        "id": _new_uuid(rng),
        "meta": _meta(),
        "type": bundle_type,
        "timestamp": _stamp(datetime.combine(today, time(0, 0), UTC)),
        "entry": [_bundle_entry(resource, bundle_type) for resource in chart.entries[:target]],
    }


def generate_population(
    count: int,
    *,
    seed: int = 0,
    large: int = 2,
    today: date | None = None,
    bundle_type: BundleType = "collection",
) -> Iterator[dict[str, Any]]:
    """Yield ``count`` patient bundles: ``large`` of them "large", the rest mixed small/typical.

    Patient ``i`` (0-based) is ``generate_patient_bundle(seed * 1_000_000 + i + 1, ...)``, so MRNs
    are unique within a population and any one patient can be regenerated on its own. Bundles are
    produced lazily, one at a time, to keep memory flat.
    """
    if count < 0 or large < 0:
        raise ValueError("count and large must not be negative")
    today = today or date.today()
    rng = random.Random(seed)  # noqa: S311 - synthetic demo data, not security
    large_at = set(rng.sample(range(count), min(large, count)))
    for index in range(count):
        size = "large" if index in large_at else rng.choice(("small", "typical"))
        yield generate_patient_bundle(seed * 1_000_000 + index + 1, size=size, bundle_type=bundle_type, today=today)

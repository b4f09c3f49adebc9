"""The data categories: which resource types belong to which category, and how long each is kept.

This one table drives encryption (one data key per patient and category), retention, erasure
(erase or retain with a legal basis) and the export's table of contents.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Retention:
    years: int
    anchor: str  # what the period counts from
    basis: str  # the legal basis shown to the patient and on the deletion certificate


@dataclass(frozen=True)
class Category:
    code: str
    title: str
    description: str
    resource_types: tuple[str, ...]
    retention: Retention | None  # None: erased on request


MEDICAL_RECORDS = Retention(
    years=10,
    anchor="last treatment",
    basis="Medical records must be kept for 10 years after the last treatment (health records retention law; "
    "GDPR Art. 17(3)(b) and (c) exemption)",
)

CATEGORIES: tuple[Category, ...] = (
    Category(
        "demographics",
        "Identity and contact details",
        "Your name, date of birth, address, phone, e-mail and identifiers such as your MRN.",
        ("Patient", "RelatedPerson"),
        MEDICAL_RECORDS,
    ),
    Category(
        "clinical",
        "Clinical record",
        "Visits, diagnoses, test results, procedures, allergies, immunisations and care plans.",
        (
            "Encounter",
            "Condition",
            "Observation",
            "Procedure",
            "DiagnosticReport",
            "AllergyIntolerance",
            "Immunization",
            "CarePlan",
            "CareTeam",
            "Goal",
            "ServiceRequest",
            "ImagingStudy",
            "Device",
            "Practitioner",
            "PractitionerRole",
            "Organization",
            "Location",
            "Provenance",
            "SupplyDelivery",
        ),
        MEDICAL_RECORDS,
    ),
    Category(
        "medications",
        "Medications",
        "Prescriptions and the medicines you were given.",
        ("MedicationRequest", "MedicationStatement", "MedicationAdministration", "MedicationDispense", "Medication"),
        MEDICAL_RECORDS,
    ),
    Category(
        "documents",
        "Documents and letters",
        "Clinical notes, letters and scanned documents.",
        ("DocumentReference",),
        MEDICAL_RECORDS,
    ),
    Category(
        "billing",
        "Billing and insurance",
        "Your insurance cover, claims and payments.",
        ("Coverage", "Claim", "ExplanationOfBenefit", "Account", "Invoice"),
        Retention(
            years=7,
            anchor="the end of the financial year",
            basis="Tax and accounting records must be kept for 7 years (GDPR Art. 17(3)(b))",
        ),
    ),
    Category(
        "consent",
        "Consent records",
        "Your consent choices and the receipts we gave you.",
        ("Consent",),
        Retention(
            years=6,
            anchor="the consent change",
            basis="Proof of consent must be kept (GDPR Art. 7(1)); HIPAA 45 CFR 164.530(j): 6 years",
        ),
    ),
    Category(
        "access_log",
        "Access history",
        "Who accessed your record, when and why.",
        ("AuditEvent",),
        Retention(
            years=6,
            anchor="the access",
            basis="Access logs must be kept for 6 years (HIPAA 45 CFR 164.312(b), 164.530(j))",
        ),
    ),
    Category(
        "requests",
        "Your privacy requests",
        "Your export and erasure requests, the messages about them and the certificates we issued.",
        (),
        Retention(
            years=6,
            anchor="the request was closed",
            basis="Records of how we handled your requests prove we met the law (GDPR Art. 5(2) and 12; "
            "HIPAA 45 CFR 164.530(j): 6 years)",
        ),
    ),
    Category("wellness", "Wellness data you uploaded", "Measurements and notes you added yourself.", (), None),
    Category("preferences", "Preferences", "Your portal settings and notification choices.", (), None),
    Category("portal_activity", "Portal activity", "Your sign-in history and portal usage details.", (), None),
)

BY_CODE: dict[str, Category] = {category.code: category for category in CATEGORIES}
BY_RESOURCE_TYPE: dict[str, str] = {
    resource_type: category.code for category in CATEGORIES for resource_type in category.resource_types
}
PATIENT_UPLOAD_CATEGORY = "wellness"


def category_for(resource_type: str) -> str | None:
    """The category a resource type is stored under; None when the portal does not store that type."""
    return BY_RESOURCE_TYPE.get(resource_type)

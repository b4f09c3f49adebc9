"""The consent purposes a new installation starts with (admins can add and change them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DefaultPurpose:
    code: str
    title: str
    summary: str
    lawful_basis: str
    categories: str
    recipients: str
    jurisdiction: str
    mode: str
    purpose_of_use: str
    notice: str


CONSENT_BASIS = "Consent (GDPR Art. 6(1)(a) and 9(2)(a); HIPAA 45 CFR 164.508 authorization)"

DEFAULT_PURPOSES: tuple[DefaultPurpose, ...] = (
    DefaultPurpose(
        "hie-sharing",
        "Sharing with the regional health information exchange",
        "Lets doctors and hospitals in the region see your records when they treat you.",
        "Consent (GDPR Art. 9(2)(h) with national opt-out; HIPAA treatment disclosure)",
        "demographics,clinical,medications",
        "Regional Health Information Exchange",
        "EU/US",
        "opt-out",
        "TREAT",
        "## Sharing with the regional health information exchange\n\n"
        "When you are treated by another doctor or hospital in the region, they can look up your recent "
        "diagnoses, medications, allergies and test results through the exchange. This avoids repeated "
        "tests and helps in emergencies.\n\n"
        "- **What is shared:** identity details, clinical record, medications.\n"
        "- **With whom:** care providers connected to the exchange, only while they treat you.\n"
        "- **Your choice:** sharing is on unless you say no. You can say no at any time; it takes effect at once.\n",
    ),
    DefaultPurpose(
        "research-deidentified",
        "Research with de-identified data",
        "Your data, with names and identifiers removed, may be used in approved medical research.",
        CONSENT_BASIS,
        "clinical,medications",
        "University Hospital Research Registry",
        "EU/US",
        "opt-in",
        "HRESCH",
        "## Research with de-identified data\n\n"
        "Approved research projects may study records from which your name, address, identifiers and exact "
        "dates have been removed. Researchers never receive information that identifies you.\n\n"
        "- **What is used:** clinical record and medications, de-identified.\n"
        "- **With whom:** the University Hospital Research Registry and projects its ethics board approves.\n"
        "- **Your choice:** nothing is used unless you agree. You can withdraw at any time; data already "
        "used in a finished study cannot be taken back.\n",
    ),
    DefaultPurpose(
        "research-contact",
        "Being contacted about research studies",
        "Researchers may contact you to ask whether you want to take part in a study.",
        CONSENT_BASIS,
        "demographics",
        "University Hospital Research Registry",
        "EU/US",
        "opt-in",
        "CLINTRCH",
        "## Being contacted about research studies\n\n"
        "If a study might suit you, the research team may contact you by e-mail or phone to explain it. "
        "Saying yes here does not sign you up for anything.\n",
    ),
    DefaultPurpose(
        "reminders",
        "Appointment reminders by SMS and e-mail",
        "We send reminders about your appointments to your phone and e-mail.",
        "Consent (GDPR Art. 6(1)(a)); ePrivacy rules for electronic messages",
        "demographics",
        "SMS and e-mail delivery provider (processor)",
        "EU/US",
        "opt-in",
        "HOPERAT",
        "## Appointment reminders\n\n"
        "We send a short reminder the day before an appointment. Messages never contain health details.\n",
    ),
    DefaultPurpose(
        "insurer-sharing",
        "Sharing with your insurer beyond billing",
        "Your insurer may receive summaries of your care for care-management programmes.",
        CONSENT_BASIS,
        "clinical,billing",
        "Your health insurer",
        "US",
        "opt-in",
        "HPAYMT",
        "## Sharing with your insurer beyond billing\n\n"
        "Billing information is shared with your insurer for payment anyway. With your agreement, your "
        "insurer may also receive summaries of diagnoses and treatments for its care-management programmes.\n",
    ),
    DefaultPurpose(
        "family-results",
        "Family or caregiver access to your results",
        "A family member or caregiver you name may see your test results.",
        CONSENT_BASIS,
        "clinical",
        "Family members or caregivers you name",
        "EU/US",
        "opt-in",
        "FAMRQT",
        "## Family or caregiver access to results\n\n"
        "If you agree, the people you name to the privacy office may see your test results. You can "
        "withdraw at any time.\n",
    ),
)

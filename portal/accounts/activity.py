"""Plain-language descriptions of security events for the account holder."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DESCRIPTIONS = {
    "auth.signin": "Signed in with a passkey",
    "auth.signin_failed": "A sign-in attempt failed",
    "auth.enrolled": "Account set up",
    "auth.invitation_created": "An invitation to set up the account was issued",
    "auth.invitation_verified": "Date of birth confirmed for the invitation",
    "auth.invitation_wrong_answer": "A wrong date of birth was entered for the invitation",
    "auth.enrolment_failed": "Setting up a passkey failed",
    "auth.passkey_added": "A passkey was added",
    "auth.passkey_add_failed": "Adding a passkey failed",
    "auth.passkey_removed": "A passkey was removed",
    "auth.passkey_renamed": "A passkey was renamed",
    "auth.recovery_codes_created": "New recovery codes were created",
    "auth.recovery_code_used": "Signed in with a recovery code",
    "auth.recovery_code_failed": "A recovery code was refused",
    "auth.stepup": "Identity confirmed with a passkey",
    "auth.stepup_failed": "An identity confirmation failed",
    "auth.session_revoked": "A session was signed out",
    "auth.signout": "Signed out",
    "auth.lockout": "The account was locked after too many failed attempts",
    "auth.counter_regression": "A passkey reported an unexpected counter (possible copy of the passkey)",
    "account.reenrolment": "The privacy office reset access to the account",
    "account.disabled": "The account was disabled",
    "account.enabled": "The account was enabled again",
    "account.unlocked": "The account was unlocked by the privacy office",
}


def describe_event(event: Mapping[str, Any]) -> str:
    action = str(event.get("action", ""))
    return DESCRIPTIONS.get(action, action.replace(".", ": ").replace("_", " ").capitalize())

"""Accounts: invitations and enrolment, passkey sign-in, step-up, passkeys, recovery codes, staff.

Every authentication event goes to the audit ledger with the account as subject, so the
account holder sees it on the security activity page; failures count towards throttling and,
after 100 in a row, a lock that only staff can lift (NIST SP 800-63B §5.2.2).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, cast

from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Table, select, update
from sqlalchemy.orm import Session

from portal.accounts.models import Account, Credential, Invitation, RecoveryCode, StepUpEvidence
from portal.accounts.passkeys import Ceremonies, CeremonyError, Options, new_user_handle
from portal.audit.ledger import AuditEvent, Ledger
from portal.db import Database, retried_on_collision, unique_key, utcnow
from portal.notify import Notifier
from portal.records.service import RecordStore
from portal.security.ratelimit import Limit, RateLimiter, TooManyRequestsError
from portal.security.secrets import SECRET_HASHER
from portal.security.sessions import SessionService, SubjectKind, WebSession

INVITATION_LIFETIME = timedelta(hours=72)
PATIENT_ACCOUNT_KEY = unique_key(cast(Table, Account.__table__), "patient_id")
EMAIL_KEY = unique_key(cast(Table, Account.__table__), "email")
INVITATION_MAX_WRONG_ANSWERS = 5
STEP_UP_FRESHNESS = timedelta(minutes=5)
LOCK_AFTER_FAILURES = 100
THROTTLE_AFTER_FAILURES = 5
MAX_THROTTLE_SECONDS = 900
RECOVERY_CODE_COUNT = 10
RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: read aloud and typed by hand
RECOVERY_SECRET_CHARS = 16  # 16 * log2(31) = 79 bits
STAFF_ROLES = ("privacy_officer", "privacy_admin", "regulator")
PASSKEY_NAME_MAX = 60


class AccountError(Exception):
    """A refusal with a message that is safe to show to the user."""


class StepUpRequiredError(AccountError):
    pass


@dataclass(frozen=True)
class SignedIn:
    token: str
    account: Account
    next_step: str  # where to go: "home", or "add-passkey" after a recovery code


@dataclass(frozen=True)
class InvitationView:
    kind: str  # patient | staff
    purpose: str
    needs_birth_date: bool
    status: str  # live | expired | used | dead


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def actor_ref(account: Account) -> str:
    return f"{account.kind}:{account.id}"


class AccountService:
    def __init__(
        self,
        *,
        db: Database,
        ledger: Ledger,
        records: RecordStore,
        ceremonies: Ceremonies,
        sessions: SessionService,
        limiter: RateLimiter,
        notifier: Notifier,
        origin: str,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.ledger = ledger
        self.records = records
        self.ceremonies = ceremonies
        self.sessions = sessions
        self.limiter = limiter
        self.notifier = notifier
        self.origin = origin
        self.clock = clock

    # ================================================================== invitations

    def invite_patient(self, mrn: str, *, actor: str) -> str:
        """A single-use enrolment link for the patient with this MRN."""
        patient_id = self.records.find_by_mrn(mrn)
        if patient_id is None:
            raise AccountError("no patient has that MRN")
        # Two officers inviting a new patient at once: the second finds the first's account and invites again.
        return retried_on_collision(lambda: self._invite_patient(patient_id, actor=actor), PATIENT_ACCOUNT_KEY)

    def _invite_patient(self, patient_id: str, *, actor: str) -> str:
        with self.db.write() as session:
            account = session.scalars(select(Account).where(Account.patient_id == patient_id)).one_or_none()
            if account is None:
                account = Account(kind="patient", patient_id=patient_id, user_handle=new_user_handle())
                session.add(account)
                session.flush()
            elif account.status == "active":
                raise AccountError("this patient has already enrolled; use staff-assisted re-enrolment instead")
            return self._invite(session, account, purpose="enrol", actor=actor)

    def reenrol_patient(self, mrn: str, *, identity_check: str, actor: str) -> str:
        """After both passkeys and recovery codes are lost: revoke everything, invite again."""
        identity_check = identity_check.strip()
        if len(identity_check) < 10:
            raise AccountError("describe how the patient's identity was checked (at least 10 characters)")
        patient_id = self.records.find_by_mrn(mrn)
        if patient_id is None:
            raise AccountError("no patient has that MRN")
        with self.db.write() as session:
            account = session.scalars(select(Account).where(Account.patient_id == patient_id)).one_or_none()
            if account is None:
                raise AccountError("this patient has no account yet; send an ordinary invitation")
            removed = self._revoke_everything(session, account, reason="reenrolment")
            account.status = "pending"
            account.failed_attempts, account.throttled_until, account.locked_at = 0, None, None
            link = self._invite(session, account, purpose="reenrol", actor=actor, identity_check=identity_check)
            self.ledger.append(
                session,
                AuditEvent(
                    action="account.reenrolment",
                    actor=actor,
                    role="privacy_officer",
                    subject=account.id,
                    object=f"account:{account.id}",
                    details={"credentials_revoked": removed},
                    payload={"identity_check": identity_check},
                ),
            )
            self.notifier.notify(session, account.id, "reenrolment", key=token_hash(link)[:16])
            return link

    def create_staff(self, email: str, role: str, display_name: str, *, actor: str) -> str:
        email = email.strip().lower()
        if role not in STAFF_ROLES:
            raise AccountError(f"role must be one of {', '.join(STAFF_ROLES)}")
        if "@" not in email or len(email) > 254 or " " in email:
            raise AccountError("enter a valid e-mail address")
        if not display_name.strip() or len(display_name) > 120:
            raise AccountError("enter the person's name (up to 120 characters)")
        # The same person added twice at once: the second is told the address is taken, as it would be later.
        return retried_on_collision(lambda: self._create_staff(email, role, display_name, actor=actor), EMAIL_KEY)

    def _create_staff(self, email: str, role: str, display_name: str, *, actor: str) -> str:
        with self.db.write() as session:
            if session.scalars(select(Account).where(Account.email == email)).first() is not None:
                raise AccountError("an account with that e-mail address already exists")
            account = Account(
                kind="staff", email=email, display_name=display_name.strip(), roles=role, user_handle=new_user_handle()
            )
            session.add(account)
            session.flush()
            return self._invite(session, account, purpose="enrol", actor=actor)

    def _invite(
        self, session: Session, account: Account, *, purpose: str, actor: str, identity_check: str | None = None
    ) -> str:
        now = self.clock()
        # Earlier links for the same account stop working: only the newest may be used.
        session.execute(
            update(Invitation)
            .where(Invitation.account_id == account.id, Invitation.used_at.is_(None), Invitation.dead_at.is_(None))
            .values(dead_at=now)
        )
        token = secrets.token_urlsafe(32)
        session.add(
            Invitation(
                token_hash=token_hash(token),
                account_id=account.id,
                purpose=purpose,
                created_by=actor,
                identity_check=identity_check,
                created_at=now,
                expires_at=now + INVITATION_LIFETIME,
            )
        )
        self.ledger.append(
            session,
            AuditEvent(
                action="auth.invitation_created",
                actor=actor,
                subject=account.id,
                object=f"account:{account.id}",
                details={"purpose": purpose},
            ),
        )
        return f"{self.origin}/enrol/{token}"

    def invitation(self, token: str) -> InvitationView:
        with self.db.read() as session:
            found = self._invitation_row(session, token)
            if found is None:
                return InvitationView("patient", "enrol", needs_birth_date=False, status="dead")
            invitation, account = found
            return InvitationView(
                account.kind, invitation.purpose, self._needs_birth_date(invitation, account), self._status(invitation)
            )

    def _invitation_row(self, session: Session, token: str) -> tuple[Invitation, Account] | None:
        invitation = session.scalars(select(Invitation).where(Invitation.token_hash == token_hash(token))).first()
        if invitation is None:
            return None
        account = session.get(Account, invitation.account_id)
        assert account is not None
        return invitation, account

    def _live_invitation(self, session: Session, token: str) -> tuple[Invitation, Account]:
        found = self._invitation_row(session, token)
        if found is None or self._status(found[0]) != "live":
            raise AccountError("this invitation link is no longer valid; ask the provider for a new one")
        return found

    def _status(self, invitation: Invitation) -> str:
        if invitation.used_at is not None:
            return "used"
        if invitation.dead_at is not None:
            return "dead"
        if invitation.expires_at <= self.clock():
            return "expired"
        return "live"

    @staticmethod
    def _needs_birth_date(invitation: Invitation, account: Account) -> bool:
        return account.kind == "patient" and invitation.verified_at is None

    def confirm_birth_date(self, token: str, birth_date: date, *, client_address: str) -> None:
        """The patient confirms a fact the provider holds; 5 wrong answers kill the invitation."""
        self.limiter.check([Limit(f"enrol:ip:{client_address}", 20, 600)])
        held = self._birth_date_on_record(token)
        with self.db.write() as session:
            invitation, account = self._live_invitation(session, token)
            if held is not None and held == birth_date.isoformat():
                invitation.verified_at = self.clock()
                self.ledger.append(
                    session, AuditEvent(action="auth.invitation_verified", actor=actor_ref(account), subject=account.id)
                )
                return
            invitation.wrong_answers += 1
            left = INVITATION_MAX_WRONG_ANSWERS - invitation.wrong_answers
            self.ledger.append(
                session,
                AuditEvent(
                    action="auth.invitation_wrong_answer",
                    actor="anonymous",
                    subject=account.id,
                    outcome="failure",
                    details={"left": max(left, 0)},
                ),
            )
            if left <= 0:
                invitation.dead_at = self.clock()
                raise_after = AccountError(
                    "too many wrong answers: this invitation no longer works; contact the provider for a new one"
                )
            else:
                raise_after = AccountError(f"that date of birth does not match our records ({left} tries left)")
        raise raise_after

    def _birth_date_on_record(self, token: str) -> str | None:
        """Read before the write transaction: the record read logs itself in a transaction of its own."""
        with self.db.read() as session:
            found = self._invitation_row(session, token)
        if found is None or found[1].patient_id is None:
            return None
        patient = self.records.patient_resource(
            found[1].patient_id, actor="system:enrolment", purpose="PATADMIN", role="system"
        )
        birth_date = (patient or {}).get("birthDate")
        return str(birth_date) if birth_date else None

    # ================================================================== enrolment

    def enrolment_options(self, token: str) -> Options:
        with self.db.read() as session:
            invitation, account = self._live_invitation(session, token)
            if self._needs_birth_date(invitation, account):
                raise AccountError("confirm your date of birth first")
            existing = list(session.scalars(select(Credential).where(Credential.account_id == account.id)))
        return self.ceremonies.registration_options(
            account, self._user_name(account), existing, invitation_id=invitation.id
        )

    def finish_enrolment(
        self, token: str, challenge_id: str, response: str, *, user_agent: str, client_address: str
    ) -> SignedIn:
        self.limiter.check([Limit(f"enrol:ip:{client_address}", 20, 600)])
        try:
            with self.db.write() as session:
                invitation, account = self._live_invitation(session, token)
                if self._needs_birth_date(invitation, account):
                    raise AccountError("confirm your date of birth first")
                challenge = self.ceremonies.consume_challenge(session, challenge_id, "register")
                if challenge.invitation_id != invitation.id:
                    raise CeremonyError("the passkey request does not belong to this invitation")
                credential = self._register(session, account, challenge, response, "Passkey 1")
                invitation.used_at = self.clock()
                account.status = "active"
                self.ledger.append(
                    session,
                    AuditEvent(
                        action="auth.enrolled",
                        actor=actor_ref(account),
                        subject=account.id,
                        details={"purpose": invitation.purpose},
                    ),
                )
                token_value = self._start_session(session, account, user_agent, client_address)
                self._passkey_added(session, account, credential)
        except CeremonyError as exc:
            self._record_failure("auth.enrolment_failed", exc, account_id=exc.account_id)
            raise AccountError(exc.reason) from None
        return SignedIn(token_value, account, "recovery-codes")

    def _register(self, session: Session, account: Account, challenge: Any, response: str, name: str) -> Credential:
        new = self.ceremonies.verify_registration(challenge, response, device_bound_only=account.kind == "staff")
        if session.get(Credential, new.credential_id) is not None:
            raise CeremonyError("this passkey is already registered")
        credential = Credential(
            id=new.credential_id,
            account_id=account.id,
            public_key=new.public_key,
            sign_count=new.sign_count,
            aaguid=new.aaguid,
            device_type=new.device_type,
            backed_up=new.backed_up,
            transports=new.transports,
            name=name,
            created_at=self.clock(),
        )
        session.add(credential)
        return credential

    def _passkey_added(self, session: Session, account: Account, credential: Credential) -> None:
        self.ledger.append(
            session,
            AuditEvent(
                action="auth.passkey_added",
                actor=actor_ref(account),
                subject=account.id,
                object=f"credential:{_short(credential.id)}",
                details={"synced": credential.synced},
            ),
        )
        self.notifier.notify(session, account.id, "new_passkey", key=_short(credential.id), name=credential.name)

    # ================================================================== sign-in

    def signin_options(self, *, client_address: str) -> Options:
        self.limiter.check([Limit(f"signin:ip:{client_address}", 60, 300)])
        return self.ceremonies.authentication_options("signin")

    def finish_signin(self, challenge_id: str, response: str, *, user_agent: str, client_address: str) -> SignedIn:
        self.limiter.check([Limit(f"signin:ip:{client_address}", 60, 300)])
        try:
            credential_id = self.ceremonies.credential_id_of(response)
            with self.db.write() as session:
                challenge = self.ceremonies.consume_challenge(session, challenge_id, "signin")
                credential = session.get(Credential, credential_id)
                if credential is None:
                    raise CeremonyError("this passkey is not registered here (it may have been removed)")
                account = session.get(Account, credential.account_id)
                assert account is not None
                self._require_usable(account)
                assertion = self.ceremonies.verify_assertion(challenge, response, credential)
                credential.sign_count = assertion.new_sign_count
                credential.last_used_at = self.clock()
                account.failed_attempts, account.throttled_until = 0, None
                token_value = self._start_session(session, account, user_agent, client_address)
                self.ledger.append(
                    session,
                    AuditEvent(
                        action="auth.signin",
                        actor=actor_ref(account),
                        subject=account.id,
                        object=f"credential:{_short(credential.id)}",
                        details={"method": "passkey"},
                    ),
                )
        except CeremonyError as exc:
            self._record_failure("auth.signin_failed", exc, account_id=exc.account_id)
            raise AccountError(exc.reason) from None
        return SignedIn(token_value, account, "add-passkey" if account.must_add_passkey else "home")

    def _require_usable(self, account: Account) -> None:
        if account.status == "locked":
            raise CeremonyError("this account is locked after too many failed attempts; contact the privacy office")
        if account.status != "active":
            raise CeremonyError("this account is not active")
        if account.throttled_until is not None and account.throttled_until > self.clock():
            wait = int((account.throttled_until - self.clock()).total_seconds()) + 1
            raise TooManyRequestsError(wait)

    def _start_session(self, session: Session, account: Account, user_agent: str, client_address: str) -> str:
        kind: SubjectKind = "staff" if account.kind == "staff" else "patient"
        return self.sessions.create(
            session,
            kind=kind,
            subject_id=account.id,
            roles=account.role_set,
            user_agent=user_agent,
            client_address=client_address,
            restricted=account.must_add_passkey,
        )

    def _record_failure(self, action: str, error: CeremonyError, *, account_id: str | None) -> None:
        """Count a failed attempt against the account (throttle, then lock) and log it."""
        with self.db.write() as session:
            account = session.get(Account, account_id) if account_id else None
            details: dict[str, str | int | bool | None] = {"reason": error.reason[:200]}
            if account is not None:
                account.failed_attempts += 1
                details["consecutive_failures"] = account.failed_attempts
                if account.failed_attempts >= LOCK_AFTER_FAILURES and account.status == "active":
                    account.status, account.locked_at = "locked", self.clock()
                    self.ledger.append(
                        session,
                        AuditEvent(action="auth.lockout", actor="system", subject=account.id, outcome="failure"),
                    )
                elif account.failed_attempts >= THROTTLE_AFTER_FAILURES:
                    delay = min(2 ** (account.failed_attempts - THROTTLE_AFTER_FAILURES), MAX_THROTTLE_SECONDS)
                    account.throttled_until = self.clock() + timedelta(seconds=delay)
                if "counter" in error.reason:
                    self.ledger.append(
                        session,
                        AuditEvent(
                            action="auth.counter_regression", actor="system", subject=account.id, outcome="failure"
                        ),
                    )
            self.ledger.append(
                session,
                AuditEvent(
                    action=action,
                    actor="anonymous",
                    subject=account.id if account else None,
                    outcome="failure",
                    details=details,
                ),
            )

    # ================================================================== step-up

    def stepup_options(self, account_id: str) -> Options:
        with self.db.read() as session:
            credentials = list(session.scalars(select(Credential).where(Credential.account_id == account_id)))
        if not credentials:
            raise AccountError("add a passkey first")
        return self.ceremonies.authentication_options("stepup", account_id=account_id, credentials=credentials)

    def finish_stepup(self, current_token: str, challenge_id: str, response: str, *, purpose: str) -> str:
        """Verify a fresh assertion, keep it as evidence, and rotate the session id."""
        web_session = self.sessions.load(current_token)
        try:
            credential_id = self.ceremonies.credential_id_of(response)
            with self.db.write() as session:
                challenge = self.ceremonies.consume_challenge(session, challenge_id, "stepup")
                if web_session is None or web_session.subject_id != challenge.account_id:
                    raise CeremonyError("the confirmation does not belong to this session")
                credential = session.get(Credential, credential_id)
                if credential is None or credential.account_id != web_session.subject_id:
                    raise CeremonyError("use one of this account's own passkeys", account_id=web_session.subject_id)
                assertion = self.ceremonies.verify_assertion(challenge, response, credential)
                credential.sign_count, credential.last_used_at = assertion.new_sign_count, self.clock()
                seq = self.ledger.append(
                    session,
                    AuditEvent(
                        action="auth.stepup",
                        actor=f"{web_session.subject_kind}:{web_session.subject_id}",
                        subject=web_session.subject_id,
                        object=f"credential:{_short(credential.id)}",
                        purpose=purpose[:40],
                        details={"user_verified": assertion.user_verified},
                        payload=response,
                    ),
                )
                session.add(
                    StepUpEvidence(
                        account_id=web_session.subject_id,
                        credential_id=credential.id,
                        ledger_seq=seq,
                        assertion=response,
                        user_verified=assertion.user_verified,
                        created_at=self.clock(),
                    )
                )
                return self.sessions.rotate(session, current_token, stepped_up=True)
        except CeremonyError as exc:
            self._record_failure("auth.stepup_failed", exc, account_id=exc.account_id)
            raise AccountError(exc.reason) from None

    def require_fresh_stepup(self, web_session: WebSession) -> None:
        stepped = web_session.stepped_up_at
        if stepped is None or self.clock() - stepped > STEP_UP_FRESHNESS:
            raise StepUpRequiredError("confirm it is you with your passkey first")

    # ================================================================== passkeys

    def passkeys(self, account_id: str) -> list[Credential]:
        with self.db.read() as session:
            return list(
                session.scalars(
                    select(Credential).where(Credential.account_id == account_id).order_by(Credential.created_at)
                )
            )

    def add_passkey_options(self, web_session: WebSession) -> Options:
        self._require_stepup_or_recovery(web_session)
        with self.db.read() as session:
            account = session.get(Account, web_session.subject_id)
            assert account is not None
            existing = list(session.scalars(select(Credential).where(Credential.account_id == account.id)))
        return self.ceremonies.registration_options(account, self._user_name(account), existing)

    def finish_add_passkey(self, web_session: WebSession, challenge_id: str, response: str) -> Credential:
        self._require_stepup_or_recovery(web_session)
        try:
            with self.db.write() as session:
                account = session.get(Account, web_session.subject_id)
                assert account is not None
                challenge = self.ceremonies.consume_challenge(session, challenge_id, "register")
                if challenge.account_id != account.id or challenge.invitation_id is not None:
                    raise CeremonyError("the passkey request does not belong to this account")
                # The first free "Passkey N": after a removal, count + 1 can repeat a name still in use.
                names = {existing.name for existing in self.passkeys(account.id)}
                number = len(names) + 1
                while f"Passkey {number}" in names:
                    number += 1
                credential = self._register(session, account, challenge, response, f"Passkey {number}")
                account.must_add_passkey = False
                self.sessions.lift_restriction(session, subject_id=account.id)
                self._passkey_added(session, account, credential)
                return credential
        except CeremonyError as exc:
            self._record_failure("auth.passkey_add_failed", exc, account_id=web_session.subject_id)
            raise AccountError(exc.reason) from None

    def _require_stepup_or_recovery(self, web_session: WebSession) -> None:
        """Adding a passkey needs a fresh step-up, except right after signing in with a recovery code."""
        with self.db.read() as session:
            account = session.get(Account, web_session.subject_id)
        if account is not None and account.must_add_passkey:
            return
        self.require_fresh_stepup(web_session)

    def rename_passkey(self, account_id: str, credential_id: str, name: str) -> None:
        name = " ".join(name.split())
        if not name or len(name) > PASSKEY_NAME_MAX:
            raise AccountError(f"give the passkey a name of 1 to {PASSKEY_NAME_MAX} characters")
        with self.db.write() as session:
            credential = self._own_credential(session, account_id, credential_id)
            credential.name = name
            self.ledger.append(
                session,
                AuditEvent(
                    action="auth.passkey_renamed",
                    actor=f"account:{account_id}",
                    subject=account_id,
                    object=f"credential:{_short(credential_id)}",
                ),
            )

    def remove_passkey(self, web_session: WebSession, credential_id: str) -> None:
        self.require_fresh_stepup(web_session)
        account_id = web_session.subject_id
        with self.db.write() as session:
            credential = self._own_credential(session, account_id, credential_id)
            remaining = len(list(session.scalars(select(Credential.id).where(Credential.account_id == account_id))))
            codes = self._unused_codes(session, account_id)
            if remaining <= 1 and not codes:
                raise AccountError("you cannot remove your only passkey unless you have recovery codes")
            session.delete(credential)
            self.ledger.append(
                session,
                AuditEvent(
                    action="auth.passkey_removed",
                    actor=f"account:{account_id}",
                    subject=account_id,
                    object=f"credential:{_short(credential_id)}",
                ),
            )

    def _own_credential(self, session: Session, account_id: str, credential_id: str) -> Credential:
        credential = session.get(Credential, credential_id)
        # The same answer for "not yours" and "does not exist": no probing of other accounts.
        if credential is None or credential.account_id != account_id:
            raise AccountError("no such passkey on your account")
        return credential

    # ================================================================== recovery codes

    def create_recovery_codes(self, web_session: WebSession) -> list[str]:
        """Ten new single-use codes (shown once); earlier unused codes stop working."""
        self.require_fresh_stepup(web_session)
        account_id = web_session.subject_id
        codes = [_new_recovery_code() for _ in range(RECOVERY_CODE_COUNT)]
        with self.db.write() as session:
            session.execute(
                update(RecoveryCode)
                .where(RecoveryCode.account_id == account_id, RecoveryCode.used_at.is_(None))
                .values(used_at=self.clock())
            )
            for code in codes:
                lookup, secret = _split_code(code)
                session.add(
                    RecoveryCode(
                        id=lookup, account_id=account_id, code_hash=SECRET_HASHER.hash(secret), created_at=self.clock()
                    )
                )
            self.ledger.append(
                session,
                AuditEvent(
                    action="auth.recovery_codes_created",
                    actor=f"account:{account_id}",
                    subject=account_id,
                    details={"count": len(codes)},
                ),
            )
        return codes

    def signin_with_recovery_code(self, code: str, *, user_agent: str, client_address: str) -> SignedIn:
        self.limiter.check([Limit(f"recovery:ip:{client_address}", 10, 600)])
        lookup, secret = _split_code(code)
        with self.db.write() as session:
            row = session.get(RecoveryCode, lookup) if lookup else None
            account = session.get(Account, row.account_id) if row else None
            valid = row is not None and row.used_at is None and _verify_code(row, secret)
            if row is None or account is None or not valid:
                failure = CeremonyError(
                    "that recovery code is not valid or was already used", account_id=account.id if account else None
                )
            else:
                failure = None
        if failure is not None:
            self._record_failure("auth.recovery_code_failed", failure, account_id=failure.account_id)
            raise AccountError(failure.reason)
        assert row is not None and account is not None
        try:
            with self.db.write() as session:
                account = session.get(Account, row.account_id)
                assert account is not None
                self._require_usable(account)
                claimed = session.execute(
                    update(RecoveryCode)
                    .where(RecoveryCode.id == lookup, RecoveryCode.used_at.is_(None))
                    .values(used_at=self.clock())
                )
                if claimed.rowcount != 1:  # type: ignore[attr-defined]
                    raise CeremonyError("that recovery code was already used", account_id=account.id)
                account.must_add_passkey = True
                account.failed_attempts, account.throttled_until = 0, None
                token_value = self._start_session(session, account, user_agent, client_address)
                left = len(self._unused_codes(session, account.id))
                self.ledger.append(
                    session,
                    AuditEvent(
                        action="auth.recovery_code_used",
                        actor=actor_ref(account),
                        subject=account.id,
                        details={"codes_left": left},
                    ),
                )
                self.notifier.notify(session, account.id, "recovery_code_used", key=lookup)
        except CeremonyError as exc:
            self._record_failure("auth.recovery_code_failed", exc, account_id=exc.account_id)
            raise AccountError(exc.reason) from None
        return SignedIn(token_value, account, "add-passkey")

    def _unused_codes(self, session: Session, account_id: str) -> list[str]:
        return list(
            session.scalars(
                select(RecoveryCode.id).where(RecoveryCode.account_id == account_id, RecoveryCode.used_at.is_(None))
            )
        )

    def unused_code_count(self, account_id: str) -> int:
        with self.db.read() as session:
            return len(self._unused_codes(session, account_id))

    # ================================================================== sessions

    def sign_out(self, account_id: str, handle: str) -> None:
        with self.db.write() as session:
            self.sessions.revoke(session, subject_id=account_id, handle=handle, reason="signed_out")
            self.ledger.append(
                session, AuditEvent(action="auth.signout", actor=f"account:{account_id}", subject=account_id)
            )

    def end_session(self, account_id: str, handle: str, *, current: str) -> None:
        with self.db.write() as session:
            ended = self.sessions.revoke(session, subject_id=account_id, handle=handle, reason="ended_by_user")
            if ended:
                self.ledger.append(
                    session,
                    AuditEvent(
                        action="auth.session_revoked",
                        actor=f"account:{account_id}",
                        subject=account_id,
                        details={"current": handle == current},
                    ),
                )

    def end_other_sessions(self, account_id: str, *, keep: str) -> int:
        with self.db.write() as session:
            ended = self.sessions.revoke_all(session, subject_id=account_id, reason="ended_by_user", keep_handle=keep)
            self.ledger.append(
                session,
                AuditEvent(
                    action="auth.session_revoked",
                    actor=f"account:{account_id}",
                    subject=account_id,
                    details={"others": ended},
                ),
            )
        return ended

    # ================================================================== staff administration

    def staff_accounts(self) -> list[Account]:
        with self.db.read() as session:
            return list(session.scalars(select(Account).where(Account.kind == "staff").order_by(Account.email)))

    def set_disabled(self, account_id: str, disabled: bool, *, actor: str) -> None:
        """Disable (ending every session at once) or re-enable an account."""
        with self.db.write() as session:
            account = session.get(Account, account_id)
            if account is None:
                raise AccountError("no such account")
            if disabled:
                account.status = "disabled"
                ended = self.sessions.revoke_all(session, subject_id=account.id, reason="account_disabled")
            else:
                account.status = "active" if self.passkeys(account.id) else "pending"
                ended = 0
            self.ledger.append(
                session,
                AuditEvent(
                    action="account.disabled" if disabled else "account.enabled",
                    actor=actor,
                    subject=account.id,
                    details={"sessions_ended": ended},
                ),
            )

    def unlock(self, account_id: str, *, actor: str) -> None:
        with self.db.write() as session:
            account = session.get(Account, account_id)
            if account is None or account.status != "locked":
                raise AccountError("that account is not locked")
            account.status, account.locked_at = "active", None
            account.failed_attempts, account.throttled_until = 0, None
            self.ledger.append(session, AuditEvent(action="account.unlocked", actor=actor, subject=account.id))

    def unlock_patient(self, mrn: str, *, actor: str) -> None:
        patient_id = self.records.find_by_mrn(mrn.strip())
        account = self.account_for_patient(patient_id) if patient_id else None
        if account is None:
            raise AccountError("no patient account has that MRN")
        self.unlock(account.id, actor=actor)

    def account(self, account_id: str) -> Account | None:
        with self.db.read() as session:
            return session.get(Account, account_id)

    def staff_name(self, account_id: str) -> str | None:
        account = self.account(account_id) if account_id else None
        return account.display_name if account is not None and account.kind == "staff" else None

    def account_for_patient(self, patient_id: str) -> Account | None:
        with self.db.read() as session:
            return session.scalars(select(Account).where(Account.patient_id == patient_id)).one_or_none()

    def security_activity(self, account_id: str, limit: int = 100) -> list[dict[str, Any]]:
        return self.ledger.entries_for_subject(account_id, limit=limit)

    # ================================================================== helpers

    def _revoke_everything(self, session: Session, account: Account, *, reason: str) -> int:
        credentials = list(session.scalars(select(Credential).where(Credential.account_id == account.id)))
        for credential in credentials:
            session.delete(credential)
        session.execute(
            update(RecoveryCode)
            .where(RecoveryCode.account_id == account.id, RecoveryCode.used_at.is_(None))
            .values(used_at=self.clock())
        )
        self.sessions.revoke_all(session, subject_id=account.id, reason=reason)
        return len(credentials)

    def _user_name(self, account: Account) -> str:
        if account.kind == "staff":
            return account.email or account.id
        return f"patient-{account.id[:8]}"

    def contact_address(self, account_id: str) -> str | None:
        """Where notifications go: staff e-mail, or the e-mail in the patient's own record."""
        account = self.account(account_id)
        if account is None:
            return None
        if account.kind == "staff" or account.patient_id is None:
            return account.email
        patient = self.records.patient_resource(
            account.patient_id, actor="system:notifier", purpose="PATADMIN", role="system"
        )
        for telecom in (patient or {}).get("telecom", []):
            if telecom.get("system") == "email" and telecom.get("value"):
                return str(telecom["value"])
        return None


def _short(credential_id: str) -> str:
    """A non-reversible short reference to a credential for logs."""
    return hashlib.sha256(credential_id.encode()).hexdigest()[:12]


def _new_recovery_code() -> str:
    lookup = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(6))
    secret = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(RECOVERY_SECRET_CHARS))
    groups = [secret[i : i + 4] for i in range(0, RECOVERY_SECRET_CHARS, 4)]
    return "-".join([lookup, *groups])


def _split_code(code: str) -> tuple[str, str]:
    """(public lookup part, secret part) of a code as typed: case, spaces and dashes don't matter."""
    cleaned = "".join(ch for ch in code.lower() if ch in RECOVERY_ALPHABET)
    return cleaned[:6], cleaned[6:]


def _verify_code(row: RecoveryCode, secret: str) -> bool:
    try:
        SECRET_HASHER.verify(row.code_hash, secret)
    except (VerificationError, InvalidHashError):
        return False
    if SECRET_HASHER.check_needs_rehash(row.code_hash):
        row.code_hash = SECRET_HASHER.hash(secret)
    return True

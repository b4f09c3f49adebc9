"""The software authenticator against py_webauthn directly (no portal code).

If these pass, the double produces responses a real RP library accepts, and each hostile knob
produces a response that the library refuses for the intended reason.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import pytest
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers.cose import COSEAlgorithmIdentifier
from webauthn.helpers.exceptions import (
    InvalidAuthenticationResponse,
    InvalidBackupFlags,
    InvalidRegistrationResponse,
)
from webauthn.helpers.structs import (
    AttestationFormat,
    AuthenticatorSelectionCriteria,
    CredentialDeviceType,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)
from webauthn.registration.verify_registration_response import VerifiedRegistration

from tests.support.authenticator import AuthenticatorError, SoftwareAuthenticator, b64url

ORIGIN = "http://localhost:8000"
RP_ID = "localhost"
USER_ID = b"patient-0001"


def registration_options(
    *,
    resident_key: ResidentKeyRequirement = ResidentKeyRequirement.REQUIRED,
    exclude: list[bytes] | None = None,
    algs: list[COSEAlgorithmIdentifier] | None = None,
) -> tuple[dict[str, Any], bytes]:
    options = generate_registration_options(
        rp_id=RP_ID,
        rp_name="Portal",
        user_id=USER_ID,
        user_name="alice@example.org",
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=resident_key, user_verification=UserVerificationRequirement.REQUIRED
        ),
        exclude_credentials=[PublicKeyCredentialDescriptor(id=i) for i in exclude or []],
        supported_pub_key_algs=algs,
    )
    return json.loads(options_to_json(options)), options.challenge


def authentication_options(allow: list[bytes] | None = None) -> tuple[dict[str, Any], bytes]:
    options = generate_authentication_options(
        rp_id=RP_ID,
        allow_credentials=[PublicKeyCredentialDescriptor(id=i) for i in allow or []],
        user_verification=UserVerificationRequirement.REQUIRED,
    )
    return json.loads(options_to_json(options)), options.challenge


def verify_registration(credential: dict[str, Any] | str, challenge: bytes) -> VerifiedRegistration:
    return verify_registration_response(
        credential=credential,
        expected_challenge=challenge,
        expected_origin=ORIGIN,
        expected_rp_id=RP_ID,
        require_user_verification=True,
    )


@dataclass
class Registered:
    authenticator: SoftwareAuthenticator
    verified: VerifiedRegistration

    def authenticate(self, sign_count: int | None = None, **knobs: Any) -> int:
        """Run a discoverable sign-in; return the new sign count (which the server would store)."""
        options, challenge = authentication_options()
        result = verify_authentication_response(
            credential=self.authenticator.get(options, **knobs),
            expected_challenge=challenge,
            expected_origin=ORIGIN,
            expected_rp_id=RP_ID,
            credential_public_key=self.verified.credential_public_key,
            credential_current_sign_count=self.verified.sign_count if sign_count is None else sign_count,
            require_user_verification=True,
        )
        return result.new_sign_count


def register(**authenticator_kwargs: Any) -> Registered:
    authenticator = SoftwareAuthenticator(ORIGIN, **authenticator_kwargs)
    options, challenge = registration_options()
    return Registered(authenticator, verify_registration(authenticator.create(options), challenge))


@pytest.fixture
def registered() -> Registered:
    return register()


# -- registration ----------------------------------------------------------------------------


def test_registration_verifies() -> None:
    authenticator = SoftwareAuthenticator(ORIGIN)
    options, challenge = registration_options()
    credential = authenticator.create(options)
    # What the browser POSTs is JSON text; py_webauthn takes the string as well as the dict.
    verified = verify_registration(json.dumps(credential), challenge)

    stored = authenticator.credentials[0]
    assert verified.credential_id == stored.credential_id
    assert verified.credential_public_key == stored.cose_public_key()
    assert verified.sign_count == 0
    assert verified.fmt == AttestationFormat.NONE
    assert verified.aaguid == "00000000-0000-0000-0000-000000000000"
    assert verified.user_verified is True
    assert verified.credential_device_type == CredentialDeviceType.SINGLE_DEVICE
    assert verified.credential_backed_up is False
    assert stored.user_handle == USER_ID
    assert stored.discoverable is True


def test_response_has_to_json_shape_without_padding() -> None:
    options, challenge = registration_options()
    credential = SoftwareAuthenticator(ORIGIN).create(options)
    assert credential["id"] == credential["rawId"]
    assert credential["type"] == "public-key"
    assert credential["authenticatorAttachment"] == "platform"
    assert credential["clientExtensionResults"] == {}
    response = credential["response"]
    assert {"clientDataJSON", "attestationObject", "transports"} <= response.keys()
    assert not any("=" in v for v in response.values() if isinstance(v, str))
    assert json.loads(_b64decode(response["clientDataJSON"])) == {
        "type": "webauthn.create",
        "challenge": b64url(challenge),
        "origin": ORIGIN,
        "crossOrigin": False,
    }


@pytest.mark.parametrize(
    ("backup_eligible", "backed_up", "device_type"),
    [
        (False, False, CredentialDeviceType.SINGLE_DEVICE),
        (True, False, CredentialDeviceType.MULTI_DEVICE),
        (True, True, CredentialDeviceType.MULTI_DEVICE),
    ],
)
def test_backup_flags_are_reported(backup_eligible: bool, backed_up: bool, device_type: CredentialDeviceType) -> None:
    verified = register(backup_eligible=backup_eligible, backed_up=backed_up).verified
    assert verified.credential_device_type == device_type
    assert verified.credential_backed_up is backed_up


def test_backed_up_without_backup_eligible_is_not_a_registration_error() -> None:
    # Surprise: py_webauthn raises InvalidBackupFlags itself, not InvalidRegistrationResponse.
    with pytest.raises(InvalidBackupFlags):
        register(backed_up=True)


def test_browser_refuses_rp_id_not_matching_origin() -> None:
    with pytest.raises(AuthenticatorError, match="SecurityError"):
        SoftwareAuthenticator("https://evil.example").create(registration_options()[0])


def test_browser_refuses_excluded_credential(registered: Registered) -> None:
    options, _ = registration_options(exclude=[registered.verified.credential_id])
    with pytest.raises(AuthenticatorError, match="InvalidStateError"):
        registered.authenticator.create(options)


def test_browser_refuses_when_es256_not_offered() -> None:
    options, _ = registration_options(algs=[COSEAlgorithmIdentifier.RSASSA_PKCS1_v1_5_SHA_256])
    with pytest.raises(AuthenticatorError, match="NotSupportedError"):
        SoftwareAuthenticator(ORIGIN).create(options)


@pytest.mark.parametrize(
    ("authenticator_kwargs", "create_knobs", "message"),
    [
        ({}, {"origin_override": "https://evil.example"}, "origin"),
        ({}, {"rp_id_override": "evil.example"}, "RP ID hash"),
        ({}, {"challenge_override": b"another challenge"}, "challenge"),
        ({}, {"type_override": "webauthn.get"}, "client data type"),
        ({"user_verification": False}, {}, "User verification is required"),
        ({"user_presence": False}, {}, "User presence was required"),
    ],
)
def test_hostile_registration_is_refused(
    authenticator_kwargs: dict[str, Any], create_knobs: dict[str, Any], message: str
) -> None:
    authenticator = SoftwareAuthenticator(ORIGIN, **authenticator_kwargs)
    options, challenge = registration_options()
    with pytest.raises(InvalidRegistrationResponse, match=message):
        verify_registration(authenticator.create(options, **create_knobs), challenge)


# -- authentication --------------------------------------------------------------------------


def test_discoverable_authentication_verifies(registered: Registered) -> None:
    options, challenge = authentication_options()
    assert options["allowCredentials"] == []
    assertion = registered.authenticator.get(options)
    result = verify_authentication_response(
        credential=assertion,
        expected_challenge=challenge,
        expected_origin=ORIGIN,
        expected_rp_id=RP_ID,
        credential_public_key=registered.verified.credential_public_key,
        credential_current_sign_count=0,
        require_user_verification=True,
    )
    assert result.credential_id == registered.verified.credential_id
    assert result.new_sign_count == 1
    assert result.user_verified is True
    assert _b64decode(assertion["response"]["userHandle"]) == USER_ID
    assert registered.authenticate(sign_count=1) == 2


def test_allow_credentials_selects_the_listed_credential(registered: Registered) -> None:
    other = registered.authenticator.create(registration_options(resident_key=ResidentKeyRequirement.DISCOURAGED)[0])
    options, _ = authentication_options(allow=[registered.verified.credential_id])
    assert registered.authenticator.get(options)["id"] == b64url(registered.verified.credential_id)
    options, _ = authentication_options(allow=[_b64decode(other["rawId"])])
    assertion = registered.authenticator.get(options)
    assert assertion["id"] == other["id"]
    assert "userHandle" not in assertion["response"]  # non-discoverable: no user entity
    with pytest.raises(AuthenticatorError, match="NotAllowedError"):
        registered.authenticator.get(authentication_options(allow=[b"unknown"])[0])


def test_non_discoverable_credential_is_not_offered_without_allow_list() -> None:
    authenticator = SoftwareAuthenticator(ORIGIN)
    authenticator.create(registration_options(resident_key=ResidentKeyRequirement.DISCOURAGED)[0])
    with pytest.raises(AuthenticatorError, match="NotAllowedError"):
        authenticator.get(authentication_options()[0])


def test_zero_counter_authenticator_is_accepted_repeatedly() -> None:
    # Many passkey providers always report 0; py_webauthn only checks when either count is non-zero.
    registered = register(increment_counter=False)
    assert registered.authenticate(sign_count=0) == 0
    assert registered.authenticate(sign_count=0) == 0


def test_stuck_non_zero_counter_is_refused() -> None:
    registered = register(sign_count_start=5, increment_counter=False)
    assert registered.verified.sign_count == 5
    with pytest.raises(InvalidAuthenticationResponse, match="sign count of 5 was not greater than"):
        registered.authenticate(sign_count=5)


def test_counter_regression_is_refused(registered: Registered) -> None:
    assert registered.authenticate() == 1
    assert registered.authenticate(sign_count=1) == 2
    registered.authenticator.set_sign_count(registered.verified.credential_id, 0)  # a clone
    with pytest.raises(InvalidAuthenticationResponse, match="sign count of 1 was not greater than"):
        registered.authenticate(sign_count=2)


def test_replayed_challenge_is_refused(registered: Registered) -> None:
    old_options, old_challenge = authentication_options()
    registered.authenticator.get(old_options)
    with pytest.raises(InvalidAuthenticationResponse, match="challenge"):
        registered.authenticate(challenge_override=old_challenge)


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"origin_override": "https://evil.example"}, "origin"),
        ({"rp_id_override": "evil.example"}, "RP ID hash"),
        ({"type_override": "webauthn.create"}, "client data type"),
        ({"corrupt_signature": True}, "Could not verify authentication signature"),
    ],
)
def test_hostile_assertion_is_refused(registered: Registered, knobs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidAuthenticationResponse, match=message):
        registered.authenticate(**knobs)


@pytest.mark.parametrize(
    ("attribute", "message"),
    [
        ("user_verification", "User verification is required"),
        ("user_presence", "User was not present"),
    ],
)
def test_assertion_without_uv_or_up_is_refused(registered: Registered, attribute: str, message: str) -> None:
    setattr(registered.authenticator, attribute, False)
    with pytest.raises(InvalidAuthenticationResponse, match=message):
        registered.authenticate()


def test_signature_from_another_key_is_refused(registered: Registered) -> None:
    stranger = register()
    with pytest.raises(InvalidAuthenticationResponse, match="signature"):
        Registered(stranger.authenticator, registered.verified).authenticate()


def test_backup_flags_are_reported_on_authentication() -> None:
    registered = register(backup_eligible=True, backed_up=False)
    registered.authenticator.backed_up = True  # the provider synced it since registration
    options, challenge = authentication_options()
    result = verify_authentication_response(
        credential=registered.authenticator.get(options),
        expected_challenge=challenge,
        expected_origin=ORIGIN,
        expected_rp_id=RP_ID,
        credential_public_key=registered.verified.credential_public_key,
        credential_current_sign_count=0,
    )
    assert result.credential_device_type == CredentialDeviceType.MULTI_DEVICE
    assert result.credential_backed_up is True


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

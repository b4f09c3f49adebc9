// Portal behaviour: passkey ceremonies, in-place step-up, and the session expiry warning.
// Loaded from our own origin only (the CSP forbids inline scripts); no third-party code.
"use strict";

(function () {
  const csrfToken = () => {
    try {
      return JSON.parse(document.body.getAttribute("hx-headers") || "{}")["x-csrftoken"] || "";
    } catch (_) {
      return "";
    }
  };

  async function postJSON(url, body) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json", "x-csrftoken": csrfToken() },
      body: JSON.stringify(body || {}),
    });
    let data = {};
    try {
      data = await response.json();
    } catch (_) {
      data = {};
    }
    if (!response.ok) {
      const message = data.error || data.detail || "Something went wrong. Please try again.";
      const error = new Error(message);
      error.status = response.status;
      throw error;
    }
    activity.touch();
    return data;
  }

  // --- base64url and WebAuthn JSON (fallbacks for browsers without the JSON helpers) ---------
  const fromB64url = (value) => {
    const base64 = value.replace(/-/g, "+").replace(/_/g, "/");
    const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
    return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0)).buffer;
  };
  const toB64url = (buffer) =>
    btoa(String.fromCharCode(...new Uint8Array(buffer))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");

  function creationOptions(json) {
    if (window.PublicKeyCredential && PublicKeyCredential.parseCreationOptionsFromJSON) {
      return PublicKeyCredential.parseCreationOptionsFromJSON(json);
    }
    return {
      ...json,
      challenge: fromB64url(json.challenge),
      user: { ...json.user, id: fromB64url(json.user.id) },
      excludeCredentials: (json.excludeCredentials || []).map((c) => ({ ...c, id: fromB64url(c.id) })),
    };
  }

  function requestOptions(json) {
    if (window.PublicKeyCredential && PublicKeyCredential.parseRequestOptionsFromJSON) {
      return PublicKeyCredential.parseRequestOptionsFromJSON(json);
    }
    return {
      ...json,
      challenge: fromB64url(json.challenge),
      allowCredentials: (json.allowCredentials || []).map((c) => ({ ...c, id: fromB64url(c.id) })),
    };
  }

  function credentialJSON(credential) {
    if (typeof credential.toJSON === "function") {
      return credential.toJSON();
    }
    const r = credential.response;
    const response = r.attestationObject
      ? {
          clientDataJSON: toB64url(r.clientDataJSON),
          attestationObject: toB64url(r.attestationObject),
          transports: r.getTransports ? r.getTransports() : [],
        }
      : {
          clientDataJSON: toB64url(r.clientDataJSON),
          authenticatorData: toB64url(r.authenticatorData),
          signature: toB64url(r.signature),
          userHandle: r.userHandle ? toB64url(r.userHandle) : null,
        };
    return {
      id: credential.id,
      rawId: toB64url(credential.rawId),
      type: credential.type,
      response,
      clientExtensionResults: credential.getClientExtensionResults(),
      authenticatorAttachment: credential.authenticatorAttachment || null,
    };
  }

  const friendly = (error) => {
    if (error && error.name === "NotAllowedError") {
      return "The passkey request was cancelled or timed out. Please try again.";
    }
    if (error && error.name === "InvalidStateError") {
      return "This device already has a passkey for your account.";
    }
    return (error && error.message) || "Something went wrong. Please try again.";
  };

  // --- sign-in (button and passkey autofill) ----------------------------------------------
  function setupSignin(container) {
    const button = container.querySelector("[data-passkey-button]");
    const errorBox = container.querySelector("[data-passkey-error]");
    let conditional = null;

    async function run(mediation) {
      const controller = new AbortController();
      if (mediation === "conditional") {
        conditional = controller;
      }
      const options = await postJSON(container.dataset.optionsUrl);
      const credential = await navigator.credentials.get({
        publicKey: requestOptions(options.publicKey),
        mediation,
        signal: controller.signal,
      });
      const result = await postJSON(container.dataset.finishUrl, {
        challenge_id: options.challenge_id,
        credential: credentialJSON(credential),
        next: container.dataset.next || null,
      });
      window.location.assign(result.redirect);
    }

    button.addEventListener("click", async () => {
      errorBox.textContent = "";
      if (conditional) {
        conditional.abort();
        conditional = null;
      }
      button.disabled = true;
      try {
        await run("optional");
      } catch (error) {
        errorBox.textContent = friendly(error);
      } finally {
        button.disabled = false;
      }
    });

    if (window.PublicKeyCredential && PublicKeyCredential.isConditionalMediationAvailable) {
      PublicKeyCredential.isConditionalMediationAvailable().then((available) => {
        if (available) {
          run("conditional").catch((error) => {
            if (error && error.name !== "AbortError") {
              errorBox.textContent = friendly(error);
            }
          });
        }
      });
    }
  }

  // --- registration (enrolment and adding a passkey) -------------------------------------
  function setupRegister(container) {
    const button = container.querySelector("[data-passkey-button]");
    const errorBox = container.querySelector("[data-passkey-error]");
    button.addEventListener("click", async () => {
      errorBox.textContent = "";
      button.disabled = true;
      try {
        if (container.hasAttribute("data-stepup-first")) {
          await stepUp("add-passkey");
        }
        const options = await postJSON(container.dataset.optionsUrl);
        const credential = await navigator.credentials.create({ publicKey: creationOptions(options.publicKey) });
        const result = await postJSON(container.dataset.finishUrl, {
          challenge_id: options.challenge_id,
          credential: credentialJSON(credential),
        });
        window.location.assign(result.redirect);
      } catch (error) {
        errorBox.textContent = friendly(error);
      } finally {
        button.disabled = false;
      }
    });
  }

  // --- step-up: a fresh passkey confirmation before sensitive actions ---------------------
  async function stepUp(purpose) {
    const options = await postJSON("/auth/stepup/options");
    const credential = await navigator.credentials.get({ publicKey: requestOptions(options.publicKey) });
    await postJSON("/auth/stepup", {
      challenge_id: options.challenge_id,
      credential: credentialJSON(credential),
      purpose,
    });
  }

  function setupStepUpForms() {
    const dialog = document.getElementById("stepup-dialog");
    if (!dialog) {
      return;
    }
    const confirmButton = document.getElementById("stepup-confirm");
    const errorBox = document.getElementById("stepup-error");
    let pending = null;

    document.addEventListener("submit", (event) => {
      const form = event.target.closest("form[data-stepup]");
      if (!form || form.dataset.stepupDone === "1") {
        return;
      }
      event.preventDefault();
      pending = form;
      errorBox.textContent = "";
      dialog.showModal();
      confirmButton.focus();
    });

    confirmButton.addEventListener("click", async () => {
      confirmButton.disabled = true;
      errorBox.textContent = "";
      try {
        await stepUp(pending.dataset.stepup);
        dialog.close();
        pending.dataset.stepupDone = "1";
        pending.requestSubmit();
      } catch (error) {
        errorBox.textContent = friendly(error);
      } finally {
        confirmButton.disabled = false;
      }
    });
    document.getElementById("stepup-cancel").addEventListener("click", () => dialog.close());
  }

  // --- session expiry warning ---------------------------------------------------------------
  const activity = {
    last: Date.now(),
    touch() {
      this.last = Date.now();
    },
  };

  function setupSessionWarning() {
    const idle = Number(document.body.dataset.idleSeconds || 0);
    const dialog = document.getElementById("session-warning");
    if (!idle || !dialog) {
      return;
    }
    const absoluteEnd = Date.parse(document.body.dataset.expiresAt || "") || Infinity;
    const warnBefore = 120 * 1000;
    const countdown = document.getElementById("session-countdown");
    // Background polls (marked data-passive) are not the user being there.
    document.body.addEventListener("htmx:afterRequest", (event) => {
      if (!event.detail.elt.closest("[data-passive]")) {
        activity.touch();
      }
    });

    document.getElementById("session-stay").addEventListener("click", async () => {
      try {
        await fetch("/session/ping", {
          method: "POST",
          credentials: "same-origin",
          headers: { "x-csrftoken": csrfToken() },
        });
        activity.touch();
      } finally {
        dialog.close();
      }
    });

    setInterval(() => {
      const now = Date.now();
      const end = Math.min(activity.last + idle * 1000, absoluteEnd);
      const left = end - now;
      if (left <= 0) {
        window.location.assign("/signin?reason=expired");
        return;
      }
      if (left <= warnBefore) {
        const minutes = Math.max(1, Math.ceil(left / 60000));
        countdown.textContent = minutes === 1 ? "less than a minute" : `${minutes} minutes`;
        if (!dialog.open) {
          dialog.showModal();
        }
      }
    }, 5000);
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll("[data-passkey-signin]").forEach(setupSignin);
    document.querySelectorAll("[data-passkey-register]").forEach(setupRegister);
    setupStepUpForms();
    setupSessionWarning();
  });
})();

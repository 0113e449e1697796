// The console's passkey ceremonies. A form marked data-passkey="create" or "get" carries the
// server's WebAuthn options in data-webauthn (an attribute, so no inline script is needed);
// submitting it asks the browser's authenticator, puts the answer as JSON in the form's
// hidden field and posts the form as any other. The server checks everything; this script
// only carries bytes between the authenticator and the form.
(function () {
  "use strict";

  function bytes(text) {
    var binary = atob(text.replace(/-/g, "+").replace(/_/g, "/"));
    var out = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i += 1) { out[i] = binary.charCodeAt(i); }
    return out.buffer;
  }

  function text(buffer) {
    var view = new Uint8Array(buffer);
    var binary = "";
    for (var i = 0; i < view.length; i += 1) { binary += String.fromCharCode(view[i]); }
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  // The options as the browser takes them: no null members, and the ids and challenge as bytes.
  function withoutNulls(value) {
    if (Array.isArray(value)) { return value.map(withoutNulls); }
    if (value && typeof value === "object") {
      var kept = {};
      Object.keys(value).forEach(function (key) {
        if (value[key] !== null) { kept[key] = withoutNulls(value[key]); }
      });
      return kept;
    }
    return value;
  }

  function creationOptions(options) {
    var publicKey = withoutNulls(options.publicKey);
    publicKey.challenge = bytes(publicKey.challenge);
    publicKey.user.id = bytes(publicKey.user.id);
    (publicKey.excludeCredentials || []).forEach(function (credential) { credential.id = bytes(credential.id); });
    return { publicKey: publicKey };
  }

  function requestOptions(options) {
    var publicKey = withoutNulls(options.publicKey);
    publicKey.challenge = bytes(publicKey.challenge);
    (publicKey.allowCredentials || []).forEach(function (credential) { credential.id = bytes(credential.id); });
    return { publicKey: publicKey };
  }

  // The answer as the server reads it (the JSON of WebAuthn Level 3's toJSON()).
  function answer(credential) {
    var response = credential.response;
    var json = {
      id: credential.id,
      rawId: text(credential.rawId),
      type: credential.type,
      extensions: credential.getClientExtensionResults(),
      response: { clientDataJSON: text(response.clientDataJSON) }
    };
    if (response.attestationObject) {
      json.response.attestationObject = text(response.attestationObject);
      if (response.getTransports) { json.response.transports = response.getTransports(); }
    } else {
      json.response.authenticatorData = text(response.authenticatorData);
      json.response.signature = text(response.signature);
      if (response.userHandle) { json.response.userHandle = text(response.userHandle); }
    }
    return json;
  }

  function start(form) {
    var status = form.querySelector("[data-passkey-status]");
    var field = form.querySelector("input[data-passkey-answer]");
    var options = JSON.parse(form.getAttribute("data-webauthn"));
    var asked = form.getAttribute("data-passkey") === "create"
      ? navigator.credentials.create(creationOptions(options))
      : navigator.credentials.get(requestOptions(options));
    if (status) { status.textContent = "Waiting for your passkey…"; }
    asked.then(function (credential) {
      field.value = JSON.stringify(answer(credential));
      form.submit();
    }).catch(function (error) {
      if (status) { status.textContent = "The passkey did not answer (" + error.name + "). You can try again."; }
    });
  }

  document.querySelectorAll("form[data-passkey]").forEach(function (form) {
    var button = form.querySelector("button");
    if (!window.PublicKeyCredential) {
      var status = form.querySelector("[data-passkey-status]");
      if (status) { status.textContent = "This browser cannot use passkeys."; }
      if (button) { button.disabled = true; }
      return;
    }
    if (button) { button.disabled = false; }
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      start(form);
    });
  });
})();

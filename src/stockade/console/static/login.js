// Sign-in: the one-time code sits in the URL fragment (never sent by the browser); it is taken
// out of the address bar at once and POSTed as JSON for the session cookie.
(function () {
  "use strict";
  var status = document.getElementById("login-status");
  var params = new URLSearchParams(window.location.hash.slice(1));
  var code = params.get("code");
  history.replaceState(null, "", window.location.pathname);
  if (!code) {
    status.textContent = "This page needs a sign-in link: run stockade console login USER.";
    return;
  }
  fetch(window.location.pathname, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "Accept": "application/json" },
    body: JSON.stringify({ code: code }),
  })
    .then(function (response) {
      return response.json().then(function (body) { return { ok: response.ok, body: body }; });
    })
    .then(function (result) {
      if (result.ok) {
        window.location.assign(result.body.next);
      } else {
        status.textContent = "Sign-in refused: " + (result.body.error || "unknown error");
      }
    })
    .catch(function () { status.textContent = "Sign-in failed: the console did not answer."; });
})();

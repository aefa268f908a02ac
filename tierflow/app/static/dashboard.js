// tierflow dashboard: refresh the server-rendered panel every few seconds, send mode switches.
// No framework and nothing from outside this server.
(function () {
  "use strict";
  var KEY = "tierflow-dashboard-token";
  var panel = document.getElementById("panel");
  var input = document.getElementById("token");
  var notice = document.getElementById("notice");
  var stamp = document.getElementById("refreshed");
  var every = parseInt(panel.getAttribute("data-refresh"), 10) || 5000;

  // `tierflow dashboard` prints a link ending in #token=...: the fragment never reaches the
  // server's logs; keep it for this tab only and take it out of the address bar.
  var found = window.location.hash.match(/token=([^&]+)/);
  if (found) {
    sessionStorage.setItem(KEY, decodeURIComponent(found[1]));
    history.replaceState(null, "", window.location.pathname);
  }
  input.value = sessionStorage.getItem(KEY) || "";
  input.addEventListener("change", function () {
    sessionStorage.setItem(KEY, input.value);
  });

  function say(text, bad) {
    notice.textContent = text;
    notice.className = bad ? "bad" : "good";
  }

  function refresh() {
    return fetch("/fragment", { cache: "no-store" })
      .then(function (response) {
        return response.text().then(function (body) {
          if (!response.ok) throw new Error(body || response.statusText);
          panel.innerHTML = body;
          stamp.textContent = "updated " + new Date().toLocaleTimeString() +
            ", every " + every / 1000 + " s";
        });
      })
      .catch(function (err) {
        stamp.textContent = "refresh failed: " + err.message;
      });
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest(".switch-btn");
    if (!button || button.disabled) return;
    var mode = button.getAttribute("data-mode");
    fetch("/api/mode", {
      method: "POST",
      headers: {
        "Content-Type": "application/json",
        "Authorization": "Bearer " + input.value,
      },
      body: JSON.stringify({ mode: mode, reason: "switched from the dashboard" }),
    })
      .then(function (response) {
        return response.json().then(function (body) {
          if (response.ok) say("mode " + body.from + " → " + body.to, false);
          else say("refused (" + response.status + "): " + body.error, true);
        });
      })
      .catch(function (err) {
        say("could not switch: " + err.message, true);
      })
      .then(refresh);
  });

  setInterval(refresh, every);
})();

// The security dashboard, live: each security event the server streams (Server-Sent Events
// from /admin/security/stream) is added to the table and counted, with text only (never
// markup). Without EventSource, or after the stream failed a few times, the page reloads
// itself every 15 seconds instead.
(function () {
  "use strict";
  var status = document.getElementById("live");
  var table = document.getElementById("events");
  function say(text, state) {
    status.textContent = text;
    status.setAttribute("data-state", state);
  }
  function poll() {
    say("Live updates are not available; the page reloads every 15 seconds.", "polling");
    window.setTimeout(function () { window.location.reload(); }, 15000);
  }
  if (!window.EventSource) { poll(); return; }
  var failures = 0;
  var source = new EventSource("/admin/security/stream");
  source.addEventListener("open", function () { failures = 0; say("Live: new events appear as they happen.", "live"); });
  source.addEventListener("error", function () {
    failures += 1;
    if (failures >= 3) { source.close(); poll(); } else { say("Reconnecting…", "reconnecting"); }
  });
  source.addEventListener("security", function (message) {
    var event;
    try { event = JSON.parse(message.data); } catch (ignored) { return; }
    var row = document.createElement("tr");
    [event.occurred_at, event.action, event.user_id == null ? "" : String(event.user_id),
     event.ip || "", JSON.stringify(event.details)].forEach(function (text, index) {
      var cell = document.createElement("td");
      if (index === 4) {
        var code = document.createElement("code");
        code.textContent = text;
        cell.appendChild(code);
      } else {
        cell.textContent = text;
      }
      row.appendChild(cell);
    });
    row.className = "fresh";
    table.insertBefore(row, table.firstChild);
    var counter = document.querySelector('.count[data-action="' + event.action + '"]');
    if (counter) { counter.textContent = String(Number(counter.textContent) + 1); }
  });
})();

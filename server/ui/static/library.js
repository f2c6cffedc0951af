// The Library page: retry and forget (POST with the CSRF header; forget asks first), and live queue progress
// polled from /api/v1/jobs every few seconds.
"use strict";
(function () {
  var msg = document.getElementById("action-msg");
  function say(text, bad) {
    if (!msg) return;
    msg.textContent = text;
    msg.classList.toggle("error", !!bad);
    msg.hidden = false;
  }

  document.addEventListener("click", function (ev) {
    var b = ev.target.closest ? ev.target.closest("button[data-action]") : null;
    if (!b) return;
    var action = b.getAttribute("data-action");
    var ref = encodeURIComponent(b.getAttribute("data-ref") || "");
    if (action !== "forget" && action !== "retry") return;
    if (action === "forget") {
      var name = b.getAttribute("data-name") || "this item";
      if (!window.confirm("Forget “" + name + "”?\n\nIts passages leave the library. The file itself is not deleted " +
          "and stays out of the library until it changes.")) return;
    }
    var req = kb.post("/api/v1/documents/" + ref + "/" + action, {});
    b.disabled = true;
    req.then(function () {
      say(action === "forget" ? "Forgetting… it leaves the library in a moment." : "Queued again.");
      var row = b.closest("tr");
      if (row && action === "forget") row.classList.add("leaving");
      poll();
      setTimeout(function () { window.location.reload(); }, 2500);
    }).catch(function (e) {
      b.disabled = false;
      say("That did not work: " + e.message, true);
    });
  });

  var box = document.getElementById("queue");
  if (!box) return;
  var jobsList = document.getElementById("jobs");
  var countEl = document.getElementById("queue-count");
  var emptyEl = document.getElementById("queue-empty");
  var url = box.getAttribute("data-poll");
  var had = jobsList.children.length;
  var timer = null;

  function render(jobs) {
    jobsList.textContent = "";
    jobs.forEach(function (j) {
      var li = kb.el("li", "job job-" + (j.state || "queued"));
      li.appendChild(kb.el("span", "job-path", j.path || j.uri || j.key || ""));
      li.appendChild(kb.el("span", "job-action", (j.action || "") + (j.stage ? " · " + j.stage : "")));
      if (j.total) {
        var p = document.createElement("progress");
        p.max = j.total; p.value = j.done || 0;
        p.textContent = Math.round(100 * (j.done || 0) / j.total) + "%";
        li.appendChild(p);
      } else if (j.state === "running") {
        li.appendChild(document.createElement("progress"));
      } else {
        li.appendChild(kb.el("span", "muted", (j.state || "") + (j.error || j.last_error ? " — retrying: " + (j.error || j.last_error) : "")));
      }
      jobsList.appendChild(li);
    });
    countEl.textContent = String(jobs.length);
    emptyEl.hidden = jobs.length > 0;
  }

  function poll() {
    fetch(url, { credentials: "same-origin", headers: { accept: "application/json" } })
      .then(function (r) { if (!r.ok) throw new Error(String(r.status)); return r.json(); })
      .then(function (data) {
        var jobs = (data.running || []).concat(data.queued || []);
        render(jobs);
        // work finished since the last look: the list of documents below changed, show it
        if (had > 0 && jobs.length < had && !document.querySelector("input:focus, select:focus")) {
          window.location.reload();
          return;
        }
        had = jobs.length;
      })
      .catch(function () { /* the next poll tries again */ })
      .finally(function () { schedule(); });
  }
  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(poll, document.hidden ? 15000 : 3000);
  }
  schedule();
})();

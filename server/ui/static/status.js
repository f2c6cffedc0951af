// The Status page looks again every few seconds while models load or work is queued (and stops when idle).
"use strict";
(function () {
  var el = document.querySelector("[data-refresh]");
  if (!el) return;
  var s = parseFloat(el.getAttribute("data-refresh")) || 5;
  setInterval(function () { if (!document.hidden) window.location.reload(); }, s * 1000);
})();

// The Upload page: drag and drop (or choose) files; each is sent with XMLHttpRequest to POST /api/v1/upload
// with its own progress bar, and the answer says whether it was accepted.
"use strict";
(function () {
  var zone = document.getElementById("dropzone");
  var input = document.getElementById("files");
  var list = document.getElementById("uploads");
  var doneLink = document.getElementById("uploads-done");
  if (!zone || !input) return;
  var pending = 0;

  function fmt(n) {
    if (n < 1024) return n + " B";
    if (n < 1048576) return (n / 1024).toFixed(1) + " KB";
    return (n / 1048576).toFixed(1) + " MB";
  }

  function send(file) {
    var li = kb.el("li", "upload-item");
    var name = kb.el("span", "upload-name", file.name);
    name.title = file.name + " (" + fmt(file.size) + ")";
    var bar = document.createElement("progress");
    bar.max = file.size || 1; bar.value = 0;
    bar.setAttribute("aria-label", "Upload of " + file.name);
    var st = kb.el("span", "upload-state", "waiting");
    li.appendChild(name); li.appendChild(bar); li.appendChild(st);
    list.appendChild(li);
    pending++;

    var form = new FormData();
    form.append("files", file, file.name);
    var xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/v1/upload");
    xhr.setRequestHeader("x-csrftoken", kb.csrf());
    xhr.setRequestHeader("accept", "application/json");
    xhr.upload.addEventListener("progress", function (e) {
      if (e.lengthComputable) { bar.max = e.total; bar.value = e.loaded; }
      st.textContent = e.lengthComputable ? Math.round(100 * e.loaded / e.total) + "%" : "sending";
    });
    xhr.addEventListener("load", function () {
      var data = {};
      try { data = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
      var refused = data.refused || [];  // one file per request: anything refused is this one
      if (xhr.status >= 200 && xhr.status < 300 && !refused.length) {
        bar.value = bar.max;
        st.textContent = "✓ in the inbox";
        st.className = "upload-state ok";
      } else {
        var why = refused.length ? (refused[0].reason || "refused")
          : (data.error && data.error.message) || ("the service answered " + xhr.status);
        st.textContent = "✗ " + why;
        st.className = "upload-state bad";
      }
      finish();
    });
    xhr.addEventListener("error", function () { st.textContent = "✗ connection lost"; st.className = "upload-state bad"; finish(); });
    xhr.send(form);
  }
  function finish() {
    pending--;
    if (pending <= 0) doneLink.hidden = false;
  }
  function take(files) {
    Array.prototype.forEach.call(files || [], send);
  }

  // the whole zone opens the file chooser (the label inside it already does)
  zone.addEventListener("click", function (e) {
    if (e.target === zone || (e.target.closest && !e.target.closest("label, input, button, a"))) input.click();
  });
  input.addEventListener("change", function () { take(input.files); input.value = ""; });
  ["dragenter", "dragover"].forEach(function (t) {
    zone.addEventListener(t, function (e) { e.preventDefault(); zone.classList.add("over"); });
  });
  ["dragleave", "drop"].forEach(function (t) {
    zone.addEventListener(t, function (e) { e.preventDefault(); zone.classList.remove("over"); });
  });
  zone.addEventListener("drop", function (e) { if (e.dataTransfer) take(e.dataTransfer.files); });
  // a file dropped outside the zone must not navigate away from the page
  window.addEventListener("dragover", function (e) { e.preventDefault(); });
  window.addEventListener("drop", function (e) { e.preventDefault(); });
})();

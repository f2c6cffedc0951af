// The Ask page: the answer streams from /api/v1/ask/stream (Server-Sent Events); citations link to the passages.
"use strict";
(function () {
  var root = document.getElementById("ask-root");
  if (!root) return;
  var question = root.getAttribute("data-question");
  var card = document.getElementById("answer-card");
  var state = document.getElementById("answer-state");
  var stateText = document.getElementById("answer-state-text");
  var textBox = document.getElementById("answer-text");
  var note = document.getElementById("answer-note");
  var foot = document.getElementById("answer-foot");
  var list = document.getElementById("evidence-list");
  var streamed = "";
  var finished = false;

  function docUrl(p) {
    var params = new URLSearchParams();
    if (p.chunk_id) params.set("chunk", p.chunk_id);
    if (p.page) params.set("page", p.page);
    if (p.t_start !== null && p.t_start !== undefined) params.set("t", Math.floor(p.t_start));
    return "/documents/" + encodeURIComponent(p.document_id) + "?" + params.toString();
  }
  function place(p) {
    var bits = [];
    if (p.page) bits.push(p.page_end && p.page_end !== p.page ? "pp. " + p.page + "–" + p.page_end : "p. " + p.page);
    if (p.t_start !== null && p.t_start !== undefined) bits.push(kb.clock(p.t_start) + (p.t_end ? "–" + kb.clock(p.t_end) : ""));
    if (p.section) bits.push(String(p.section).split(" > ").pop().slice(0, 80));
    return bits.join(" · ");
  }
  function nameOf(p) {
    if (p.title && String(p.title).trim()) return p.title;
    var path = String(p.path || "");
    return path.split("#")[0].split("/").pop() || path || "(untitled)";
  }

  function showPassages(passages) {
    list.textContent = "";
    (passages || []).forEach(function (p) {
      var li = kb.el("li", "evidence-item" + (p.given === false ? " unused" : ""));
      li.id = "p-" + p.n;
      li.setAttribute("data-result", "");
      var head = kb.el("div", "evidence-head");
      head.appendChild(kb.el("span", "evidence-n", "[" + p.n + "]"));
      var a = kb.el("a", "evidence-title", nameOf(p));
      a.href = docUrl(p);
      head.appendChild(a);
      li.appendChild(head);
      var where = place(p);
      var meta = kb.el("div", "evidence-where", [p.kind, where].filter(Boolean).join(" · "));
      li.appendChild(meta);
      var snip = kb.el("p", "evidence-snippet");
      snip.appendChild(kb.marked(p.snippet || p.text || "", p.snippet ? p.highlights : []));
      li.appendChild(snip);
      list.appendChild(li);
    });
  }

  // The answer's text with each [n] made a link to passage n (text nodes only).
  function renderAnswer(text, known) {
    textBox.textContent = "";
    var re = /\[(\d+)\]/g, pos = 0, m;
    while ((m = re.exec(text)) !== null) {
      textBox.appendChild(document.createTextNode(text.slice(pos, m.index)));
      var n = m[1];
      if (known[n]) {
        var a = kb.el("a", "cite", n);
        a.href = "#p-" + n;
        a.setAttribute("aria-label", "passage " + n);
        a.title = known[n];
        a.addEventListener("click", function (n) {
          return function (ev) {
            var target = document.getElementById("p-" + n);
            if (!target) return;
            ev.preventDefault();
            target.scrollIntoView({ behavior: "smooth", block: "center" });
            target.classList.add("flash");
            setTimeout(function () { target.classList.remove("flash"); }, 1600);
            var link = target.querySelector("a");
            if (link) link.focus({ preventScroll: true });
          };
        }(n));
        textBox.appendChild(a);
      } else {
        textBox.appendChild(document.createTextNode(m[0]));
      }
      pos = m.index + m[0].length;
    }
    textBox.appendChild(document.createTextNode(text.slice(pos)));
  }

  function done(label) {
    finished = true;
    state.hidden = !label;
    if (label) stateText.textContent = label;
    var sp = state.querySelector(".spinner");
    if (sp) sp.remove();
    textBox.classList.remove("streaming");
    card.setAttribute("aria-busy", "false");
  }

  function onAnswer(ans) {
    showPassages(ans.passages);
    var known = {};
    (ans.passages || []).forEach(function (p) { known[String(p.n)] = nameOf(p); });
    if (ans.status === "not_in_library") {
      var h = document.getElementById("evidence-h");
      if (h) h.textContent = "Nearest passages";
      textBox.textContent = "";
      var box = kb.el("div", "not-found");
      box.appendChild(kb.el("strong", null, "Not found in your library."));
      box.appendChild(kb.el("p", null, "No passage is close enough to this question to answer it honestly." +
        ((ans.passages || []).length ? " The nearest passages are listed, in case they help." : "")));
      textBox.appendChild(box);
    } else {
      renderAnswer(ans.answer || "", known);
      if (ans.status === "no_answer") note.textContent = "The passages found do not answer this question.";
      else if (ans.status === "unsupported") note.textContent = "No passage supports this answer: check the passages before relying on it.";
      note.hidden = !(ans.status === "no_answer" || ans.status === "unsupported");
    }
    var bits = [];
    if (ans.status === "not_in_library") bits.push("The language model was not asked");
    else if (ans.model) bits.push("Answered by " + ans.model);
    if (ans.timings && ans.timings.total_s) bits.push(ans.timings.total_s.toFixed(1) + " s");
    if (ans.dropped && ans.dropped.length) bits.push(ans.dropped.length + " unchecked citation" + (ans.dropped.length > 1 ? "s" : "") + " removed");
    foot.textContent = bits.join(" · ");
    foot.hidden = !bits.length;
    done("");
  }

  function onError(message) {
    done("");
    note.textContent = message || "The answer could not be made.";
    note.classList.add("error");
    note.hidden = false;
  }

  function handle(type, data) {
    if (type === "passages") {
      showPassages(data);
      stateText.textContent = (data && data.length) ? "Reading " + data.length + " passages…" : "Nothing close found…";
    } else if (type === "token") {
      if (!streamed) textBox.classList.add("streaming");
      streamed += data;
      stateText.textContent = "Writing the answer…";
      textBox.textContent = streamed;
    } else if (type === "answer") {
      onAnswer(data);
    } else if (type === "error") {
      onError(data && data.message);
    }
  }

  function parse(ev) {
    try { return JSON.parse(ev.data); } catch (e) { return ev.data; }
  }

  var received = false;
  var src = new EventSource("/api/v1/ask/stream?q=" + encodeURIComponent(question));
  ["passages", "token", "answer", "error"].forEach(function (type) {
    src.addEventListener(type, function (ev) {
      received = true;
      // the named "error" event carries data; the EventSource's own error (no data) is handled below
      if (type === "error" && !ev.data) return;
      handle(type, parse(ev));
    });
  });
  src.addEventListener("done", function () { src.close(); if (!finished) done(""); });
  src.onerror = function () {
    src.close();
    if (finished) return;
    if (!received) fallback();
    else onError("The connection to the service was lost before the answer was finished.");
  };

  // Without the streaming route (an older service), the same events come as JSON lines from POST /api/v1/ask.
  function fallback() {
    fetch("/api/v1/ask", {
      method: "POST", credentials: "same-origin",
      headers: { "content-type": "application/json", "x-csrftoken": kb.csrf() },
      body: JSON.stringify({ question: question }),
    }).then(function (r) {
      if (!r.ok || !r.body) {
        return r.json().catch(function () { return {}; }).then(function (d) {
          throw new Error((d && d.error && d.error.message) || ("the service answered " + r.status));
        });
      }
      var reader = r.body.getReader(), dec = new TextDecoder(), buf = "";
      function pump() {
        return reader.read().then(function (res) {
          if (res.done) { if (!finished) done(""); return; }
          buf += dec.decode(res.value, { stream: true });
          var lines = buf.split("\n");
          buf = lines.pop();
          lines.forEach(function (line) {
            if (!line.trim()) return;
            var ev = JSON.parse(line);
            if (ev.event === "passages") handle("passages", ev.passages);
            else if (ev.event === "token") handle("token", ev.text);
            else if (ev.event === "answer") handle("answer", ev.answer);
            else if (ev.event === "error") handle("error", ev.error);
          });
          return pump();
        });
      }
      return pump();
    }).catch(function (e) { onError("The answer could not be made: " + e.message + "."); });
  }
})();

// Every page: the theme toggle, "/" to search, Esc to leave, arrow keys through results, and kb.csrf()/kb.post().
"use strict";
window.kb = window.kb || {};

kb.csrf = function () {
  var m = document.querySelector('meta[name="csrf-token"]');
  var token = m ? m.getAttribute("content") : "";
  if (!token) { // the token is also kept in the csrftoken cookie
    var c = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    token = c ? decodeURIComponent(c[1]) : "";
  }
  return token;
};

// A JSON POST to the API with the CSRF header; resolves to the parsed body, rejects with a readable message.
kb.post = function (url, body) {
  return fetch(url, {
    method: "POST", credentials: "same-origin",
    headers: { "content-type": "application/json", "x-csrftoken": kb.csrf() },
    body: JSON.stringify(body || {}),
  }).then(function (r) {
    return r.json().catch(function () { return {}; }).then(function (data) {
      if (!r.ok) throw new Error((data && data.error && data.error.message) || ("the service answered " + r.status));
      return data;
    });
  });
};

// An element with text content only (document data is never parsed as HTML).
kb.el = function (tag, cls, text) {
  var e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
};

// Text with [start, end) spans wrapped in <mark>, built from text nodes.
kb.marked = function (text, highlights) {
  var frag = document.createDocumentFragment();
  text = text || "";
  var spans = (highlights || []).slice().sort(function (a, b) { return a[0] - b[0]; });
  var pos = 0;
  spans.forEach(function (h) {
    var s = Math.max(h[0], pos), e = Math.min(h[1], text.length);
    if (e <= s) return;
    frag.appendChild(document.createTextNode(text.slice(pos, s)));
    frag.appendChild(kb.el("mark", null, text.slice(s, e)));
    pos = e;
  });
  frag.appendChild(document.createTextNode(text.slice(pos)));
  return frag;
};

kb.clock = function (s) {
  if (s === null || s === undefined) return "";
  s = Math.max(0, Math.floor(s));
  var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  var pad = function (n) { return (n < 10 ? "0" : "") + n; };
  return h ? h + ":" + pad(m) + ":" + pad(sec) : m + ":" + pad(sec);
};

(function () {
  var root = document.documentElement;
  var toggle = document.getElementById("theme-toggle");
  if (toggle) {
    var current = function () {
      var t = root.getAttribute("data-theme");
      if (t) return t;
      return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
    };
    toggle.setAttribute("aria-pressed", String(current() === "dark"));
    toggle.addEventListener("click", function () {
      var next = current() === "dark" ? "light" : "dark";
      root.setAttribute("data-theme", next);
      toggle.setAttribute("aria-pressed", String(next === "dark"));
      try { localStorage.setItem("kb-theme", next); } catch (e) { /* not remembered then */ }
    });
  }

  function typing(t) {
    return t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable);
  }
  function results() {
    var lists = document.querySelectorAll("[data-results]");
    var out = [];
    lists.forEach(function (l) { l.querySelectorAll("[data-result]").forEach(function (r) { out.push(r); }); });
    return out;
  }
  var active = -1;
  function activate(i) {
    var items = results();
    if (!items.length) return;
    i = Math.max(0, Math.min(items.length - 1, i));
    items.forEach(function (r) { r.classList.remove("kbd-active"); });
    active = i;
    var item = items[i];
    item.classList.add("kbd-active");
    var link = item.querySelector("a[href]");
    if (link) link.focus({ preventScroll: true });
    item.scrollIntoView({ block: "nearest" });
  }

  document.addEventListener("keydown", function (ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    var t = ev.target;
    if (ev.key === "/" && !typing(t)) {
      var box = document.querySelector("[data-slash-focus]");
      if (box) { ev.preventDefault(); box.focus(); box.select(); }
      return;
    }
    if (ev.key === "Escape") {
      if (typing(t) || (t && t !== document.body)) { t.blur(); }
      results().forEach(function (r) { r.classList.remove("kbd-active"); });
      active = -1;
      return;
    }
    if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
      var isSearchBox = t && t.hasAttribute && t.hasAttribute("data-slash-focus");
      if (typing(t) && !(isSearchBox && ev.key === "ArrowDown")) return;
      if (t && (t.tagName === "AUDIO" || t.tagName === "VIDEO")) return;
      if (!results().length) return;
      ev.preventDefault();
      activate(active < 0 ? 0 : active + (ev.key === "ArrowDown" ? 1 : -1));
    }
  });
})();

// The Document and Meeting pages: scroll the cited passage into view; start the recording at ?t= and make
// every time link (summary points, transcript) play from its time; follow playback in the transcript.
"use strict";
(function () {
  var cited = document.querySelector(".chunk.cited");
  var article = document.querySelector("article.doc");
  var words = article ? (article.getAttribute("data-words") || "") : "";
  if (cited && words) markWords(cited.querySelector(".chunk-text"), words);
  if (cited) {
    cited.scrollIntoView({ block: "center" });
    cited.focus({ preventScroll: true });
  }
  var player = document.getElementById("player");
  if (!player) return;
  var startAt = article ? article.getAttribute("data-start") : null;
  var start = startAt !== null ? parseFloat(startAt) : NaN;

  function seek(t, play) {
    var go = function () {
      player.currentTime = t;
      if (play) { var p = player.play(); if (p && p.catch) p.catch(function () { /* autoplay refused: the time is set */ }); }
    };
    if (player.readyState >= 1) go();
    else player.addEventListener("loadedmetadata", go, { once: true });
  }
  if (!isNaN(start)) seek(start, false);

  document.addEventListener("click", function (ev) {
    var a = ev.target.closest ? ev.target.closest("[data-seek]") : null;
    if (!a) return;
    ev.preventDefault();
    var t = parseFloat(a.getAttribute("data-seek"));
    if (isNaN(t)) return;
    seek(t, true);
    try { history.replaceState(null, "", "?t=" + Math.floor(t)); } catch (e) { /* fine */ }
  });

  var chunks = Array.prototype.slice.call(document.querySelectorAll(".chunk [data-seek]")).map(function (a) {
    // a transcript line when the passage has timed lines, else the passage
    return { t: parseFloat(a.getAttribute("data-seek")), el: a.closest(".line") || a.closest(".chunk") };
  });
  var playing = null;
  player.addEventListener("timeupdate", function () {
    var now = player.currentTime, best = null;
    for (var i = 0; i < chunks.length; i++) { if (chunks[i].t <= now + 0.25) best = chunks[i]; else break; }
    if (best && best.el !== playing) {
      if (playing) playing.classList.remove("playing");
      playing = best.el;
      playing.classList.add("playing");
    }
  });

  // The search's words marked in the cited passage: text nodes split around each match, never HTML.
  function markWords(el, query) {
    if (!el) return;
    var terms = query.toLowerCase().replace(/["()*]/g, " ").split(/\s+/).filter(function (w) {
      return w.length > 2 && w[0] !== "-" && ["and", "not", "the"].indexOf(w) < 0;
    });
    if (!terms.length) return;
    var escaped = terms.map(function (w) { return w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"); });
    var re = new RegExp("(" + escaped.join("|") + ")", "gi");
    var text = el.textContent;
    var frag = document.createDocumentFragment(), pos = 0, m;
    while ((m = re.exec(text)) !== null) {
      frag.appendChild(document.createTextNode(text.slice(pos, m.index)));
      frag.appendChild(kb.el("mark", null, m[0]));
      pos = m.index + m[0].length;
    }
    frag.appendChild(document.createTextNode(text.slice(pos)));
    el.textContent = "";
    el.appendChild(frag);
  }
})();

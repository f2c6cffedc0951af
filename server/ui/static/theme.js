// Loaded in <head> (blocking, tiny): the chosen theme is set before the page paints, so it never flashes.
(function () {
  try {
    var t = localStorage.getItem("kb-theme");
    if (t === "light" || t === "dark") document.documentElement.setAttribute("data-theme", t);
  } catch (e) { /* storage may be off: the system preference applies */ }
})();

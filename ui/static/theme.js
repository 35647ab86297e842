// Applies the saved light or dark theme before the page paints.
(function () {
  var t = null;
  try { t = localStorage.getItem("trellis-theme"); } catch (e) { /* storage off */ }
  if (t === "light" || t === "dark") document.documentElement.dataset.theme = t;
})();

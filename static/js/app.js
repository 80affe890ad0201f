// Behaviour shared by every page. The CSP forbids inline scripts, so everything lives here and
// works by event delegation: it keeps working on content that htmx swaps in.
(function () {
  "use strict";

  function byId(id) {
    return id ? document.getElementById(id) : null;
  }

  // Study viewer: heat-map toggle, heat-map opacity, zoom.
  function applyViewerControl(control) {
    const output = byId(control.id + "-value");
    if (output) output.textContent = control.value + " %";
    if (control.dataset.viewerOverlay) {
      const overlay = byId(control.dataset.viewerOverlay);
      if (overlay) overlay.hidden = !control.checked;
    } else if (control.dataset.viewerOpacity) {
      const overlay = byId(control.dataset.viewerOpacity);
      if (overlay) overlay.style.opacity = String(Number(control.value) / 100);
    } else if (control.dataset.viewerZoom) {
      const stage = byId(control.dataset.viewerZoom);
      // Widening the stage (rather than a CSS transform) lets the viewer scroll over the zoomed image.
      if (stage) stage.style.width = control.value + "%";
    }
  }

  // Review form: the final label and reason belong to an override only.
  function syncReviewForm(form) {
    const override = form.querySelector("input[name=decision][value=override]");
    const fields = form.querySelector("#override-fields");
    if (!override || !fields) return;
    const on = override.checked;
    fields.hidden = !on;
    fields.disabled = !on;
    const comment = form.querySelector("textarea[name=comment]");
    if (comment) comment.required = on;
  }

  document.addEventListener("input", function (event) {
    const control = event.target;
    if (control.matches("[data-viewer-opacity], [data-viewer-zoom]")) applyViewerControl(control);
  });

  document.addEventListener("change", function (event) {
    const control = event.target;
    if (control.matches("[data-viewer-overlay]")) applyViewerControl(control);
    if (control.matches("#review-form input[name=decision]")) syncReviewForm(control.form);
  });

  function init(root) {
    root.querySelectorAll("#review-form").forEach(syncReviewForm);
  }

  document.addEventListener("DOMContentLoaded", function () {
    init(document);
  });
  document.addEventListener("htmx:afterSettle", function (event) {
    init(event.target);
  });
})();

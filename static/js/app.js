// Behaviour shared by every page. The CSP forbids inline scripts, so everything lives here and
// works by event delegation: it keeps working on content that htmx swaps in.
(function () {
  "use strict";

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

  document.addEventListener("change", function (event) {
    const control = event.target;
    if (control.matches("#review-form input[name=decision]")) syncReviewForm(control.form);
  });

  // Logging out: cancel the images still loading first. Each would otherwise come back "logged out"
  // (401) into the page being left, and show as a broken image and a console error for a moment.
  document.addEventListener("submit", function (event) {
    if (!event.target.matches("form[data-logout]")) return;
    document.querySelectorAll("img[src]").forEach(function (img) {
      if (!img.complete) img.removeAttribute("src");
    });
  });

  // A live update whose session ended (idle logout) is redirected to the login page: go there as a
  // page instead of swapping the login form into the part being updated, and come back to this page
  // (not to the fragment the update asked for) after logging in again.
  document.addEventListener("htmx:beforeSwap", function (event) {
    const xhr = event.detail.xhr;
    const login = document.body.dataset.loginUrl;
    if (!xhr.responseURL || !login) return;
    const landed = new URL(xhr.responseURL, window.location.href);
    if (landed.pathname === login && window.location.pathname !== login) {
      event.detail.shouldSwap = false;
      const back = new URLSearchParams({ next: window.location.pathname + window.location.search });
      window.location.assign(login + "?" + back.toString());
    }
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

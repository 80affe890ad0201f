// The reading flow's keys, on the worklist and the study page; templates/studies/partials/shortcuts.html
// lists them. A key counts only when no text field, list or menu has the focus and no Ctrl, Alt or
// Meta is held, so typing is never taken for a command. The review form's own keys (Enter on a
// label, Ctrl+Enter in the reason, Escape) work inside it. Only radiologists get the review form and
// the "next study" link, so staff have no review keys at all: the keys below find nothing to act on.
(function () {
  "use strict";

  const TYPING = "input, textarea, select, [contenteditable=''], [contenteditable='true']";

  function shortcuts() {
    return document.getElementById("shortcuts");
  }

  function reviewForm() {
    return document.getElementById("review-form");
  }

  // One review per page: a second key press while the first is on its way does nothing.
  function submitting(form) {
    return form.dataset.submitting === "true";
  }

  function say(form, message) {
    const status = form.querySelector("[data-reading-status]");
    if (!status) return;
    status.textContent = message;
    status.hidden = !message;
    // The answer to a key press: in view even where the form sits below the images (a tablet).
    if (message) status.scrollIntoView({ block: "nearest" });
  }

  function choose(radio) {
    radio.checked = true;
    // app.js shows or hides (and enables or disables) the override fields on this event.
    radio.dispatchEvent(new Event("change", { bubbles: true }));
  }

  // Record the review, then open the next unreviewed study ("Record and open next").
  function recordAndNext(form) {
    if (submitting(form)) return;
    const next = form.querySelector("[data-review-next]");
    form.dataset.submitting = "true";
    form.requestSubmit(next || undefined);
    // A form the browser refuses (or a 400 the server sends back as a page) starts over anyway.
    window.setTimeout(function () {
      form.dataset.submitting = "false";
    }, 5000);
  }

  function confirmResult() {
    const form = reviewForm();
    if (!form || submitting(form)) return false;
    const confirm = form.querySelector("input[name=decision][value=confirm]");
    if (!confirm) {
      say(
        form,
        "Nothing to confirm: the model made no call on this study (indeterminate). Press o to give your reading.",
      );
      return true;
    }
    say(form, "");
    choose(confirm);
    recordAndNext(form);
    return true;
  }

  function startOverride() {
    const form = reviewForm();
    if (!form || submitting(form)) return false;
    say(form, "");
    const override = form.querySelector("input[name=decision][value=override]");
    if (!override) {
      // An indeterminate result: the radiologist's reading, abnormal or normal.
      const reading = form.querySelector("input[name=final_label]:checked, input[name=final_label]");
      if (reading) reading.focus();
      return Boolean(reading);
    }
    choose(override);
    // Overriding to the model's own label is refused, so the other label is the only choice.
    const other = form.querySelector(
      "input[name=final_label]:not([value='" + form.dataset.modelLabel + "'])",
    );
    if (other) other.checked = true;
    const reason = form.querySelector("textarea[name=comment]");
    if (reason) reason.focus();
    return true;
  }

  function cancelReview(form, field) {
    const override = form.querySelector("input[name=decision][value=override]");
    if (override && override.checked) {
      override.checked = false;
      override.dispatchEvent(new Event("change", { bubbles: true }));
    }
    say(form, "");
    field.blur();
  }

  function nextStudy() {
    const panel = shortcuts();
    const url = panel && panel.dataset.nextUrl;
    const form = reviewForm();
    if (!url || (form && submitting(form))) return false;
    window.location.assign(url);
    return true;
  }

  function toggleHelp(open) {
    const panel = shortcuts();
    if (!panel) return false;
    panel.open = open === undefined ? !panel.open : open;
    return true;
  }

  function step(delta) {
    if (!shortcuts() || shortcuts().dataset.shortcutPage !== "study") return false;
    document.dispatchEvent(new CustomEvent("viewer:step", { detail: { delta: delta } }));
    return true;
  }

  // Keys typed inside the review form: they keep their usual meaning except these.
  function formKey(event, form) {
    const field = event.target;
    if (event.key === "Escape") {
      cancelReview(form, field);
      return true;
    }
    if (event.key !== "Enter" || event.shiftKey || event.altKey) return false;
    if (field.matches("textarea")) {
      // Enter alone starts a new line in the reason; Ctrl+Enter (⌘+Enter) records it.
      if (!(event.ctrlKey || event.metaKey)) return false;
      recordAndNext(form);
      return true;
    }
    if (field.matches("input[type=radio]") && !event.ctrlKey && !event.metaKey) {
      recordAndNext(form);
      return true;
    }
    return false;
  }

  const ACTIONS = {
    j: function () {
      return step(1);
    },
    k: function () {
      return step(-1);
    },
    c: confirmResult,
    o: startOverride,
    n: nextStudy,
    "?": function () {
      return toggleHelp();
    },
    Escape: function () {
      // Only when there is something to close: Escape stays free for the viewer otherwise.
      const panel = shortcuts();
      return Boolean(panel && panel.open) && toggleHelp(false);
    },
  };

  document.addEventListener("keydown", function (event) {
    if (event.defaultPrevented || event.isComposing) return;
    const field = event.target;
    const form = reviewForm();
    if (form && field instanceof Element && field.closest("#review-form") && field.matches(TYPING)) {
      if (formKey(event, form)) event.preventDefault();
      return;
    }
    if (event.ctrlKey || event.altKey || event.metaKey) return;
    if (field instanceof Element && field.closest(TYPING)) return;
    const key = event.key.length === 1 && event.key !== "?" ? event.key.toLowerCase() : event.key;
    // Shift only makes "?"; a held-down letter does not repeat a review or a page change.
    if (event.shiftKey && key !== "?") return;
    if (event.repeat && key !== "j" && key !== "k") return;
    const action = ACTIONS[key];
    // preventDefault: the key must not also type into the field an action puts the focus in.
    if (action && action()) event.preventDefault();
  });

  document.addEventListener("click", function (event) {
    if (event.target.closest("[data-shortcuts-close]")) toggleHelp(false);
  });
})();

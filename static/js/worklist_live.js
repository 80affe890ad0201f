// The live worklist (templates/studies/partials/worklist_table.html). htmx polls the table every 3 s
// with the fingerprint of what it shows; the server answers 204 (nothing swapped) until something
// changes. This script keeps that polite:
// - no polls while the tab is hidden, and one at once when it shows again;
// - a change is held back while the pointer is over the table or the focus is in it, so the row
//   under the pointer never jumps; it is swapped in when the pointer or the focus leaves, or when
//   the "Changes waiting" button is pressed;
// - a poll that lands on the login page (the idle session ended) takes the whole page there.
(function () {
  "use strict";

  const TABLE_ID = "worklist-table";
  const FINGERPRINT = "X-Worklist-Fingerprint";
  let pending = null; // {html, fingerprint}: a change held back

  function table() {
    return document.getElementById(TABLE_ID);
  }

  function isOurs(event) {
    const target = event.detail && (event.detail.target || event.detail.elt);
    return Boolean(target && target.id === TABLE_ID);
  }

  function userIsInTable(element) {
    return element.matches(":hover") || element.contains(document.activeElement);
  }

  function showPending(element, on) {
    const button = element.querySelector("[data-worklist-apply]");
    if (button) button.hidden = !on;
    element.dataset.pending = on ? "true" : "false";
  }

  function applyPending() {
    const element = table();
    if (!pending || !element) return;
    const html = pending.html;
    pending = null;
    htmx.swap(element, html, { swapStyle: "outerHTML", ignoreTitle: true });
  }

  function applyWhenFree() {
    const element = table();
    if (pending && element && !userIsInTable(element)) applyPending();
  }

  document.addEventListener("htmx:confirm", function (event) {
    // A hidden tab does not poll (the server is spared; the table catches up when it shows again).
    if (isOurs(event) && document.hidden) event.preventDefault();
  });

  document.addEventListener("htmx:configRequest", function (event) {
    // While a change is held back, ask whether anything changed since that one.
    if (isOurs(event) && pending) event.detail.headers[FINGERPRINT] = pending.fingerprint;
  });

  document.addEventListener("htmx:beforeSwap", function (event) {
    if (!isOurs(event)) return;
    const xhr = event.detail.xhr;
    if (xhr.status !== 200) return;
    const fingerprint = xhr.getResponseHeader(FINGERPRINT);
    if (!fingerprint) {
      // Not the table: the poll was redirected to the login page. Go there as a page, not a swap.
      event.detail.shouldSwap = false;
      window.location.assign(xhr.responseURL || window.location.href);
      return;
    }
    const element = table();
    if (element && userIsInTable(element)) {
      event.detail.shouldSwap = false;
      pending = { html: xhr.responseText, fingerprint: fingerprint };
      showPending(element, true);
    } else {
      pending = null;
    }
  });

  document.addEventListener("mouseout", function (event) {
    const element = table();
    if (!pending || !element || !element.contains(event.target)) return;
    if (event.relatedTarget && element.contains(event.relatedTarget)) return;
    applyWhenFree();
  });

  document.addEventListener("focusout", function (event) {
    const element = table();
    if (!pending || !element || !element.contains(event.target)) return;
    // The focus lands on its next element after this event.
    window.setTimeout(applyWhenFree, 0);
  });

  document.addEventListener("click", function (event) {
    if (event.target.closest("[data-worklist-apply]")) applyPending();
  });

  document.addEventListener("visibilitychange", function () {
    const element = table();
    if (document.hidden || !element) return;
    htmx.ajax("GET", element.getAttribute("hx-get"), { source: element, target: element, swap: "outerHTML" });
  });
})();

// New-study page: patient picker, DICOM prefill, and one upload per file with its own progress bar.
// Without this script the form still works: it posts everything at once and the server answers.
(function () {
  "use strict";

  const form = document.getElementById("study-form");
  if (!form) return;

  const csrfToken = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  const fileInput = document.getElementById("id_file");
  const dropzone = document.getElementById("dropzone");
  const list = document.getElementById("upload-list");
  const submitButton = document.getElementById("submit-study");
  const openStudy = document.getElementById("open-study");
  const summary = document.getElementById("upload-summary");
  const formAlert = document.getElementById("form-alert");
  const patientInput = document.getElementById("id_patient");
  const chosenPatient = document.getElementById("chosen-patient");
  const chosenPatientText = document.getElementById("chosen-patient-text");
  const newPatient = document.getElementById("new-patient");

  const items = []; // {file, el, state: "pending" | "uploading" | "done" | "failed"}
  let study = null; // {study_id, detail_url, upload_url} once the study exists

  // --- patient picker ---------------------------------------------------------------------------
  function choosePatient(id, label) {
    patientInput.value = id;
    chosenPatientText.textContent = "Patient: " + label;
    chosenPatient.hidden = false;
    newPatient.hidden = true;
  }

  function clearPatient() {
    patientInput.value = "";
    chosenPatient.hidden = true;
    newPatient.hidden = false;
  }

  document.getElementById("patient-results").addEventListener("click", function (event) {
    const button = event.target.closest("[data-patient-id]");
    if (button) choosePatient(button.dataset.patientId, button.dataset.patientLabel);
  });
  document.getElementById("chosen-patient-clear").addEventListener("click", clearPatient);

  // --- errors -----------------------------------------------------------------------------------
  function clearErrors() {
    formAlert.hidden = true;
    formAlert.textContent = "";
    form.querySelectorAll(".js-error").forEach((el) => el.remove());
    form.querySelectorAll(".is-invalid").forEach((el) => {
      el.classList.remove("is-invalid");
      el.removeAttribute("aria-invalid");
    });
  }

  function showErrors(errors) {
    const general = [];
    Object.entries(errors).forEach(([field, messages]) => {
      const text = messages.map((m) => (typeof m === "string" ? m : m.message)).join(" ");
      const control = field === "__all__" ? null : document.getElementById("id_" + field);
      if (!control || control.type === "hidden") {
        general.push(text);
        return;
      }
      control.classList.add("is-invalid");
      control.setAttribute("aria-invalid", "true");
      const feedback = document.createElement("div");
      feedback.className = "invalid-feedback d-block js-error";
      feedback.id = "id_" + field + "_error";
      feedback.textContent = text;
      control.setAttribute("aria-describedby", feedback.id);
      control.insertAdjacentElement("afterend", feedback);
    });
    if (general.length) {
      formAlert.textContent = general.join(" ");
      formAlert.hidden = false;
    }
    const first = form.querySelector(".is-invalid");
    if (first) first.focus();
  }

  // --- file list --------------------------------------------------------------------------------
  function formatSize(bytes) {
    if (bytes >= 1048576) return (bytes / 1048576).toFixed(1) + " MB";
    return Math.max(1, Math.round(bytes / 1024)) + " kB";
  }

  function setItemState(item, state, message) {
    item.state = state;
    item.el.dataset.state = state;
    const status = item.el.querySelector(".upload-status");
    const symbols = { pending: "○ Waiting", uploading: "⟳ Uploading", done: "✓ Uploaded", failed: "✕ Refused" };
    status.textContent = symbols[state] + (message ? ": " + message : "");
    status.className = "upload-status small " + (state === "failed" ? "text-danger fw-semibold" : state === "done" ? "text-success" : "");
    item.el.querySelector(".upload-remove").hidden = state !== "pending" && state !== "failed";
  }

  function addFiles(files) {
    Array.from(files).forEach((file) => {
      const el = document.createElement("li");
      el.className = "upload-item border rounded p-2 mb-2";
      const id = "upload-" + items.length;
      el.innerHTML =
        '<div class="d-flex justify-content-between gap-2"><span class="upload-name fw-semibold text-break"></span>' +
        '<button type="button" class="btn btn-sm btn-outline-secondary upload-remove">Remove</button></div>' +
        '<label class="visually-hidden" for="' + id + '"></label>' +
        '<progress id="' + id + '" max="100" value="0"></progress>' +
        '<div class="upload-status small"></div><div class="upload-note small text-body-secondary"></div>';
      el.querySelector(".upload-name").textContent = file.name + " (" + formatSize(file.size) + ")";
      el.querySelector("label").textContent = "Upload progress of " + file.name;
      const item = { file: file, el: el, state: "pending" };
      el.querySelector(".upload-remove").addEventListener("click", function () {
        items.splice(items.indexOf(item), 1);
        el.remove();
      });
      items.push(item);
      list.appendChild(el);
      setItemState(item, "pending");
      inspectIfDicom(item);
    });
  }

  fileInput.addEventListener("change", function () {
    addFiles(fileInput.files);
    // The files now live in the list; the input is emptied so the plain form post never sends them twice.
    fileInput.value = "";
  });
  ["dragenter", "dragover"].forEach((name) =>
    dropzone.addEventListener(name, function (event) {
      event.preventDefault();
      dropzone.classList.add("is-dragover");
    })
  );
  ["dragleave", "drop"].forEach((name) =>
    dropzone.addEventListener(name, function () {
      dropzone.classList.remove("is-dragover");
    })
  );
  dropzone.addEventListener("drop", function (event) {
    event.preventDefault();
    addFiles(event.dataTransfer.files);
  });

  // --- DICOM prefill ----------------------------------------------------------------------------
  async function looksLikeDicom(file) {
    if (/\.dcm$/i.test(file.name)) return true;
    const head = new Uint8Array(await file.slice(128, 132).arrayBuffer());
    return String.fromCharCode.apply(null, head) === "DICM";
  }

  // Fills an empty field from the file and says so: a value taken from a file is never silent.
  function fillIfEmpty(id, value, label, filled) {
    const control = document.getElementById(id);
    if (control && value && !control.value && !control.disabled) {
      control.value = value;
      control.classList.add("border-success");
      filled.push(label + " " + value);
    }
  }

  async function inspectIfDicom(item) {
    if (!(await looksLikeDicom(item.file))) return;
    const note = item.el.querySelector(".upload-note");
    note.textContent = "Reading DICOM tags…";
    const body = new FormData();
    body.append("file", item.file);
    try {
      const response = await fetch(form.dataset.inspectUrl, {
        method: "POST",
        body: body,
        headers: { "X-CSRFToken": csrfToken, Accept: "application/json" },
        credentials: "same-origin",
      });
      const data = await response.json();
      if (!response.ok) {
        note.textContent = "This file cannot be used: " + data.error;
        note.className = "upload-note small text-danger";
        return;
      }
      const prefill = data.prefill || {};
      const filled = [];
      if (!study) {
        if (data.patient && !patientInput.value) {
          choosePatient(String(data.patient.id), data.patient.name + " (MRN " + data.patient.mrn + ")");
          filled.push("patient " + data.patient.name);
        } else if (!patientInput.value) {
          fillIfEmpty("id_mrn", prefill.mrn, "MRN", filled);
        }
        fillIfEmpty("id_accession_number", prefill.accession_number, "accession number", filled);
        fillIfEmpty("id_body_part", prefill.body_part, "body part", filled);
        fillIfEmpty("id_study_date", prefill.study_date, "study date", filled);
      }
      const found = [];
      if (prefill.mrn) found.push("patient ID " + prefill.mrn);
      if (data.metadata && data.metadata.patient_name) found.push("name " + data.metadata.patient_name);
      if (prefill.accession_number) found.push("accession " + prefill.accession_number);
      if (data.metadata && data.metadata.body_part_examined) found.push("body part " + data.metadata.body_part_examined);
      note.textContent =
        (found.length ? "DICOM: " + found.join(", ") + "." : "DICOM file without patient tags.") +
        (filled.length ? " Filled in from this file: " + filled.join(", ") + ". Check them before you submit." : "");
    } catch (error) {
      note.textContent = "The DICOM tags could not be read (" + error + ").";
    }
  }

  // --- a refused header mismatch: confirm it with a reason and send the file again -------------
  function offerConfirmation(item, mismatches) {
    const box = document.createElement("div");
    box.className = "upload-confirm border-top mt-2 pt-2";
    const id = "confirm-" + items.indexOf(item) + "-" + Date.now();
    const list = document.createElement("ul");
    list.className = "small mb-1";
    mismatches.forEach(function (m) {
      const li = document.createElement("li");
      li.textContent = m.label + " in the file: " + m.file_value + "; study: " + m.study_value;
      list.appendChild(li);
    });
    const check = document.createElement("div");
    check.className = "form-check";
    check.innerHTML = '<input class="form-check-input" type="checkbox"><label class="form-check-label small"></label>';
    check.querySelector("input").id = id + "-check";
    check.querySelector("label").htmlFor = id + "-check";
    check.querySelector("label").textContent = "This file is right despite the mismatch: upload it anyway";
    const reasonLabel = document.createElement("label");
    reasonLabel.className = "form-label small mb-0";
    reasonLabel.htmlFor = id + "-reason";
    reasonLabel.textContent = "Reason (required)";
    const reason = document.createElement("input");
    reason.type = "text";
    reason.className = "form-control form-control-sm mb-1";
    reason.id = id + "-reason";
    const button = document.createElement("button");
    button.type = "button";
    button.className = "btn btn-sm btn-warning";
    button.textContent = "Upload with the mismatch confirmed";
    button.addEventListener("click", async function () {
      if (!check.querySelector("input").checked || !reason.value.trim()) {
        reason.classList.add("is-invalid");
        reason.setAttribute("aria-invalid", "true");
        reason.focus();
        return;
      }
      button.disabled = true;
      await uploadOne(item, { confirm: true, reason: reason.value.trim() });
      if (item.state === "done") box.remove();
      else button.disabled = false;
      summarize();
    });
    box.append(list, check, reasonLabel, reason, button);
    item.el.appendChild(box);
  }

  // --- submit: create the study, then upload each file ------------------------------------------
  function uploadOne(item, confirmation) {
    return new Promise(function (resolve) {
      const xhr = new XMLHttpRequest();
      const progress = item.el.querySelector("progress");
      xhr.open("POST", study.upload_url);
      xhr.setRequestHeader("X-CSRFToken", csrfToken);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.addEventListener("progress", function (event) {
        if (event.lengthComputable) progress.value = Math.round((event.loaded / event.total) * 100);
      });
      xhr.addEventListener("load", function () {
        let data = {};
        try {
          data = JSON.parse(xhr.responseText);
        } catch (error) {
          data = {};
        }
        if (xhr.status === 201) {
          progress.value = 100;
          const confirmed = confirmation ? " (header mismatch confirmed)" : "";
          setItemState(item, "done", "queued for analysis" + confirmed);
        } else {
          progress.value = 0;
          const reasons = data.file || [data.detail || "the server answered " + xhr.status];
          setItemState(item, "failed", reasons.join(" "));
          const mismatches = data.mismatches && Object.values(data.mismatches)[0];
          if (mismatches && !confirmation && !item.el.querySelector(".upload-confirm")) offerConfirmation(item, mismatches);
        }
        resolve();
      });
      xhr.addEventListener("error", function () {
        progress.value = 0;
        setItemState(item, "pending", "the network failed; submit again to retry");
        resolve();
      });
      const body = new FormData();
      body.append("file", item.file);
      if (confirmation) {
        body.append("confirm_mismatch", "on");
        body.append("mismatch_reason", confirmation.reason);
      }
      setItemState(item, "uploading");
      xhr.send(body);
    });
  }

  async function createStudy() {
    const body = new FormData(form);
    body.delete("file");
    // How many files were chosen: the study says "2 of 4 files received" until they all arrive.
    if (items.length) body.set("expected_images", String(items.length));
    else body.delete("expected_images");
    const response = await fetch(form.action, {
      method: "POST",
      body: body,
      headers: { Accept: "application/json", "X-CSRFToken": csrfToken },
      credentials: "same-origin",
    });
    const data = await response.json().catch(() => ({}));
    if (response.status === 201) return data;
    showErrors(data.errors || { __all__: ["The study could not be registered (" + response.status + ")."] });
    return null;
  }

  // Says how many files arrived; returns how many were refused.
  function summarize() {
    const failed = items.filter((item) => item.state === "failed").length;
    const done = items.filter((item) => item.state === "done").length;
    summary.textContent =
      "Study registered. " + done + " of " + items.length + " file(s) uploaded" +
      (failed ? ", " + failed + " refused: see the reasons above." : ".");
    summary.className = failed ? "text-danger fw-semibold" : "text-success";
    return failed;
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    clearErrors();
    submitButton.disabled = true;
    try {
      if (!study) {
        study = await createStudy();
        if (!study) return;
        document.getElementById("patient-fieldset").disabled = true;
        document.getElementById("study-fieldset").disabled = true;
        openStudy.href = study.detail_url;
        openStudy.hidden = false;
        submitButton.textContent = "Upload the remaining files";
      }
      // Refused files stay refused; files that never reached the server are tried again.
      const todo = items.filter((item) => item.state === "pending");
      for (const item of todo) {
        // One at a time: the progress bars stay truthful and the server is not flooded.
        await uploadOne(item);
      }
      if (!summarize()) window.location.assign(study.detail_url);
    } finally {
      submitButton.disabled = false;
    }
  });
})();

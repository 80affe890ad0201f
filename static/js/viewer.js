// Radiograph viewer of the study page: fit, zoom, pan, 1:1, window/level on the original bit depth,
// invert, Grad-CAM overlay, distance measurement, full screen. Architecture, W/L maths and keys:
// docs/viewer.md. The CSP forbids inline scripts: every viewer is found by its [data-viewer] root.
//
// Coordinates: a point (x, y) of the image (in image pixels) is drawn at CSS pixel
// (tx + x * scale, ty + y * scale) of the viewport; the canvas backing store is devicePixelRatio
// times larger, so at scale = 1 / devicePixelRatio one image pixel covers one screen pixel (1:1).
(function () {
  "use strict";

  const ZOOM_STEP = 1.25;
  const MAX_DEVICE_ZOOM = 16; // image pixel drawn at most 16 x 16 screen pixels
  const WHEEL_SENSITIVITY = 0.0015;
  const WL_DRAG_RANGE_PX = 600; // dragging this far changes the window by the image's whole range
  const NEUTRAL_TOLERANCE = 2; // heat-map pixels this close to grey carry no heat
  const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

  // matplotlib's "jet" colour map (the server's Grad-CAM overlay), indexed by hue in quarter
  // degrees from 0 (red) to 240 (blue): [r, g, b, chroma as a 0..1 fraction]. Jet's hue falls
  // monotonically from blue (h = 0.125) to red (h = 0.875); the darker ends share those hues.
  const JET_BY_HUE = (function () {
    const channel = (x) => Math.min(1, Math.max(0, 1.5 - Math.abs(x)));
    const table = new Array(961);
    for (let step = 0; step <= 4096; step++) {
      const h = 0.125 + (0.75 * step) / 4096;
      const rgb = [channel(4 * h - 3), channel(4 * h - 2), channel(4 * h - 1)];
      const high = Math.max(...rgb);
      const chroma = high - Math.min(...rgb);
      const [r, g, b] = rgb;
      let hue = high === r ? ((g - b) / chroma) % 6 : high === g ? (b - r) / chroma + 2 : (r - g) / chroma + 4;
      hue = (hue * 60 + 360) % 360;
      const index = Math.round(Math.min(hue, 240) * 4);
      if (!table[index]) table[index] = [...rgb.map((v) => Math.round(v * 255)), chroma];
    }
    // Fill the few quarter degrees no sample landed on with their neighbour.
    for (let i = 1; i < table.length; i++) if (!table[i]) table[i] = table[i - 1];
    for (let i = table.length - 2; i >= 0; i--) if (!table[i]) table[i] = table[i + 1];
    return table;
  })();

  function dpr() {
    return window.devicePixelRatio || 1;
  }

  function formatNumber(value) {
    const rounded = Math.abs(value) >= 100 ? Math.round(value) : Math.round(value * 10) / 10;
    return String(rounded);
  }

  // Grey level g (0..255) as one RGBA pixel in the platform's byte order.
  function greyPixel(g) {
    return LITTLE_ENDIAN ? ((255 << 24) | (g << 16) | (g << 8) | g) >>> 0 : ((g << 24) | (g << 16) | (g << 8) | 255) >>> 0;
  }

  // DICOM PS3.3 C.11.2.1.2.1, linear VOI function, output scaled to 0..1.
  function windowed(x, center, width) {
    const w = Math.max(width, 1);
    if (w === 1) return x < center - 0.5 ? 0 : 1;
    if (x <= center - 0.5 - (w - 1) / 2) return 0;
    if (x > center - 0.5 + (w - 1) / 2) return 1;
    return (x - (center - 0.5)) / (w - 1) + 0.5;
  }

  class Viewer {
    constructor(root) {
      this.root = root;
      root.viewer = this;
      this.viewport = root.querySelector("[data-viewer-viewport]");
      this.canvas = root.querySelector("canvas");
      this.ctx = this.canvas.getContext("2d");
      this.message = root.querySelector("[data-viewer-message]");
      this.statusView = root.querySelector("[data-viewer-zoom-readout]");
      this.statusWindow = root.querySelector("[data-viewer-window-readout]");
      this.statusValue = root.querySelector("[data-viewer-value-readout]");
      this.statusMeasure = root.querySelector("[data-viewer-measure-readout]");
      this.calibration = root.querySelector("[data-viewer-calibration]");
      this.presetSelect = root.querySelector("[data-viewer-preset]");
      this.heatToggle = root.querySelector("[data-viewer-heatmap]");
      this.opacityInput = root.querySelector("[data-viewer-opacity]");
      this.opacityOutput = root.querySelector("[data-viewer-opacity-value]");
      this.meta = null;
      this.samples = null;
      this.image = null; // offscreen canvas: the windowed image at full resolution
      this.view = { scale: 1, tx: 0, ty: 0 };
      this.fitted = true;
      this.window = { center: 0, width: 1 };
      this.inverted = false;
      this.heat = { url: "", canvas: null, on: false, opacity: Number(this.opacityInput.value) / 100 };
      this.tool = "pan";
      this.measures = [];
      this.draft = null;
      this.drag = null;
      this.pointers = new Map();
      this.frame = 0;
      this.pixelsDirty = false;
      this.bind();
      new ResizeObserver(() => this.resize()).observe(this.viewport);
      this.lazyLoad();
    }

    // --- loading ---------------------------------------------------------------------------
    lazyLoad() {
      const observer = new IntersectionObserver(
        (entries) => {
          if (entries.some((entry) => entry.isIntersecting)) {
            observer.disconnect();
            this.load();
          }
        },
        { rootMargin: "300px" },
      );
      observer.observe(this.root);
    }

    async load() {
      if (this.loading) return;
      this.loading = true;
      try {
        const meta = await this.fetchOk(this.root.dataset.pixelsUrl, "application/json").then((r) => r.json());
        const buffer = await this.fetchOk(meta.data_url, "application/octet-stream").then((r) => r.arrayBuffer());
        if (buffer.byteLength !== meta.width * meta.height * 2) {
          throw new Error("the pixel data is incomplete (" + buffer.byteLength + " bytes)");
        }
        this.setPixels(meta, this.toSamples(buffer));
      } catch (error) {
        this.showMessage("The image could not be loaded: " + error.message);
        this.root.dataset.viewerState = "error";
      }
    }

    async fetchOk(url, accept) {
      const response = await fetch(url, { credentials: "same-origin", headers: { Accept: accept } });
      if (response.status === 401 || response.status === 403) {
        throw new Error("your session has ended; log in again");
      }
      if (!response.ok) {
        let detail = "HTTP " + response.status;
        try {
          detail = (await response.json()).detail || detail;
        } catch (ignored) {
          // not JSON: keep the status
        }
        throw new Error(detail);
      }
      return response;
    }

    toSamples(buffer) {
      if (LITTLE_ENDIAN) return new Uint16Array(buffer);
      const view = new DataView(buffer);
      const samples = new Uint16Array(buffer.byteLength / 2);
      for (let i = 0; i < samples.length; i++) samples[i] = view.getUint16(i * 2, true);
      return samples;
    }

    setPixels(meta, samples) {
      this.meta = meta;
      this.samples = samples;
      this.image = document.createElement("canvas");
      this.image.width = meta.width;
      this.image.height = meta.height;
      this.imageCtx = this.image.getContext("2d");
      this.imageData = this.imageCtx.createImageData(meta.width, meta.height);
      this.out32 = new Uint32Array(this.imageData.data.buffer);
      this.presetSelect.replaceChildren(
        ...meta.presets.map((preset, index) => {
          const option = document.createElement("option");
          option.value = preset.key;
          option.textContent = index + 2 + " · " + preset.label;
          return option;
        }),
      );
      const custom = document.createElement("option");
      custom.value = "custom";
      custom.textContent = "Custom (dragged)";
      custom.hidden = true;
      this.presetSelect.append(custom);
      this.presetSelect.disabled = false;
      this.calibration.textContent = this.calibrationNote();
      this.root.querySelectorAll("[data-viewer-action]").forEach((button) => (button.disabled = false));
      this.applyPreset(0);
      this.hideMessage();
      this.fit();
      // Drawn (and its readouts published) before it says "ready", not on the next animation frame.
      if (this.pixelsDirty) this.renderPixels();
      this.draw();
      this.root.dataset.viewerState = "ready";
      this.syncHeatmapSource();
    }

    // --- window/level ------------------------------------------------------------------------
    applyPreset(index) {
      const preset = this.meta.presets[index];
      if (!preset) return;
      this.presetSelect.value = preset.key;
      this.setWindow(preset.center, preset.width, preset.key);
    }

    setWindow(center, width, presetKey) {
      this.window = { center: center, width: Math.max(1, width) };
      this.presetSelect.value = presetKey || "custom";
      this.pixelsDirty = true;
      this.schedule();
    }

    renderPixels() {
      const meta = this.meta;
      const low = meta.sample_min;
      const count = meta.sample_max - low + 1;
      const lut = new Uint32Array(count);
      // MONOCHROME1: high values are dark. "Invert" flips whatever the photometric says.
      const flip = (meta.photometric === "MONOCHROME1") !== this.inverted;
      const { center, width } = this.window;
      for (let k = 0; k < count; k++) {
        const value = (low + k) * meta.rescale_slope + meta.rescale_intercept;
        let grey = Math.round(windowed(value, center, width) * 255);
        if (flip) grey = 255 - grey;
        lut[k] = greyPixel(grey);
      }
      const samples = this.samples;
      const out = this.out32;
      for (let i = 0; i < samples.length; i++) out[i] = lut[samples[i] - low];
      this.imageCtx.putImageData(this.imageData, 0, 0);
      this.pixelsDirty = false;
    }

    // --- view transform ------------------------------------------------------------------------
    size() {
      return { width: this.viewport.clientWidth, height: this.viewport.clientHeight };
    }

    fitScale() {
      const { width, height } = this.size();
      return Math.min(width / this.meta.width, height / this.meta.height);
    }

    fit() {
      if (!this.meta) return;
      const { width, height } = this.size();
      const scale = this.fitScale();
      this.view = {
        scale: scale,
        tx: (width - this.meta.width * scale) / 2,
        ty: (height - this.meta.height * scale) / 2,
      };
      this.fitted = true;
      this.schedule();
    }

    zoomAt(x, y, factor) {
      if (!this.meta) return;
      const minimum = this.fitScale() / 4;
      const maximum = Math.max(MAX_DEVICE_ZOOM / dpr(), this.fitScale());
      const scale = Math.min(maximum, Math.max(minimum, this.view.scale * factor));
      const ratio = scale / this.view.scale;
      this.view = { scale: scale, tx: x - (x - this.view.tx) * ratio, ty: y - (y - this.view.ty) * ratio };
      this.fitted = false;
      this.schedule();
    }

    zoomCentre(factor) {
      const { width, height } = this.size();
      this.zoomAt(width / 2, height / 2, factor);
    }

    oneToOne() {
      if (!this.meta) return;
      this.zoomCentre(1 / dpr() / this.view.scale);
    }

    toImage(clientX, clientY) {
      const rect = this.viewport.getBoundingClientRect();
      return {
        x: (clientX - rect.left - this.view.tx) / this.view.scale,
        y: (clientY - rect.top - this.view.ty) / this.view.scale,
      };
    }

    resize() {
      const { width, height } = this.size();
      if (width === 0 || height === 0) return; // moved out of the page for a moment by htmx
      const ratio = dpr();
      this.canvas.width = Math.round(width * ratio);
      this.canvas.height = Math.round(height * ratio);
      if (this.meta && this.fitted) this.fit();
      else this.draw();
    }

    // --- drawing -------------------------------------------------------------------------------
    schedule() {
      if (this.frame) return;
      this.frame = requestAnimationFrame(() => {
        this.frame = 0;
        if (this.pixelsDirty) this.renderPixels();
        this.draw();
      });
    }

    draw() {
      const ctx = this.ctx;
      const ratio = dpr();
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.fillStyle = "#000";
      ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
      if (!this.meta || this.pixelsDirty) return;
      const { scale, tx, ty } = this.view;
      ctx.setTransform(ratio * scale, 0, 0, ratio * scale, ratio * tx, ratio * ty);
      ctx.imageSmoothingEnabled = true;
      ctx.imageSmoothingQuality = "high";
      ctx.drawImage(this.image, 0, 0);
      if (this.heat.on && this.heat.canvas) {
        ctx.globalAlpha = this.heat.opacity;
        ctx.drawImage(this.heat.canvas, 0, 0, this.meta.width, this.meta.height);
        ctx.globalAlpha = 1;
      }
      ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
      this.measures.forEach((line) => this.drawMeasure(line, false));
      if (this.draft) this.drawMeasure(this.draft, true);
      this.publish();
    }

    drawMeasure(line, draft) {
      const ctx = this.ctx;
      const { scale, tx, ty } = this.view;
      const ax = tx + line.a.x * scale;
      const ay = ty + line.a.y * scale;
      const bx = tx + line.b.x * scale;
      const by = ty + line.b.y * scale;
      ctx.lineWidth = 2;
      ctx.strokeStyle = draft ? "#7fdbff" : "#ffdc00";
      ctx.beginPath();
      ctx.moveTo(ax, ay);
      ctx.lineTo(bx, by);
      ctx.stroke();
      [
        [ax, ay],
        [bx, by],
      ].forEach(([x, y]) => {
        ctx.beginPath();
        ctx.arc(x, y, 3, 0, 2 * Math.PI);
        ctx.stroke();
      });
      const text = this.distanceText(line);
      ctx.font = "600 13px system-ui, sans-serif";
      const labelX = (ax + bx) / 2 + 8;
      const labelY = (ay + by) / 2 - 8;
      const metrics = ctx.measureText(text);
      ctx.fillStyle = "rgba(0, 0, 0, 0.7)";
      ctx.fillRect(labelX - 3, labelY - 14, metrics.width + 6, 18);
      ctx.fillStyle = ctx.strokeStyle;
      ctx.fillText(text, labelX, labelY);
    }

    // --- measurement -----------------------------------------------------------------------
    distance(line) {
      const dx = line.b.x - line.a.x;
      const dy = line.b.y - line.a.y;
      const spacing = this.meta.pixel_spacing;
      const px = Math.hypot(dx, dy);
      // PixelSpacing is (row spacing, column spacing): rows step in y, columns in x.
      const mm = spacing ? Math.hypot(dx * spacing.column_mm, dy * spacing.row_mm) : null;
      return { px: px, mm: mm };
    }

    distanceText(line) {
      const { px, mm } = this.distance(line);
      return mm === null ? px.toFixed(1) + " px" : mm.toFixed(1) + " mm";
    }

    calibrationNote() {
      const spacing = this.meta.pixel_spacing;
      if (!spacing) return "Calibration unknown: distances are in image pixels.";
      const where = spacing.source === "ImagerPixelSpacing" ? " at the detector (not corrected for magnification)" : "";
      return "Calibrated from " + spacing.source + " " + spacing.row_mm + " × " + spacing.column_mm + " mm" + where + ".";
    }

    setTool(tool) {
      this.tool = this.tool === tool ? "pan" : tool;
      this.draft = null;
      this.root.dataset.tool = this.tool;
      this.pressed("measure", this.tool === "measure");
      this.calibration.hidden = this.tool !== "measure" && this.measures.length === 0;
      this.schedule();
    }

    clearMeasures() {
      this.measures = [];
      this.draft = null;
      this.calibration.hidden = this.tool !== "measure";
      this.schedule();
    }

    // --- heat map --------------------------------------------------------------------------
    syncHeatmapSource() {
      const source = document.querySelector('[data-viewer-heatmap-source="' + this.root.id + '"]');
      const url = source ? source.dataset.url : "";
      if (!url || url === this.heat.url || !this.meta) return;
      this.heat.url = url;
      const picture = new Image();
      picture.onload = () => {
        this.heat.canvas = this.heatLayer(picture);
        this.heatToggle.disabled = false;
        this.opacityInput.disabled = false;
        this.heatToggle.closest(".viewer-heat").title = "";
        this.schedule();
      };
      picture.onerror = () => {
        this.heat.url = "";
        this.showMessage("The heat map could not be loaded.");
      };
      picture.src = url;
    }

    // The stored overlay is the radiograph in 8-bit grey blended with the heat's "jet" colour:
    // b = (1 - a) * grey + a * jet(h). Adding grey changes neither hue nor chroma (max - min), so
    // each pixel's hue gives h, hence jet(h), and its chroma gives a. The viewer draws only that
    // colour layer (colour jet(h), alpha a) over the windowed image: at full opacity it is the
    // server's blend, but over the radiologist's window instead of the 8-bit preview.
    heatLayer(picture) {
      const canvas = document.createElement("canvas");
      canvas.width = picture.naturalWidth;
      canvas.height = picture.naturalHeight;
      const ctx = canvas.getContext("2d", { willReadFrequently: true });
      ctx.drawImage(picture, 0, 0);
      const data = ctx.getImageData(0, 0, canvas.width, canvas.height);
      const px = data.data;
      for (let i = 0; i < px.length; i += 4) {
        const r = px[i];
        const g = px[i + 1];
        const b = px[i + 2];
        const high = Math.max(r, g, b);
        const chroma = high - Math.min(r, g, b);
        if (chroma <= NEUTRAL_TOLERANCE) {
          px[i + 3] = 0;
          continue;
        }
        let hue = high === r ? ((g - b) / chroma) % 6 : high === g ? (b - r) / chroma + 2 : (r - g) / chroma + 4;
        hue = (hue * 60 + 360) % 360;
        if (hue > 300) hue = 0; // a rounding step past red, not magenta: jet has no magenta
        const colour = JET_BY_HUE[Math.min(JET_BY_HUE.length - 1, Math.round(Math.min(hue, 240) * 4))];
        px[i] = colour[0];
        px[i + 1] = colour[1];
        px[i + 2] = colour[2];
        px[i + 3] = Math.min(255, Math.round(chroma / colour[3]));
      }
      ctx.putImageData(data, 0, 0);
      return canvas;
    }

    setHeat(on) {
      if (!this.heat.canvas) return;
      this.heat.on = on;
      this.heatToggle.checked = on;
      this.schedule();
    }

    // --- full screen ---------------------------------------------------------------------------
    toggleFullscreen() {
      if (document.fullscreenElement === this.root) {
        document.exitFullscreen();
      } else if (this.root.requestFullscreen) {
        this.root.requestFullscreen().catch((error) => this.showMessage("Full screen refused: " + error.message));
      }
    }

    // --- input -------------------------------------------------------------------------------
    bind() {
      const viewport = this.viewport;
      viewport.addEventListener("contextmenu", (event) => event.preventDefault());
      viewport.addEventListener("wheel", (event) => this.onWheel(event), { passive: false });
      viewport.addEventListener("pointerdown", (event) => this.onPointerDown(event));
      viewport.addEventListener("pointermove", (event) => this.onPointerMove(event));
      viewport.addEventListener("pointerup", (event) => this.onPointerUp(event));
      viewport.addEventListener("pointercancel", (event) => this.onPointerUp(event));
      viewport.addEventListener("pointerleave", () => (this.statusValue.textContent = ""));
      viewport.addEventListener("dblclick", () => this.fit());
      this.root.addEventListener("click", (event) => {
        const button = event.target.closest("[data-viewer-action]");
        if (button && this.root.contains(button)) this.act(button.dataset.viewerAction);
      });
      this.root.addEventListener("focusin", () => setActive(this));
      this.root.addEventListener("pointerdown", () => setActive(this));
      this.presetSelect.addEventListener("change", () => {
        const index = this.meta.presets.findIndex((preset) => preset.key === this.presetSelect.value);
        if (index >= 0) this.applyPreset(index);
      });
      this.heatToggle.addEventListener("change", () => this.setHeat(this.heatToggle.checked));
      this.opacityInput.addEventListener("input", () => {
        this.heat.opacity = Number(this.opacityInput.value) / 100;
        this.opacityOutput.textContent = this.opacityInput.value + " %";
        this.schedule();
      });
    }

    act(action) {
      if (!this.meta && action !== "fullscreen") return;
      const actions = {
        fit: () => this.fit(),
        one: () => this.oneToOne(),
        "zoom-in": () => this.zoomCentre(ZOOM_STEP),
        "zoom-out": () => this.zoomCentre(1 / ZOOM_STEP),
        "reset-wl": () => this.applyPreset(0),
        invert: () => {
          this.inverted = !this.inverted;
          this.pressed("invert", this.inverted);
          this.pixelsDirty = true;
          this.schedule();
        },
        heatmap: () => this.setHeat(!this.heat.on),
        measure: () => this.setTool("measure"),
        clear: () => this.clearMeasures(),
        fullscreen: () => this.toggleFullscreen(),
      };
      if (actions[action]) actions[action]();
    }

    pressed(action, on) {
      const button = this.root.querySelector('[data-viewer-action="' + action + '"]');
      if (button) button.setAttribute("aria-pressed", on ? "true" : "false");
    }

    onWheel(event) {
      if (!this.meta) return;
      event.preventDefault();
      const lines = event.deltaMode === 1 ? 16 : event.deltaMode === 2 ? this.size().height : 1;
      const rect = this.viewport.getBoundingClientRect();
      const factor = Math.exp(-event.deltaY * lines * WHEEL_SENSITIVITY);
      this.zoomAt(event.clientX - rect.left, event.clientY - rect.top, factor);
    }

    onPointerDown(event) {
      if (!this.meta) return;
      this.viewport.setPointerCapture(event.pointerId);
      this.pointers.set(event.pointerId, { x: event.clientX, y: event.clientY });
      if (this.pointers.size === 2) {
        this.draft = null;
        this.drag = { mode: "pinch", ...this.pinchState() };
        return;
      }
      const windowing = event.button === 2 || (event.button === 0 && event.shiftKey);
      if (windowing) {
        this.drag = { mode: "wl", x: event.clientX, y: event.clientY, ...this.window };
      } else if (event.button === 0 && this.tool === "measure") {
        const point = this.toImage(event.clientX, event.clientY);
        this.draft = { a: point, b: point };
        this.drag = { mode: "measure" };
      } else if (event.button === 0 || event.button === 1) {
        this.drag = { mode: "pan", x: event.clientX, y: event.clientY, tx: this.view.tx, ty: this.view.ty };
      }
      event.preventDefault();
    }

    pinchState() {
      const [first, second] = [...this.pointers.values()];
      const rect = this.viewport.getBoundingClientRect();
      return {
        distance: Math.hypot(second.x - first.x, second.y - first.y) || 1,
        x: (first.x + second.x) / 2 - rect.left,
        y: (first.y + second.y) / 2 - rect.top,
      };
    }

    onPointerMove(event) {
      if (!this.meta) return;
      this.showValue(event);
      if (this.pointers.has(event.pointerId)) this.pointers.set(event.pointerId, { x: event.clientX, y: event.clientY });
      const drag = this.drag;
      if (!drag) return;
      if (drag.mode === "pinch" && this.pointers.size === 2) {
        const now = this.pinchState();
        this.view.tx += now.x - drag.x;
        this.view.ty += now.y - drag.y;
        this.zoomAt(now.x, now.y, now.distance / drag.distance);
        this.drag = { mode: "pinch", ...now };
      } else if (drag.mode === "pan") {
        this.view.tx = drag.tx + event.clientX - drag.x;
        this.view.ty = drag.ty + event.clientY - drag.y;
        this.fitted = false;
        this.schedule();
      } else if (drag.mode === "wl") {
        // Right: wider window (less contrast); down: higher level (darker), as in OHIF.
        const step = (this.meta.value_max - this.meta.value_min || 1) / WL_DRAG_RANGE_PX;
        this.setWindow(drag.center + (event.clientY - drag.y) * step, drag.width + (event.clientX - drag.x) * step, null);
      } else if (drag.mode === "measure" && this.draft) {
        this.draft.b = this.toImage(event.clientX, event.clientY);
        this.schedule();
      }
    }

    onPointerUp(event) {
      this.pointers.delete(event.pointerId);
      if (this.drag && this.drag.mode === "measure" && this.draft) {
        const { a, b } = this.draft;
        // A click without a drag is not a measurement.
        if (Math.hypot(b.x - a.x, b.y - a.y) * this.view.scale > 3) {
          this.measures.push(this.draft);
          this.calibration.hidden = false;
        }
        this.draft = null;
        this.schedule();
      }
      this.drag = this.pointers.size === 0 ? null : this.drag && this.drag.mode === "pinch" ? null : this.drag;
    }

    showValue(event) {
      const point = this.toImage(event.clientX, event.clientY);
      const x = Math.floor(point.x);
      const y = Math.floor(point.y);
      if (x < 0 || y < 0 || x >= this.meta.width || y >= this.meta.height) {
        this.statusValue.textContent = "";
        return;
      }
      const value = this.samples[y * this.meta.width + x] * this.meta.rescale_slope + this.meta.rescale_intercept;
      this.statusValue.textContent = "Value " + formatNumber(value) + " at (" + x + ", " + y + ")";
    }

    // --- readouts: visible text, and data- attributes the browser tests read ------------------
    publish() {
      const { scale, tx, ty } = this.view;
      const zoom = Math.round(scale * dpr() * 100);
      this.statusView.textContent = "Zoom " + zoom + " %" + (this.fitted ? " (fit)" : "");
      const preset = this.meta.presets.find((item) => item.key === this.presetSelect.value);
      this.statusWindow.textContent =
        "W " + formatNumber(this.window.width) + " / L " + formatNumber(this.window.center) + (preset ? " · " + preset.label : " · custom") + (this.inverted ? " · inverted" : "");
      const last = this.measures[this.measures.length - 1];
      this.statusMeasure.textContent = last ? "Distance " + this.distanceText(last) : "";
      const data = this.root.dataset;
      data.imageWidth = String(this.meta.width);
      data.imageHeight = String(this.meta.height);
      data.scale = String(scale);
      data.tx = String(tx);
      data.ty = String(ty);
      data.windowCenter = String(this.window.center);
      data.windowWidth = String(this.window.width);
      data.inverted = String(this.inverted);
      data.heatmap = this.heat.canvas ? (this.heat.on ? "on" : "off") : "none";
      if (last) {
        const { px, mm } = this.distance(last);
        data.measurePx = String(px);
        data.measureMm = mm === null ? "" : String(mm);
      } else {
        delete data.measurePx;
        delete data.measureMm;
      }
    }

    showMessage(text) {
      this.message.textContent = text;
      this.message.hidden = false;
    }

    hideMessage() {
      this.message.hidden = true;
    }
  }

  // --- the active viewer: keyboard target, and what viewer:step moves -----------------------
  function allViewers() {
    return [...document.querySelectorAll("[data-viewer]")].map((root) => root.viewer).filter(Boolean);
  }

  function activeViewer() {
    const root = document.querySelector("[data-viewer-active]");
    return root && root.viewer ? root.viewer : allViewers()[0] || null;
  }

  function setActive(viewer) {
    document.querySelectorAll("[data-viewer-active]").forEach((root) => {
      if (root !== viewer.root) root.removeAttribute("data-viewer-active");
    });
    viewer.root.setAttribute("data-viewer-active", "");
  }

  function step(delta) {
    const viewers = allViewers();
    if (viewers.length === 0) return;
    const current = viewers.indexOf(activeViewer());
    const next = viewers[Math.min(viewers.length - 1, Math.max(0, current + delta))];
    setActive(next);
    next.root.scrollIntoView({ block: "start", behavior: "auto" });
    next.viewport.focus({ preventScroll: true });
  }

  // Letters typed in a text field, list or menu are the user's, not shortcuts (a slider or a
  // switch of the toolbar takes no letters: the keys keep working after using one).
  function takesTyping(target) {
    if (!target.closest) return false;
    if (target.closest("textarea, select, [contenteditable=''], [contenteditable='true']")) return true;
    return target.matches("input") && !/^(range|checkbox|radio|button|submit|reset)$/.test(target.type);
  }

  const KEYS = {
    f: "fit",
    1: "one",
    "+": "zoom-in",
    "=": "zoom-in",
    "-": "zoom-out",
    _: "zoom-out",
    i: "invert",
    h: "heatmap",
    r: "reset-wl",
    m: "measure",
    x: "fullscreen",
  };

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.altKey || event.metaKey || event.defaultPrevented) return;
    if (takesTyping(event.target)) return;
    const viewer = activeViewer();
    if (!viewer) return;
    const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    if (KEYS[key]) {
      viewer.act(KEYS[key]);
    } else if (key >= "2" && key <= "5" && viewer.meta) {
      viewer.applyPreset(Number(key) - 2);
    } else {
      return;
    }
    event.preventDefault();
  });

  document.addEventListener("viewer:step", (event) => {
    const delta = event.detail && event.detail.delta;
    if (delta === 1 || delta === -1) step(delta);
  });

  document.addEventListener("fullscreenchange", () => {
    allViewers().forEach((viewer) => {
      const on = document.fullscreenElement === viewer.root;
      viewer.root.toggleAttribute("data-fullscreen", on);
      viewer.pressed("fullscreen", on);
    });
  });

  // Set up new viewers; after a live update (the viewer itself is hx-preserve'd, so it keeps its
  // state and pixels), pick up a heat map that has just appeared and redraw.
  function scan() {
    document.querySelectorAll("[data-viewer]").forEach((root) => {
      const viewer = root.viewer || new Viewer(root);
      viewer.syncHeatmapSource();
      viewer.schedule();
    });
    const viewers = allViewers();
    if (viewers.length && !document.querySelector("[data-viewer-active]")) setActive(viewers[0]);
  }

  document.addEventListener("DOMContentLoaded", scan);
  document.addEventListener("htmx:afterSettle", scan);
})();

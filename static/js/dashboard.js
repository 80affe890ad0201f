// Dashboard charts (Chart.js, vendored). The figures come from a JSON block the server wrote
// (studies.dashboard.chart_data): each with its 95 % confidence interval, drawn as a whisker, and
// the number of studies behind it; a figure resting on too few studies has a pale bar. When any
// result behind the charts comes from a demo model, every chart says so in its title. The table
// under the charts holds the same numbers, in words, for anyone who cannot see them.
(function () {
  "use strict";
  const source = document.getElementById("dashboard-data");
  if (!source || typeof Chart === "undefined") return;
  const data = JSON.parse(source.textContent);
  const PALE = "55"; // alpha appended to a bar's colour when its figure rests on too few studies

  function series(figures, scale) {
    return figures.map((f) => (f.value === null ? null : f.value * scale));
  }

  function dataset(label, figures, colour, scale) {
    return {
      label: label,
      data: series(figures, scale),
      figures: figures,
      scale: scale,
      backgroundColor: figures.map((f) => (f.caveat ? colour + PALE : colour)),
      borderColor: colour,
      borderWidth: 1,
    };
  }

  function number(value, scale) {
    return scale === 100 ? (value * 100).toFixed(1) + " %" : value.toFixed(2);
  }

  // "Sensitivity: 80.0 % (95 % CI 49.0–94.3 %), n = 10 abnormal studies"
  function describe(context) {
    const set = context.dataset;
    const f = set.figures[context.dataIndex];
    if (f.value === null) return set.label + ": no figure (" + (f.caveat || "undefined") + ")";
    let text = set.label + ": " + number(f.value, set.scale);
    if (f.low !== null && f.high !== null) {
      text += " (95 % CI " + number(f.low, set.scale) + "–" + number(f.high, set.scale) + ")";
    }
    text += ", n = " + f.counted;
    return f.caveat ? [text, f.caveat] : text;
  }

  // Whiskers: each bar's interval as a vertical line with caps, drawn on the canvas.
  const whiskers = {
    id: "confidenceWhiskers",
    afterDatasetsDraw(chart) {
      const ctx = chart.ctx;
      const y = chart.scales.y;
      ctx.save();
      ctx.strokeStyle = "#212529";
      ctx.lineWidth = 1.5;
      chart.data.datasets.forEach(function (set, index) {
        const meta = chart.getDatasetMeta(index);
        if (meta.hidden) return;
        meta.data.forEach(function (bar, i) {
          const f = set.figures[i];
          if (!f || f.value === null || f.low === null || f.high === null) return;
          const top = y.getPixelForValue(f.high * set.scale);
          const bottom = y.getPixelForValue(f.low * set.scale);
          const cap = Math.min(6, bar.width / 3);
          ctx.beginPath();
          ctx.moveTo(bar.x, top);
          ctx.lineTo(bar.x, bottom);
          ctx.moveTo(bar.x - cap, top);
          ctx.lineTo(bar.x + cap, top);
          ctx.moveTo(bar.x - cap, bottom);
          ctx.lineTo(bar.x + cap, bottom);
          ctx.stroke();
        });
      });
      ctx.restore();
    },
  };

  function options(title, yScale) {
    return {
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      scales: { y: yScale },
      plugins: {
        legend: { position: "bottom" },
        title: { display: true, text: title },
        subtitle: {
          display: data.demo,
          text: "Includes results of a " + data.demo_notice,
          color: "#8a6d00",
          font: { weight: "bold" },
        },
        tooltip: { callbacks: { label: describe } },
      },
    };
  }

  new Chart(document.getElementById("chart-flagged"), {
    type: "bar",
    data: {
      labels: data.labels,
      datasets: [
        dataset("Long run (before the window)", data.baseline_rate, "#6c757d", 100),
        dataset("Last 7 days", data.recent_rate, "#b02a37", 100),
        dataset("All time", data.flagged_rate, "#0d6efd", 100),
      ],
    },
    options: options("% flagged, 95 % CI" + (data.demo ? " — demo model" : ""), {
      min: 0,
      max: 100,
      title: { display: true, text: "% flagged" },
    }),
    plugins: [whiskers],
  });

  new Chart(document.getElementById("chart-agreement"), {
    type: "bar",
    data: {
      labels: data.labels,
      datasets: [
        dataset("Cohen's kappa", data.kappa, "#198754", 1),
        dataset("Sensitivity", data.sensitivity, "#0dcaf0", 1),
        dataset("Specificity", data.specificity, "#6f42c1", 1),
      ],
    },
    options: options("Agreement with radiologists, 95 % CI" + (data.demo ? " — demo model" : ""), {
      min: -1,
      max: 1,
    }),
    plugins: [whiskers],
  });
})();

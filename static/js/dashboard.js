// Dashboard charts (Chart.js, vendored). The figures come from a JSON block the server wrote;
// the table under the charts holds the same numbers for anyone who cannot see them.
(function () {
  "use strict";
  const source = document.getElementById("dashboard-data");
  if (!source || typeof Chart === "undefined") return;
  const data = JSON.parse(source.textContent);
  const percent = (values) => values.map((v) => (v === null ? null : Math.round(v * 1000) / 10));
  const common = {
    responsive: true,
    maintainAspectRatio: false,
    animation: false,
    plugins: { legend: { position: "bottom" } },
  };

  new Chart(document.getElementById("chart-flagged"), {
    type: "bar",
    data: {
      labels: data.labels,
      datasets: [
        { label: "Long run (before the window) %", data: percent(data.baseline_rate), backgroundColor: "#6c757d" },
        { label: "Last 7 days %", data: percent(data.recent_rate), backgroundColor: "#b02a37" },
        { label: "All time %", data: percent(data.flagged_rate), backgroundColor: "#0d6efd" },
      ],
    },
    options: Object.assign({}, common, { scales: { y: { min: 0, max: 100, title: { display: true, text: "% flagged" } } } }),
  });

  new Chart(document.getElementById("chart-agreement"), {
    type: "bar",
    data: {
      labels: data.labels,
      datasets: [
        { label: "Cohen's kappa", data: data.kappa, backgroundColor: "#198754" },
        { label: "Sensitivity", data: data.sensitivity, backgroundColor: "#0dcaf0" },
        { label: "Specificity", data: data.specificity, backgroundColor: "#6f42c1" },
      ],
    },
    options: Object.assign({}, common, { scales: { y: { min: -1, max: 1 } } }),
  });
})();

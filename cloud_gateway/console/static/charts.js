// The Sites page's charts: each .chart[data-url] draws the site's outlets' current per
// minute against its contract current (uPlot, vendored), and refreshes every minute.
(function () {
  function draw(element) {
    fetch(element.dataset.url, { credentials: "same-origin" })
      .then(function (answer) { return answer.json(); })
      .then(function (data) {
        var cap = data.t.map(function () { return data.cap_a; });
        var width = Math.max(280, element.clientWidth);
        var options = {
          width: width, height: 220,
          series: [{}, { label: "outlets (A)", stroke: "#075", width: 2 },
                   { label: "contract (A)", stroke: "#a00", dash: [6, 4] }],
          axes: [{}, { label: "A" }],
          scales: { y: { range: function (u, min, max) { return [0, Math.max(max, data.cap_a) * 1.1]; } } },
        };
        element.innerHTML = "";
        element.dataset.points = String(data.t.length);
        new uPlot(options, [data.t, data.current_a, cap], element);
      })
      .catch(function () { element.textContent = "no data"; });
  }
  function drawAll() { document.querySelectorAll(".chart[data-url]").forEach(draw); }
  document.addEventListener("DOMContentLoaded", function () { drawAll(); setInterval(drawAll, 60000); });
})();

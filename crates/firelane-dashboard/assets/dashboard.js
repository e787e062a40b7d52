// Firelane dashboard: live counts and graphs on the overview, selection helpers on lists.
// Served from the dashboard itself (no CDN); the pages work without it, minus the live parts.
(function () {
  "use strict";

  // Lists refresh themselves (htmx polling); not while the person is selecting jobs, which a
  // refresh would undo.
  document.body.addEventListener("htmx:beforeRequest", function (e) {
    var elt = e.detail && e.detail.elt;
    if (!elt || !elt.getAttribute) return;
    if (elt.getAttribute("data-live") === "list" &&
        document.querySelector('input[data-testid="select-job"]:checked')) {
      e.preventDefault();
    }
  });

  // "Select all" in a list's header.
  document.addEventListener("change", function (e) {
    var t = e.target;
    if (!t || !t.classList || !t.classList.contains("select-all")) return;
    var form = t.closest("form");
    if (!form) return;
    form.querySelectorAll('input[data-testid="select-job"]').forEach(function (box) {
      box.checked = t.checked;
    });
  });

  function css(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
  }

  function axes() {
    var grid = { stroke: css("--border"), width: 1 };
    return [
      { stroke: css("--muted"), grid: grid, ticks: grid },
      { stroke: css("--muted"), grid: grid, ticks: grid, size: 50 },
    ];
  }

  function series() {
    return [
      {},
      { label: "succeeded", stroke: css("--succeeded"), width: 2, points: { show: false } },
      { label: "failed", stroke: css("--failed"), width: 2, points: { show: false } },
    ];
  }

  function width(el) {
    return Math.max(200, el.clientWidth);
  }

  // A chart that is rebuilt when the theme or the width changes.
  function chart(el, height, extra) {
    var plot = null;
    var data = null;
    function build() {
      if (plot) plot.destroy();
      var opts = {
        width: width(el),
        height: height,
        series: series(),
        axes: axes(),
        legend: { show: false },
        cursor: { drag: { x: false, y: false } },
        scales: { y: { range: function (u, min, max) { return [0, Math.max(1, max * 1.1)]; } } },
      };
      for (var k in extra) opts[k] = extra[k];
      plot = new window.uPlot(opts, data, el);
    }
    return {
      set: function (d) {
        data = d;
        if (plot) plot.setData(d); else build();
        el.setAttribute("data-ready", "true");
      },
      rebuild: function () { if (data) build(); },
      resize: function () { if (plot) plot.setSize({ width: width(el), height: height }); },
    };
  }

  var charts = [];
  window.addEventListener("resize", function () { charts.forEach(function (c) { c.resize(); }); });
  if (window.matchMedia) {
    var mq = window.matchMedia("(prefers-color-scheme: dark)");
    var rebuild = function () { charts.forEach(function (c) { c.rebuild(); }); };
    if (mq.addEventListener) mq.addEventListener("change", rebuild);
  }

  function setText(selector, value) {
    document.querySelectorAll(selector).forEach(function (el) {
      if (el.textContent !== String(value)) el.textContent = String(value);
    });
  }

  // The overview's live graph: jobs per second from the difference of two readings of the
  // running totals, every second; the counts per state from the same reading.
  var live = document.getElementById("live-graph");
  if (live && window.uPlot) {
    var POINTS = 120;
    var xs = [], ok = [], bad = [];
    var now = Math.floor(Date.now() / 1000);
    for (var i = POINTS; i > 0; i--) { xs.push(now - i); ok.push(0); bad.push(0); }
    var liveChart = chart(live, 220, {});
    charts.push(liveChart);
    liveChart.set([xs, ok, bad]);
    var prev = null;
    var poll = function () {
      fetch(live.getAttribute("data-api"), { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
        .then(function (s) {
          var t = Date.now() / 1000;
          if (prev) {
            var dt = Math.max(0.001, t - prev.t);
            xs.push(Math.floor(t));
            ok.push(Math.max(0, (s.succeeded_total - prev.s) / dt));
            bad.push(Math.max(0, (s.failed_total - prev.f) / dt));
            if (xs.length > POINTS) { xs.shift(); ok.shift(); bad.shift(); }
            liveChart.set([xs, ok, bad]);
          }
          prev = { t: t, s: s.succeeded_total, f: s.failed_total };
          var states = ["enqueued", "scheduled", "processing", "succeeded", "failed", "deleted", "awaiting"];
          states.forEach(function (k) {
            var n = (s.states && s.states[k]) || 0;
            setText('[data-testid="state-count-' + k + '"]', n);
            setText(".badge-" + k, n);
          });
          setText("#servers-count", s.servers);
          setText("#succeeded-total", s.succeeded_total);
          setText("#failed-total", s.failed_total);
          live.removeAttribute("data-error");
        })
        .catch(function (e) { live.setAttribute("data-error", String(e)); })
        .then(function () { setTimeout(poll, 1000); });
    };
    poll();
  }

  // The overview's history graph: jobs per hour over 24 hours or 7 days.
  var hist = document.getElementById("history-graph");
  if (hist && window.uPlot) {
    var histChart = chart(hist, 220, {});
    charts.push(histChart);
    var range = "24h";
    var load = function () {
      fetch(hist.getAttribute("data-api") + "?range=" + range, { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
        .then(function (hours) {
          var x = [], s = [], f = [];
          hours.forEach(function (h) {
            x.push(Date.parse(h.hour) / 1000);
            s.push(h.succeeded);
            f.push(h.failed);
          });
          histChart.set([x, s, f]);
          hist.setAttribute("data-range", range);
          hist.removeAttribute("data-error");
        })
        .catch(function (e) { hist.setAttribute("data-error", String(e)); });
    };
    document.querySelectorAll(".range-button").forEach(function (b) {
      b.addEventListener("click", function () {
        range = b.getAttribute("data-range");
        document.querySelectorAll(".range-button").forEach(function (o) {
          var on = o === b;
          o.classList.toggle("active", on);
          o.setAttribute("aria-pressed", on ? "true" : "false");
        });
        load();
      });
    });
    load();
    setInterval(load, 60000);
  }
})();

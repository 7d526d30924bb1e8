// gradscope report page: sortable and filterable tables, plot legends that pick out a series, details opened
// for printing. Also records, in the DOM, any script error or blocked content (Content-Security-Policy) so
// that a headless browser test can read them back.
(function () {
  "use strict";
  var root = document.documentElement;
  var errors = [];
  function record(message) {
    errors.push(String(message));
    root.setAttribute("data-gs-errors", String(errors.length));
    var box = document.getElementById("gs-errors");
    if (box) { box.textContent = errors.join("\n"); }
  }
  window.addEventListener("error", function (e) { record("error: " + (e.message || e.type)); });
  document.addEventListener("securitypolicyviolation", function (e) {
    record("blocked by the page's policy: " + e.violatedDirective + " " + (e.blockedURI || "inline"));
  });
  root.setAttribute("data-gs-errors", "0");

  var collator = new Intl.Collator(undefined, {numeric: true});

  function cellValue(row, index, numeric) {
    var text = row.cells[index] ? row.cells[index].textContent : "";
    if (!numeric) { return text.toLowerCase(); }
    var v = parseFloat(text);
    return isNaN(v) ? null : v;
  }

  function makeSortable(table) {
    var heads = table.tHead ? table.tHead.rows[0].cells : [];
    Array.prototype.forEach.call(heads, function (th, index) {
      th.setAttribute("tabindex", "0");
      function sort() {
        var numeric = th.classList.contains("n");
        var ascending = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        var keyed = rows.map(function (row, i) { return [cellValue(row, index, numeric), i, row]; });
        keyed.sort(function (a, b) {
          if (a[0] === null || b[0] === null) {  // missing values last, either direction
            return a[0] === b[0] ? a[1] - b[1] : (a[0] === null ? 1 : -1);
          }
          // names in natural order: layer.2 before layer.10
          var c = numeric ? (a[0] < b[0] ? -1 : (a[0] > b[0] ? 1 : 0)) : collator.compare(a[0], b[0]);
          return (ascending ? c : -c) || a[1] - b[1];
        });
        var fragment = document.createDocumentFragment();
        keyed.forEach(function (k) { fragment.appendChild(k[2]); });
        body.appendChild(fragment);
      }
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (e) { if (e.key === "Enter") { sort(); } });
    });
  }

  function makeFilterable(table) {
    var text = document.getElementById(table.id + "-filter");
    var variant = document.getElementById(table.id + "-variant");
    var problems = document.getElementById(table.id + "-problems");
    var count = document.getElementById(table.id + "-count");
    var rows = Array.prototype.slice.call(table.tBodies[0].rows);
    var haystack = rows.map(function (row) { return row.textContent.toLowerCase(); });
    function apply() {
      var words = text ? text.value.trim().toLowerCase().split(/\s+/).filter(Boolean) : [];
      var only = variant ? variant.value : "";
      var onlyProblems = problems ? problems.checked : false;
      var shown = 0;
      rows.forEach(function (row, i) {
        var ok = words.every(function (w) { return haystack[i].indexOf(w) !== -1; }) &&
                 (!only || row.getAttribute("data-variant") === only) &&
                 (!onlyProblems || row.classList.contains("problem"));
        row.hidden = !ok;
        if (ok) { shown += 1; }
      });
      if (count) { count.textContent = shown + " of " + rows.length + " rows"; }
    }
    if (text) { text.addEventListener("input", apply); }
    if (variant) { variant.addEventListener("change", apply); }
    if (problems) { problems.addEventListener("change", apply); }
    apply();
  }

  // A plot legend entry, hovered, picks out its series (the others fade); clicked, it stays picked until
  // clicked again.
  function makeLegend(plot) {
    var pinned = null;
    function show(key) {
      plot.classList.toggle("focus", key !== null);
      Array.prototype.forEach.call(plot.querySelectorAll("[data-series]"), function (el) {
        el.classList.toggle("on", el.getAttribute("data-series") === key);
      });
    }
    Array.prototype.forEach.call(plot.querySelectorAll(".legend-item"), function (item) {
      var key = item.getAttribute("data-series");
      item.addEventListener("mouseenter", function () { show(key); });
      item.addEventListener("mouseleave", function () { show(pinned); });
      item.addEventListener("click", function () { pinned = pinned === key ? null : key; show(pinned); });
    });
  }

  // Opened as report.html#gs-selftest (by the browser test), sort and filter the parameter table the way a
  // reader would and write the outcome into data-gs-selftest.
  function selfTest() {
    var table = document.getElementById("param-table");
    if (!table) { root.setAttribute("data-gs-selftest", "no parameter table"); return; }
    var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
    var column = heads.findIndex(function (th) { return th.textContent === "grad_l2"; });
    heads[column].click();
    var values = Array.prototype.map.call(table.tBodies[0].rows, function (row) {
      return cellValue(row, column, true);
    }).filter(function (v) { return v !== null; });
    for (var i = 1; i < values.length; i += 1) {
      if (values[i - 1] > values[i]) { root.setAttribute("data-gs-selftest", "not sorted at row " + i); return; }
    }
    var filter = document.getElementById("param-table-filter");
    filter.value = "blocks.1";
    filter.dispatchEvent(new Event("input"));
    var shown = Array.prototype.filter.call(table.tBodies[0].rows, function (row) { return !row.hidden; });
    var wrong = shown.some(function (row) { return row.textContent.indexOf("blocks.1") === -1; });
    if (shown.length === 0 || wrong) { root.setAttribute("data-gs-selftest", "filter showed " + shown.length); return; }
    filter.value = "";
    filter.dispatchEvent(new Event("input"));
    var problems = document.getElementById("param-table-problems");
    if (problems) {
      problems.click();
      var visible = Array.prototype.filter.call(table.tBodies[0].rows, function (row) { return !row.hidden; });
      var clean = visible.some(function (row) { return !row.classList.contains("problem"); });
      problems.click();
      if (visible.length === 0 || clean) { root.setAttribute("data-gs-selftest", "problem rows: " + visible.length); return; }
    }
    var item = document.querySelector("svg.plot .legend-item");
    if (item) {
      item.dispatchEvent(new Event("mouseenter"));
      var plot = item.closest("svg");
      var picked = plot.querySelectorAll(".series.on").length;
      item.dispatchEvent(new Event("mouseleave"));
      if (!picked || plot.classList.contains("focus")) { root.setAttribute("data-gs-selftest", "legend"); return; }
    }
    if (root.scrollWidth > window.innerWidth + 1) {  // wide tables and long names scroll or wrap in place
      root.setAttribute("data-gs-selftest", "page wider than the window: " + root.scrollWidth); return;
    }
    root.setAttribute("data-gs-selftest", "pass");
  }

  document.addEventListener("DOMContentLoaded", function () {
    try {
      Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), makeSortable);
      Array.prototype.forEach.call(document.querySelectorAll("table.filterable"), makeFilterable);
      Array.prototype.forEach.call(document.querySelectorAll("svg.plot"), makeLegend);
      window.addEventListener("beforeprint", function () {  // print every table, not just the open ones
        Array.prototype.forEach.call(document.querySelectorAll("details"), function (d) { d.open = true; });
      });
      if (location.hash === "#gs-selftest") { selfTest(); }
      root.setAttribute("data-gs-ready-ms", performance.now().toFixed(1));
      root.setAttribute("data-gs-ready", "1");
    } catch (e) {
      record("setup failed: " + e);
    }
  });
  window.addEventListener("load", function () {
    root.setAttribute("data-gs-load-ms", performance.now().toFixed(1));
  });
})();

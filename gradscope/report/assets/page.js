// gradscope report page: sortable and filterable tables. Also records, in the DOM, any script error or
// blocked content (Content-Security-Policy) so that a headless browser test can read them back.
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
          var c = a[0] < b[0] ? -1 : (a[0] > b[0] ? 1 : 0);
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
    var count = document.getElementById(table.id + "-count");
    var rows = Array.prototype.slice.call(table.tBodies[0].rows);
    var haystack = rows.map(function (row) { return row.textContent.toLowerCase(); });
    function apply() {
      var needle = text ? text.value.trim().toLowerCase() : "";
      var only = variant ? variant.value : "";
      var shown = 0;
      rows.forEach(function (row, i) {
        var ok = (!needle || haystack[i].indexOf(needle) !== -1) &&
                 (!only || row.getAttribute("data-variant") === only);
        row.hidden = !ok;
        if (ok) { shown += 1; }
      });
      if (count) { count.textContent = shown + " of " + rows.length + " rows"; }
    }
    if (text) { text.addEventListener("input", apply); }
    if (variant) { variant.addEventListener("change", apply); }
    apply();
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
    root.setAttribute("data-gs-selftest", shown.length > 0 && !wrong ? "pass" : "filter showed " + shown.length);
    filter.value = "";
    filter.dispatchEvent(new Event("input"));
  }

  document.addEventListener("DOMContentLoaded", function () {
    try {
      Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), makeSortable);
      Array.prototype.forEach.call(document.querySelectorAll("table.filterable"), makeFilterable);
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

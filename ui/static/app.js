// Trellis UI: fills the server-rendered pages from the REST API (/api/v1)
// and keeps them current by polling compact endpoints while the tab is
// visible and something is unfinished. No framework; dagre lays out the
// graph.
"use strict";

(function () {
  var body = document.body;
  var page = body.dataset.page;
  var dagID = body.dataset.dag || "";
  var runID = body.dataset.run || "";
  var taskID = body.dataset.task || "";
  var csrfMeta = document.querySelector('meta[name="trellis-csrf"]');
  var csrf = csrfMeta ? csrfMeta.content : "";
  var FINAL = { success: 1, failed: 1, skipped: 1, upstream_failed: 1, removed: 1 };
  var STATES = ["success", "running", "failed", "up_for_retry", "upstream_failed", "skipped", "queued", "scheduled", "restarting", "deferred", "removed", "none"];

  // ---------- helpers ----------
  function $(s, el) { return (el || document).querySelector(s); }
  function esc(s) {
    return String(s == null ? "" : s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function enc(s) { return encodeURIComponent(s); }
  function dagURL(d) { return "/dags/" + enc(d); }
  function runURL(d, r) { return dagURL(d) + "/runs/" + enc(r); }
  function tiURL(d, r, t) { return runURL(d, r) + "/tasks/" + enc(t); }
  function apiRun(d, r) { return "/api/v1/dags/" + enc(d) + "/dagRuns/" + enc(r); }
  function stateOf(s) { return s == null ? "none" : s; }
  function fmtDur(ms) {
    if (ms == null || isNaN(ms)) return "";
    if (ms < 1000) return ms + " ms";
    var s = ms / 1000;
    if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + " s";
    var m = Math.floor(s / 60), rs = Math.round(s % 60);
    if (m < 60) return m + "m " + rs + "s";
    return Math.floor(m / 60) + "h " + (m % 60) + "m";
  }
  function fmtTime(iso) {
    if (!iso) return "—";
    var d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString();
  }
  function ms(iso) { return iso ? Date.parse(iso) : null; }
  function toast(msg) {
    var t = $("#toast");
    t.textContent = msg;
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(function () { t.hidden = true; }, 6000);
  }
  // painted marks the first time a view is on screen (for benchmarks:
  // performance.getEntriesByName(name)).
  function painted(name) {
    if (performance.getEntriesByName(name).length) return;
    requestAnimationFrame(function () { setTimeout(function () { performance.mark(name); }, 0); });
  }
  function live(msg) { var l = $("#live"); if (l) l.textContent = msg; }

  // api calls the REST API with the session cookie (and its CSRF token
  // for changes); a 401 sends the browser to the login page.
  function api(method, path, data, accept) {
    var headers = { Accept: accept || "application/json" };
    if (method !== "GET" && method !== "HEAD") headers["X-Trellis-CSRF"] = csrf;
    var opts = { method: method, headers: headers, credentials: "same-origin" };
    if (data !== undefined) {
      headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(data);
    }
    return fetch(path, opts).then(function (r) {
      if (r.status === 401) {
        location.href = "/login?next=" + enc(location.pathname + location.search);
        throw new Error("not logged in");
      }
      if (!r.ok) {
        return r.text().then(function (t) {
          var msg = r.status + " " + r.statusText;
          try { var p = JSON.parse(t); msg = (p.title ? p.title + ": " : "") + (p.detail || msg); } catch (e) { /* not JSON */ }
          var err = new Error(msg);
          err.status = r.status;
          throw err;
        });
      }
      if (r.status === 204) return null;
      var ct = r.headers.get("Content-Type") || "";
      return ct.indexOf("json") >= 0 ? r.json() : r.text();
    });
  }

  // poller calls fn now and then again after the delay fn resolves to
  // (ms; 0 stops), only while the page is visible.
  function poller(fn) {
    var timer = null, stopped = false, busy = false;
    function tick() {
      timer = null;
      if (stopped) return;
      if (document.visibilityState === "hidden") { timer = setTimeout(tick, 1000); return; }
      busy = true;
      Promise.resolve().then(fn).then(function (next) {
        busy = false;
        if (next > 0 && !stopped) timer = setTimeout(tick, next);
      }, function (e) {
        busy = false;
        live("update failed: " + e.message);
        if (!stopped) timer = setTimeout(tick, 5000);
      });
    }
    tick();
    return {
      now: function () { if (timer) clearTimeout(timer); if (!busy) tick(); },
      stop: function () { stopped = true; if (timer) clearTimeout(timer); }
    };
  }

  // setHTML replaces el's content only when it changed, and gives the
  // focus back to the element that had it (found again by key(el)), so
  // that refreshes do not throw keyboard users off.
  function setHTML(el, html, key) {
    if (el.__html === html) return;
    el.__html = html;
    var a = document.activeElement, k = a && el.contains(a) && key ? key(a) : null;
    el.innerHTML = html;
    if (k) {
      var again = el.querySelector(k);
      if (again) again.focus();
    }
  }

  // twoStep turns a dangerous button into "click again to confirm".
  function twoStep(btn, label, fn) {
    var armed = false, text = btn.textContent;
    btn.addEventListener("click", function () {
      if (!armed) {
        armed = true;
        btn.textContent = label;
        setTimeout(function () { armed = false; btn.textContent = text; }, 4000);
        return;
      }
      armed = false;
      btn.textContent = text;
      fn();
    });
  }

  // tabs wires an ARIA tablist: arrows move between tabs, the hash keeps
  // the choice.
  function tabs(list, onShow) {
    var ts = Array.prototype.slice.call(list.querySelectorAll('[role="tab"]'));
    function select(t, focus) {
      ts.forEach(function (o) {
        var on = o === t;
        o.setAttribute("aria-selected", on ? "true" : "false");
        o.tabIndex = on ? 0 : -1;
        document.getElementById(o.getAttribute("aria-controls")).hidden = !on;
      });
      if (focus) t.focus();
      history.replaceState(null, "", "#" + t.id.replace(/^tab-/, ""));
      if (onShow) onShow(t.id.replace(/^tab-/, ""));
    }
    ts.forEach(function (t, i) {
      t.addEventListener("click", function () { select(t); });
      t.addEventListener("keydown", function (e) {
        var j = e.key === "ArrowRight" ? i + 1 : e.key === "ArrowLeft" ? i - 1 : -1;
        if (j >= 0 || e.key === "ArrowLeft") { e.preventDefault(); select(ts[(j + ts.length) % ts.length], true); }
      });
    });
    var want = document.getElementById("tab-" + location.hash.slice(1));
    if (want) select(want);
  }

  function legend(el) {
    if (!el) return;
    el.innerHTML = STATES.map(function (s) {
      return '<span><span class="sq s-' + s + '"></span>' + s.replace(/_/g, " ") + "</span>";
    }).join("");
  }

  // ---------- theme ----------
  $("#theme").addEventListener("click", function () {
    var root = document.documentElement;
    var dark = root.dataset.theme ? root.dataset.theme === "dark" : matchMedia("(prefers-color-scheme: dark)").matches;
    root.dataset.theme = dark ? "light" : "dark";
    try { localStorage.setItem("trellis-theme", root.dataset.theme); } catch (e) { /* storage off */ }
  });

  // ---------- DAG list ----------
  function dagsPage() {
    var limit = 25, offset = 0, tags = {}, search = $("#search"), paused = $("#paused-filter");
    var rows = $("#dag-rows");
    api("GET", "/api/v1/dags?limit=1000&fields=tags").then(function (res) {
      var all = {};
      res.dags.forEach(function (d) { (d.tags || []).forEach(function (t) { all[t.name] = 1; }); });
      $("#tags").innerHTML = Object.keys(all).sort().map(function (t) {
        return '<button type="button" class="tag" aria-pressed="false" data-tag="' + esc(t) + '">' + esc(t) + "</button>";
      }).join("");
    }).catch(function (e) { toast(e.message); });
    $("#tags").addEventListener("click", function (e) {
      var b = e.target.closest("[data-tag]");
      if (!b) return;
      var t = b.dataset.tag;
      if (tags[t]) delete tags[t]; else tags[t] = 1;
      b.setAttribute("aria-pressed", tags[t] ? "true" : "false");
      offset = 0;
      p.now();
    });
    var typing;
    search.addEventListener("input", function () { clearTimeout(typing); typing = setTimeout(function () { offset = 0; p.now(); }, 200); });
    paused.addEventListener("change", function () { offset = 0; p.now(); });
    rows.addEventListener("change", function (e) {
      var cb = e.target.closest("input[data-pause]");
      if (!cb) return;
      var id = cb.dataset.pause;
      cb.disabled = true;
      api("PATCH", "/api/v1/dags/" + enc(id) + "?update_mask=is_paused", { is_paused: !cb.checked })
        .then(function (d) { cb.checked = !d.is_paused; live(id + (d.is_paused ? " paused" : " unpaused")); })
        .catch(function (err) { cb.checked = !cb.checked; toast(err.message); })
        .then(function () { cb.disabled = false; });
    });
    $("#dag-pager").addEventListener("click", function (e) {
      var b = e.target.closest("[data-off]");
      if (!b) return;
      offset = +b.dataset.off;
      p.now();
    });
    function load() {
      var q = "limit=" + limit + "&offset=" + offset;
      if (search.value.trim()) q += "&dag_id_pattern=" + enc(search.value.trim());
      Object.keys(tags).forEach(function (t) { q += "&tags=" + enc(t); });
      if (paused.value) q += "&paused=" + paused.value;
      return api("GET", "/api/v1/dags?" + q).then(function (res) {
        return Promise.all(res.dags.map(function (d) {
          return api("GET", "/api/v1/dags/" + enc(d.dag_id) + "/dagRuns?order_by=-execution_date&limit=10&fields=dag_run_id,state")
            .then(function (r) { return r.dag_runs; }, function () { return []; });
        })).then(function (runs) {
          var busy = false;
          setHTML(rows, res.dags.length ? res.dags.map(function (d, i) {
            var rs = runs[i].slice().reverse();
            rs.forEach(function (r) { if (!FINAL[r.state]) busy = true; });
            var sched = d.schedule_interval ? (d.schedule_interval.value || d.schedule_interval.days + "d") : "";
            return "<tr>" +
              '<td><label class="switch"><input type="checkbox" role="switch" data-pause="' + esc(d.dag_id) + '" aria-label="' +
                esc(d.dag_id) + ' active"' + (d.is_paused ? "" : " checked") + "><span></span></label></td>" +
              '<td><a href="' + dagURL(d.dag_id) + '" class="dag-link"><strong>' + esc(d.dag_id) + "</strong></a>" +
                (d.description ? '<div class="muted">' + esc(d.description) + "</div>" : "") +
                (d.tags || []).map(function (t) { return ' <span class="tag">' + esc(t.name) + "</span>"; }).join("") + "</td>" +
              "<td>" + (sched ? "<code>" + esc(sched) + "</code>" : '<span class="muted">manual</span>') + "</td>" +
              "<td>" + (d.next_dagrun && !d.is_paused ? '<time datetime="' + esc(d.next_dagrun) + '">' + esc(fmtTime(d.next_dagrun)) + "</time>" : '<span class="muted">—</span>') + "</td>" +
              '<td class="runs">' + (rs.length ? rs.map(function (r) {
                return '<a class="sq s-' + esc(r.state) + '" href="' + runURL(d.dag_id, r.dag_run_id) + '" title="' + esc(r.dag_run_id + ": " + r.state) + '" aria-label="run ' + esc(r.dag_run_id) + " " + esc(r.state) + '"></a>';
              }).join("") : '<span class="muted">no runs</span>') + "</td>" +
              '<td><a class="button mini" href="' + dagURL(d.dag_id) + '/trigger" aria-label="Trigger ' + esc(d.dag_id) + '">▶ Trigger</a></td></tr>';
          }).join("") : '<tr><td colspan="6" class="muted">No DAG matches.</td></tr>', function (a) {
            if (a.dataset.pause) return 'input[data-pause="' + a.dataset.pause + '"]';
            var href = a.getAttribute("href");
            return href ? 'a[href="' + href + '"]' : null;
          });
          var pg = "";
          if (offset > 0) pg += '<button type="button" data-off="' + Math.max(0, offset - limit) + '">◀ Previous</button>';
          pg += '<span class="muted">' + (res.total_entries ? offset + 1 : 0) + "–" + (offset + res.dags.length) + " of " + res.total_entries + "</span>";
          if (offset + limit < res.total_entries) pg += '<button type="button" data-off="' + (offset + limit) + '">Next ▶</button>';
          $("#dag-pager").innerHTML = pg;
          live("updated " + new Date().toLocaleTimeString());
          return busy ? 3000 : 10000;
        });
      });
    }
    var p = poller(load);
  }

  // ---------- DAG page: grid and graph ----------
  function dagPage() {
    var runOffset = 0, runLimit = 25, taskOffset = 0, taskLimit = 1000, grid = null, lastBody = "";
    var selRun = new URLSearchParams(location.search).get("run"); // the run just triggered, if any
    var graphShown = false, graphData = null, nodeEls = {};
    legend($("#legend"));
    var on = $("#dag-on");
    api("GET", "/api/v1/dags/" + enc(dagID) + "?fields=is_paused").then(function (d) { on.checked = !d.is_paused; });
    on.addEventListener("change", function () {
      api("PATCH", "/api/v1/dags/" + enc(dagID) + "?update_mask=is_paused", { is_paused: !on.checked })
        .then(function (d) { on.checked = !d.is_paused; live(d.is_paused ? "paused" : "unpaused"); })
        .catch(function (e) { on.checked = !on.checked; toast(e.message); });
    });
    tabs($(".tabs"), function (which) { if (which === "graph") showGraph(); });
    $("#grid-older").addEventListener("click", function () { runOffset += runLimit; p.now(); });
    $("#grid-newer").addEventListener("click", function () { runOffset = Math.max(0, runOffset - runLimit); p.now(); });
    $("#grid-tasks-pager").addEventListener("click", function (e) {
      var b = e.target.closest("[data-toff]");
      if (b) { taskOffset = +b.dataset.toff; p.now(); }
    });
    $("#grid").addEventListener("click", function (e) {
      var h = e.target.closest(".rh[data-run]");
      if (h && !e.target.closest("a")) { selRun = h.dataset.run; markSelected(); colourGraph(); }
    });
    $("#graph-run").addEventListener("change", function () { selRun = this.value; markSelected(); colourGraph(); });

    function load() {
      var path = "/api/v1/dags/" + enc(dagID) + "/grid?limit=" + runLimit + "&offset=" + runOffset +
        "&task_limit=" + taskLimit + "&task_offset=" + taskOffset;
      return fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } }).then(function (r) {
        if (r.status === 401) { location.href = "/login?next=" + enc(location.pathname); throw new Error("not logged in"); }
        if (!r.ok) throw new Error("grid: " + r.status);
        return r.text();
      }).then(function (text) {
        var busy;
        if (text !== lastBody) {
          lastBody = text;
          grid = JSON.parse(text);
          grid.runs.reverse(); // oldest left
          grid.tasks.forEach(function (t) {
            t.states.reverse(); t.tries.reverse(); t.start_ms.reverse(); t.end_ms.reverse();
            if (t.calls) { t.calls.reverse(); t.call_states.reverse(); }
          });
          if (!selRun || !grid.runs.some(function (r) { return r.dag_run_id === selRun; })) {
            selRun = grid.runs.length ? grid.runs[grid.runs.length - 1].dag_run_id : null;
          }
          renderGrid();
          colourGraph();
          painted("trellis-grid");
        }
        busy = grid.runs.some(function (r) { return r.state === "queued" || r.state === "running"; });
        live((busy ? "live · " : "") + "updated " + new Date().toLocaleTimeString());
        return busy ? 1500 : 8000;
      });
    }

    // renderGrid draws the header (one bar per run) and the rows on
    // screen: rows are virtualised (a spacer the height of every row, and
    // only the rows in view, with some around, in the DOM), so a DAG of
    // thousands of tasks costs what a screenful does.
    var ROWH = 22, COLW = 22, TASKW = 260;
    function renderGrid() {
      var g = grid, now = Date.now(), wrap = $("#grid");
      if (!g.runs.length) {
        wrap.innerHTML = '<p class="muted" style="padding:10px">No runs yet. <a href="' + dagURL(dagID) + '/trigger">Trigger one</a>.</p>';
        gridBody = null;
      } else {
        var maxDur = 1;
        var durs = g.runs.map(function (r) {
          var s = ms(r.start_date), e = ms(r.end_date) || (s ? now : null);
          var d = s ? e - s : 0;
          if (d > maxDur) maxDur = d;
          return d;
        });
        var width = TASKW + g.runs.length * COLW;
        var h = ['<div class="gh" style="width:' + width + 'px"><span class="task">Task</span>'];
        g.runs.forEach(function (r, j) {
          var hgt = 6 + Math.round(48 * durs[j] / maxDur);
          h.push('<span class="rh' + (r.dag_run_id === selRun ? " sel" : "") + '" data-run="' + esc(r.dag_run_id) + '"><a class="rb s-' + esc(r.state) +
            '" style="height:' + hgt + 'px" href="' + runURL(dagID, r.dag_run_id) + '" title="' +
            esc(r.dag_run_id + "\n" + r.state + " · " + fmtTime(r.logical_date) + (durs[j] ? " · " + fmtDur(durs[j]) : "")) +
            '" aria-label="run ' + esc(r.dag_run_id) + " " + esc(r.state) + '"></a></span>');
        });
        h.push('</div><div class="gb" id="grid-table" style="width:' + width + "px;height:" + g.tasks.length * ROWH + 'px"></div>');
        var sx = wrap.scrollLeft, sy = wrap.scrollTop, first = !gridBody;
        wrap.innerHTML = h.join("");
        gridBody = $("#grid-table");
        wrap.scrollTop = sy;
        wrap.scrollLeft = first ? wrap.scrollWidth : sx;
        renderRows();
      }
      $("#grid-summary").textContent = "runs " + (g.total_runs ? g.offset + 1 : 0) + "–" + (g.offset + g.runs.length) + " of " + g.total_runs +
        " (newest right) · " + g.total_tasks + " tasks";
      $("#grid-older").disabled = g.offset + g.runs.length >= g.total_runs;
      $("#grid-newer").disabled = g.offset === 0;
      var tp = "";
      if (g.total_tasks > taskLimit) {
        if (taskOffset > 0) tp += '<button type="button" data-toff="' + Math.max(0, taskOffset - taskLimit) + '">◀ Tasks</button>';
        tp += '<span class="muted">tasks ' + (taskOffset + 1) + "–" + (taskOffset + g.tasks.length) + " of " + g.total_tasks + "</span>";
        if (taskOffset + taskLimit < g.total_tasks) tp += '<button type="button" data-toff="' + (taskOffset + taskLimit) + '">Tasks ▶</button>';
      }
      $("#grid-tasks-pager").innerHTML = tp;
      var sel = $("#graph-run");
      sel.innerHTML = g.runs.slice().reverse().map(function (r) {
        return '<option value="' + esc(r.dag_run_id) + '"' + (r.dag_run_id === selRun ? " selected" : "") + ">" + esc(r.dag_run_id) + " (" + esc(r.state) + ")</option>";
      }).join("");
    }

    // callCounts tells how many calls are in each state, most first.
    function callCounts(cs) {
      return Object.keys(cs || {}).sort(function (a, b) { return cs[b] - cs[a]; })
        .map(function (k) { return cs[k] + " " + k.replace(/_/g, " "); }).join(", ");
    }
    var gridBody = null, rowsQueued = false;
    function renderRows() {
      if (!gridBody) return;
      var g = grid, wrap = $("#grid"), now = Date.now();
      var from = Math.max(0, Math.floor(wrap.scrollTop / ROWH) - 20);
      var to = Math.min(g.tasks.length, Math.ceil((wrap.scrollTop + wrap.clientHeight) / ROWH) + 20);
      var runHref = g.runs.map(function (r) { return runURL(dagID, r.dag_run_id) + "/tasks/"; });
      var h = [];
      for (var i = from; i < to; i++) {
        var t = g.tasks[i], te = enc(t.task_id), tx = esc(t.task_id);
        h.push('<div class="gr" style="top:' + i * ROWH + 'px" data-i="' + i + '" data-task="' + tx + '"><span class="task" title="' + tx + '">' + tx + "</span>");
        for (var j = 0; j < g.runs.length; j++) {
          var st = stateOf(t.states[j]), s = t.start_ms[j], e = t.end_ms[j];
          var d = s != null ? (e != null ? e - s : now - s) : null;
          var tip = tx + " · " + esc(g.runs[j].dag_run_id) + "&#10;" + st + (t.tries[j] ? " · try " + t.tries[j] : "") + (d != null ? " · " + fmtDur(d) : "");
          var n = t.calls ? t.calls[j] : 0;
          if (n) {
            // A callable's calls in the run: one cell, coloured by their
            // summary state, labelled with their count; it opens their list.
            tip = tx + " · " + esc(g.runs[j].dag_run_id) + "&#10;" + n + (n === 1 ? " call" : " calls") + ": " + callCounts(t.call_states[j]) + (d != null ? " · " + fmtDur(d) : "");
            h.push('<a class="c calls s-' + st + '" href="' + runHref[j] + te + '" title="' + tip + '" data-state="' + st + '" data-calls="' + n + '">' + (n > 99 ? "99+" : n) + "</a>");
            continue;
          }
          h.push('<a class="c s-' + st + '" href="' + runHref[j] + te + '" title="' + tip + '" data-state="' + st + '"></a>');
        }
        h.push("</div>");
      }
      gridBody.innerHTML = h.join("");
    }
    // Arrow keys move between the grid's cells (Home/End: first and last
    // run); rows out of view are scrolled to and drawn first.
    $("#grid").addEventListener("keydown", function (e) {
      var a = e.target.closest("a.c");
      if (!a || !grid) return;
      var row = a.parentNode, i = +row.dataset.i;
      var j = Array.prototype.indexOf.call(row.querySelectorAll("a.c"), a);
      var d = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] }[e.key];
      if (e.key === "Home") d = [0, -j];
      if (e.key === "End") d = [0, grid.runs.length - 1 - j];
      if (!d) return;
      e.preventDefault();
      var i2 = Math.min(grid.tasks.length - 1, Math.max(0, i + d[0])), j2 = Math.min(grid.runs.length - 1, Math.max(0, j + d[1]));
      var wrap = $("#grid"), top = i2 * ROWH, head = 64;
      if (top < wrap.scrollTop) wrap.scrollTop = top;
      else if (top + ROWH > wrap.scrollTop + wrap.clientHeight - head) wrap.scrollTop = top + ROWH - wrap.clientHeight + head;
      renderRows();
      var next = gridBody.querySelector('.gr[data-i="' + i2 + '"]');
      if (next) next.querySelectorAll("a.c")[j2].focus();
    });
    $("#grid").addEventListener("scroll", function () {
      if (rowsQueued) return;
      rowsQueued = true;
      requestAnimationFrame(function () { rowsQueued = false; renderRows(); });
    });

    function markSelected() {
      document.querySelectorAll("#grid .rh.sel").forEach(function (th) { th.classList.remove("sel"); });
      document.querySelectorAll("#grid .rh[data-run]").forEach(function (th) {
        if (th.dataset.run === selRun) th.classList.add("sel");
      });
      $("#graph-run").value = selRun || "";
    }

    function showGraph() {
      if (graphShown) return;
      graphShown = true;
      var el = $("#graph");
      el.innerHTML = '<p class="muted" style="padding:10px">Laying out…</p>';
      api("GET", "/api/v1/dags/" + enc(dagID) + "/graph").then(function (d) {
        graphData = d;
        var t0 = performance.now();
        var g = new dagre.graphlib.Graph();
        g.setGraph({ rankdir: "LR", nodesep: 10, ranksep: 48, marginx: 16, marginy: 16 });
        g.setDefaultEdgeLabel(function () { return {}; });
        d.tasks.forEach(function (t) { g.setNode(t.task_id, { width: Math.max(80, 7.4 * t.task_id.length + 30), height: 28 }); });
        d.edges.forEach(function (e) { g.setEdge(e.from, e.to); });
        dagre.layout(g);
        var gg = g.graph(), out = ['<svg xmlns="http://www.w3.org/2000/svg" width="' + Math.ceil(gg.width) + '" height="' + Math.ceil(gg.height) +
          '" role="img" aria-label="Graph of ' + esc(dagID) + '"><defs><marker id="arr" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0 0L10 5L0 10z" fill="currentColor"/></marker></defs>'];
        g.edges().forEach(function (e) {
          var pts = g.edge(e).points;
          out.push('<path class="edge" marker-end="url(#arr)" d="M' + pts.map(function (p) { return p.x.toFixed(1) + " " + p.y.toFixed(1); }).join("L") + '"/>');
        });
        g.nodes().forEach(function (id) {
          var n = g.node(id), x = n.x - n.width / 2, y = n.y - n.height / 2;
          out.push('<a class="node" data-task="' + esc(id) + '" href="#"><title>' + esc(id) + '</title><rect x="' + x.toFixed(1) + '" y="' + y.toFixed(1) +
            '" width="' + n.width.toFixed(1) + '" height="' + n.height + '" rx="5"/><rect class="st" x="' + x.toFixed(1) + '" y="' + y.toFixed(1) +
            '" width="8" height="' + n.height + '" rx="3"/><text x="' + (x + 16).toFixed(1) + '" y="' + (n.y + 4).toFixed(1) + '">' + esc(id) + "</text></a>");
        });
        out.push("</svg>");
        el.innerHTML = out.join("");
        el.style.color = "var(--muted)";
        nodeEls = {};
        el.querySelectorAll("a.node").forEach(function (a) { nodeEls[a.dataset.task] = a; });
        $("#graph-info").textContent = d.tasks.length + " tasks · laid out in " + Math.round(performance.now() - t0) + " ms";
        colourGraph();
        painted("trellis-graph");
      }).catch(function (e) { el.textContent = "The graph could not be drawn: " + e.message; });
    }

    function colourGraph() {
      if (!graphData || !grid) return;
      var j = -1;
      grid.runs.forEach(function (r, i) { if (r.dag_run_id === selRun) j = i; });
      var byTask = {};
      grid.tasks.forEach(function (t) { byTask[t.task_id] = j >= 0 ? stateOf(t.states[j]) : "none"; });
      Object.keys(nodeEls).forEach(function (id) {
        var a = nodeEls[id], st = byTask[id] || "none";
        a.setAttribute("href", selRun ? tiURL(dagID, selRun, id) : "#");
        a.setAttribute("data-state", st);
        var rects = a.querySelectorAll("rect");
        rects[0].style.stroke = st === "none" ? "" : "var(--s-" + st + ")";
        rects[1].style.fill = "var(--s-" + st + ")";
        a.querySelector("title").textContent = id + " · " + st;
      });
    }
    var p = poller(load);
  }

  // ---------- run page ----------
  function runPage() {
    var ROW = 30, PAGE = 500, pages = {}, total = 0, run = null, listEl = $("#ti-list"), spacer = $("#ti-spacer");
    var rowsEl = document.createElement("div");
    listEl.appendChild(rowsEl);
    function fetchPage(i) {
      return api("GET", apiRun(dagID, runID) + "/taskInstances?limit=" + PAGE + "&offset=" + i * PAGE).then(function (res) {
        pages[i] = res.task_instances;
        total = res.total_entries;
      });
    }
    function visiblePages() {
      var first = Math.floor(listEl.scrollTop / ROW), last = first + Math.ceil(listEl.clientHeight / ROW) + 1;
      var a = Math.floor(first / PAGE), b = Math.floor(Math.max(first, Math.min(last, Math.max(total, 1) - 1)) / PAGE);
      var out = [];
      for (var i = a; i <= b; i++) out.push(i);
      return out;
    }
    function render() {
      spacer.style.height = total * ROW + "px";
      var first = Math.max(0, Math.floor(listEl.scrollTop / ROW) - 10);
      var last = Math.min(total, Math.ceil((listEl.scrollTop + listEl.clientHeight) / ROW) + 10);
      var rs = run && ms(run.start_date), re = run && (ms(run.end_date) || Date.now());
      var span = rs ? Math.max(1, re - rs) : 1, now = Date.now(), h = [];
      for (var k = first; k < last; k++) {
        var pg = pages[Math.floor(k / PAGE)];
        var ti = pg && pg[k % PAGE];
        if (!ti) { h.push('<div class="ti-row" style="top:' + k * ROW + 'px"><span class="muted">…</span></div>'); continue; }
        var st = stateOf(ti.state), s = ms(ti.start_date), e = ms(ti.end_date), d = s ? (e || now) - s : null;
        var bar = "";
        if (s && rs) {
          var left = Math.max(0, (s - rs) / span * 100), w = Math.max(0.3, ((e || now) - s) / span * 100);
          bar = '<i class="s-' + st + '" style="left:' + left.toFixed(2) + "%;width:" + Math.min(100 - left, w).toFixed(2) + '%"></i>';
        }
        var t = esc(ti.task_id);
        h.push('<div class="ti-row" role="row" style="top:' + k * ROW + 'px" data-task="' + t + '">' +
          '<span class="id" role="cell"><a href="' + tiURL(dagID, runID, ti.task_id) + (ti.map_index >= 0 ? "?map_index=" + ti.map_index : "") + '">' +
            t + (ti.map_index >= 0 ? "[" + ti.map_index + "]" : "") + "</a></span>" +
          '<span role="cell"><span class="badge s-' + st + '">' + st.replace(/_/g, " ") + "</span></span>" +
          '<span role="cell">' + ti.try_number + "/" + (ti.max_tries + 1) + "</span>" +
          '<span role="cell">' + (d != null ? fmtDur(d) : "") + "</span>" +
          '<span role="cell" class="gantt" title="' + esc(fmtTime(ti.start_date) + " → " + fmtTime(ti.end_date)) + '">' + bar + "</span>" +
          '<span role="cell"><button type="button" class="mini" data-act="clear" aria-label="Clear ' + t + '">Clear</button> ' +
          '<button type="button" class="mini" data-act="success" aria-label="Mark ' + t + ' success">✓</button> ' +
          '<button type="button" class="mini" data-act="failed" aria-label="Mark ' + t + ' failed">✗</button></span></div>');
      }
      setHTML(rowsEl, h.join(""), function (a) {
        var row = a.closest("[data-task]");
        if (!row) return null;
        var sel = '[data-task="' + row.dataset.task + '"] ';
        return a.dataset.act ? sel + 'button[data-act="' + a.dataset.act + '"]' : sel + "a";
      });
      $("#ti-summary").textContent = total + " task instances";
    }
    var scrolling;
    listEl.addEventListener("scroll", function () {
      render();
      clearTimeout(scrolling);
      scrolling = setTimeout(function () {
        var need = visiblePages().filter(function (i) { return !pages[i]; });
        Promise.all(need.map(fetchPage)).then(render);
      }, 80);
    });
    addEventListener("resize", render);
    rowsEl.addEventListener("click", function (e) {
      var b = e.target.closest("button[data-act]");
      if (!b) return;
      var task = b.closest("[data-task]").dataset.task;
      act(b.dataset.act, task).then(function () { p.now(); });
    });
    function act(what, task) {
      var done;
      if (what === "clear") {
        done = api("POST", "/api/v1/dags/" + enc(dagID) + "/clearTaskInstances", {
          dry_run: false, dag_run_id: runID, task_ids: [task], only_failed: false,
          include_downstream: $("#with-downstream") ? $("#with-downstream").checked : true
        }).then(function (r) { live("cleared " + r.task_instances.length + " task instance(s)"); });
      } else {
        done = api("POST", "/api/v1/dags/" + enc(dagID) + "/updateTaskInstancesState", {
          dry_run: false, dag_run_id: runID, task_id: task, new_state: what
        }).then(function (r) { live("marked " + r.task_instances.length + " " + what); });
      }
      return done.catch(function (e) { toast(e.message); });
    }
    function setRun(state) {
      return api("PATCH", apiRun(dagID, runID), { state: state }).then(function () { p.now(); }, function (e) { toast(e.message); });
    }
    twoStep($("#run-success"), "Confirm: mark success", function () { setRun("success"); });
    twoStep($("#run-fail"), "Confirm: mark failed", function () { setRun("failed"); });
    twoStep($("#run-delete"), "Confirm delete", function () {
      api("DELETE", apiRun(dagID, runID)).then(function () { location.href = dagURL(dagID); }, function (e) { toast(e.message); });
    });
    function load() {
      return api("GET", apiRun(dagID, runID)).then(function (r) {
        run = r;
        var b = $("#run-state");
        b.className = "badge s-" + r.state;
        b.textContent = r.state;
        var dur = r.start_date ? (ms(r.end_date) || Date.now()) - ms(r.start_date) : null;
        $("#run-facts").innerHTML = "<dt>Type</dt><dd>" + esc(r.run_type) + "</dd><dt>Logical date</dt><dd>" + esc(fmtTime(r.logical_date)) +
          "</dd><dt>Started</dt><dd>" + esc(fmtTime(r.start_date)) + "</dd><dt>Ended</dt><dd>" + esc(fmtTime(r.end_date)) +
          "</dd><dt>Duration</dt><dd>" + esc(fmtDur(dur)) + "</dd><dt>Conf</dt><dd><code>" + esc(JSON.stringify(r.conf)) + "</code></dd>" +
          (r.note ? "<dt>Note</dt><dd>" + esc(r.note) + "</dd>" : "");
        $("#run-delete").disabled = !FINAL[r.state];
        var want = visiblePages();
        if (!want.length) want = [0];
        return Promise.all(want.map(fetchPage)).then(function () {
          render();
          painted("trellis-run");
          var busy = r.state === "queued" || r.state === "running";
          live((busy ? "live · " : "") + "updated " + new Date().toLocaleTimeString());
          return busy ? 1500 : 10000;
        });
      }).catch(function (e) {
        if (e.status === 404) { $("#ti-summary").textContent = "This run does not exist (any more)."; return 0; }
        throw e;
      });
    }
    var p = poller(load);
  }

  // ---------- task instance page ----------
  function taskPage() {
    $("#run-link").href = runURL(dagID, runID);
    if ($("#calls")) { callsPage(); return; }
    // A call instance (?map_index=n) is read by its map index; its log
    // takes the map index as a parameter.
    var mi = $("#ti-head").dataset.mapIndex, tiBase = apiRun(dagID, runID) + "/taskInstances/" + enc(taskID);
    var base = mi != null ? tiBase + "/" + mi : tiBase, logQ = mi != null ? "?map_index=" + mi : "";
    var ti = null, sel = 0, token = null, logFor = 0, tailing = false;
    var logEl = $("#log"), follow = $("#follow");
    function decodeEnd(tok) {
      try { return JSON.parse(atob(tok.replace(/-/g, "+").replace(/_/g, "/"))).end_of_log; } catch (e) { return false; }
    }
    function readLog() {
      if (!sel) return Promise.resolve();
      var try_ = sel, q = logQ + (token && logFor === try_ ? (logQ ? "&" : "?") + "token=" + enc(token) : "");
      var url = tiBase + "/logs/" + try_ + q;
      if (logFor !== try_) { token = null; logEl.textContent = ""; }
      return api("GET", url, undefined, "application/json").then(function (r) {
        if (sel !== try_) return;
        logFor = try_;
        if (r.content) {
          var atBottom = logEl.scrollTop + logEl.clientHeight >= logEl.scrollHeight - 4;
          logEl.textContent += r.content;
          if (follow.checked && atBottom) logEl.scrollTop = logEl.scrollHeight;
        }
        token = r.continuation_token;
        tailing = !decodeEnd(token);
        if (!logEl.textContent) logEl.textContent = tailing ? "" : "(this try wrote nothing)";
      }, function (e) {
        if (e.status === 404) { logEl.textContent = "Try " + try_ + " has not started."; tailing = false; return; }
        throw e;
      });
    }
    function renderTries() {
      var n = Math.max(ti.try_number, 1), h = "";
      for (var i = 1; i <= n; i++) {
        h += '<button role="tab" type="button" data-try="' + i + '" aria-selected="' + (i === sel) + '"' + (i === sel ? "" : ' tabindex="-1"') + ">Try " + i + "</button>";
      }
      $("#tries").innerHTML = h;
      $("#download").href = tiBase + "/logs/" + sel + (logQ ? logQ + "&" : "?") + "full_content=true";
      $("#download").setAttribute("download", dagID + "__" + runID + "__" + taskID + "__" + sel + ".log");
    }
    $("#tries").addEventListener("click", function (e) {
      var b = e.target.closest("[data-try]");
      if (!b) return;
      sel = +b.dataset.try;
      renderTries();
      readLog();
    });
    $("#tries").addEventListener("keydown", function (e) {
      if (e.key !== "ArrowRight" && e.key !== "ArrowLeft") return;
      var n = Math.max(ti.try_number, 1);
      sel = ((sel - 1 + (e.key === "ArrowRight" ? 1 : -1) + n) % n) + 1;
      renderTries();
      $('#tries [data-try="' + sel + '"]').focus();
      readLog();
    });
    function act(body, path) {
      return api("POST", "/api/v1/dags/" + enc(dagID) + path, body).then(function (r) {
        live(r.task_instances.length + " task instance(s) changed");
        p.now();
      }, function (e) { toast(e.message); });
    }
    if (mi == null) {
      $("#ti-clear").addEventListener("click", function () {
        act({ dry_run: false, dag_run_id: runID, task_ids: [taskID], only_failed: false, include_downstream: true }, "/clearTaskInstances");
      });
      $("#ti-success").addEventListener("click", function () { act({ dry_run: false, dag_run_id: runID, task_id: taskID, new_state: "success" }, "/updateTaskInstancesState"); });
      $("#ti-fail").addEventListener("click", function () { act({ dry_run: false, dag_run_id: runID, task_id: taskID, new_state: "failed" }, "/updateTaskInstancesState"); });
    }
    var outputDone = false;
    function load() {
      return api("GET", base).then(function (t) {
        var newTry = !ti || t.try_number !== ti.try_number;
        var wasFinal = ti && FINAL[stateOf(ti.state)];
        ti = t;
        var st = stateOf(t.state), b = $("#ti-state");
        b.className = "badge s-" + st;
        b.textContent = st.replace(/_/g, " ");
        var facts = $("#ti-facts");
        facts.querySelectorAll(".dyn").forEach(function (n) { n.remove(); });
        var add = function (k, v) { facts.insertAdjacentHTML("beforeend", '<dt class="dyn">' + k + '</dt><dd class="dyn">' + esc(v) + "</dd>"); };
        add("Try", t.try_number + " of " + (t.max_tries + 1));
        add("Started", fmtTime(t.start_date));
        add("Ended", fmtTime(t.end_date));
        if (t.duration != null) add("Duration", fmtDur(Math.round(t.duration * 1000)));
        if (t.hostname) add("Host", t.hostname + (t.pid ? " (pid " + t.pid + ")" : ""));
        if (newTry) { sel = Math.max(t.try_number, 1); token = null; logFor = 0; }
        renderTries();
        if (mi != null && "arguments" in t) add("Arguments", JSON.stringify(t.arguments));
        if (mi != null && FINAL[st]) {
          var has = t.result !== undefined && t.result !== null;
          $("#output").textContent = has ? JSON.stringify(t.result, null, 2) : "—";
          $("#output").classList.toggle("muted", !has);
        } else if (FINAL[st] && (!outputDone || !wasFinal)) {
          outputDone = true;
          api("GET", base + "/xcomEntries/return_value?stringify=false").then(function (x) {
            $("#output").textContent = JSON.stringify(x.value, null, 2);
            $("#output").classList.remove("muted");
          }, function () { $("#output").textContent = "—"; $("#output").classList.add("muted"); });
        }
        return readLog().then(function () {
          var busy = !FINAL[st] || tailing;
          live((busy ? "live · " : "") + "updated " + new Date().toLocaleTimeString());
          return busy ? 1000 : 10000;
        });
      });
    }
    var p = poller(load);
  }

  // ---------- a callable's calls in a run ----------
  function callsPage() {
    var LIMIT = 100, offset = 0, body = $("#calls-body");
    var list = apiRun(dagID, runID) + "/taskInstances/" + enc(taskID) + "/listMapped";
    $("#calls-prev").addEventListener("click", function () { offset = Math.max(0, offset - LIMIT); p.now(); });
    $("#calls-next").addEventListener("click", function () { offset += LIMIT; p.now(); });
    function brief(v) {
      var s = v === undefined ? "" : JSON.stringify(v);
      return s.length > 80 ? s.slice(0, 79) + "…" : s;
    }
    function load() {
      return api("GET", list + "?limit=" + LIMIT + "&offset=" + offset).then(function (res) {
        var h = [], now = Date.now(), busy = false;
        res.task_instances.forEach(function (t) {
          var st = stateOf(t.state), s = ms(t.start_date), e = ms(t.end_date), d = s ? (e || now) - s : null;
          if (!FINAL[st]) busy = true;
          h.push('<tr data-map-index="' + t.map_index + '"><td><a href="' + tiURL(dagID, runID, taskID) + "?map_index=" + t.map_index + '">' +
            esc(taskID) + "[" + t.map_index + "]</a></td>" +
            '<td><span class="badge s-' + st + '">' + st.replace(/_/g, " ") + "</span></td>" +
            "<td>" + t.try_number + "/" + (t.max_tries + 1) + "</td><td>" + (d != null ? fmtDur(d) : "") + "</td>" +
            "<td><code>" + esc(brief(t.arguments)) + "</code></td><td><code>" + esc(brief(t.result)) + "</code></td></tr>");
        });
        body.innerHTML = h.join("");
        var n = res.total_entries;
        $("#calls-summary").textContent = (n ? offset + 1 : 0) + "–" + (offset + res.task_instances.length) + " of " + n + (n === 1 ? " call" : " calls");
        $("#calls-prev").disabled = offset === 0;
        $("#calls-next").disabled = offset + LIMIT >= n;
        live((busy ? "live · " : "") + "updated " + new Date().toLocaleTimeString());
        return busy ? 1000 : 10000;
      });
    }
    var p = poller(load);
  }

  // ---------- trigger form ----------
  function triggerPage() {
    var form = $("#trigger-form"), err = $("#trigger-error");
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      err.hidden = true;
      var conf;
      try {
        conf = JSON.parse($("#conf").value || "{}");
        if (conf === null || typeof conf !== "object" || Array.isArray(conf)) throw new Error("it must be a JSON object, like {\"rows\": 50}");
      } catch (x) {
        err.textContent = "The configuration is not valid: " + x.message;
        err.hidden = false;
        $("#conf").focus();
        return;
      }
      var body = { conf: conf };
      var ld = $("#logical-date").value, rid = $("#run-id-input").value.trim(), note = $("#note").value.trim();
      if (ld) body.logical_date = new Date(ld).toISOString();
      if (rid) body.dag_run_id = rid;
      if (note) body.note = note;
      $("#trigger-submit").disabled = true;
      api("POST", "/api/v1/dags/" + enc(dagID) + "/dagRuns", body).then(function (r) {
        location.href = dagURL(dagID) + "?run=" + enc(r.dag_run_id);
      }, function (x) {
        err.textContent = x.message;
        err.hidden = false;
        $("#trigger-submit").disabled = false;
      });
    });
  }

  ({ dags: dagsPage, dag: dagPage, run: runPage, task: taskPage, trigger: triggerPage }[page] || function () {})();
})();

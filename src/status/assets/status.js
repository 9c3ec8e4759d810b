// wincc-gateway status page: swaps in the live sections the server renders
// and keeps the tag table current, both from one Server-Sent Events stream
// (/events). No framework, nothing loaded from anywhere else.
(function () {
  'use strict';
  var MAX_ROWS = 2000;
  var live = document.getElementById('live');
  var sections = document.getElementById('sections');
  var tbody = document.querySelector('#tags tbody');
  var note = document.getElementById('tag-note');
  var filter = document.getElementById('filter').value;
  var rows = new Map();
  var leftOut = 0;

  function text(v) {
    if (v === null || v === undefined) return '';
    return typeof v === 'string' ? v : JSON.stringify(v);
  }

  function cell(tr, i, v) {
    var td = tr.children[i];
    if (td.textContent !== v) td.textContent = v;
  }

  function upsert(t) {
    var tr = rows.get(t.name);
    if (t.removed) {
      if (tr) { tr.remove(); rows.delete(t.name); }
      return false;
    }
    var added = false;
    if (!tr) {
      if (rows.size >= MAX_ROWS) { leftOut++; return false; }
      tr = document.createElement('tr');
      for (var i = 0; i < 5; i++) tr.appendChild(document.createElement('td'));
      tr.dataset.tag = t.name;
      tr.dataset.updates = '0';
      tr.children[0].textContent = t.name;
      rows.set(t.name, tr);
      tbody.appendChild(tr);
      added = true;
    }
    if ('value' in t) {
      cell(tr, 1, text(t.value));
      cell(tr, 2, t.error ? t.quality + ' (' + t.error + ')' : t.quality);
      cell(tr, 3, t.ts);
      tr.className = 'q-' + t.quality;
      tr.dataset.updates = String(Number(tr.dataset.updates) + 1);
    }
    if (t.group) cell(tr, 4, t.group);
    return added;
  }

  function sortRows() {
    var sorted = Array.from(rows.keys()).sort();
    sorted.forEach(function (n) { tbody.appendChild(rows.get(n)); });
  }

  function showNote() {
    var s = rows.size + ' tag(s) shown';
    if (leftOut > 0) s += '; more match than the page shows: narrow the filter';
    note.textContent = s;
  }

  var es = new EventSource('/events?filter=' + encodeURIComponent(filter));
  es.addEventListener('open', function () {
    live.textContent = 'live';
    live.dataset.live = 'true';
  });
  es.addEventListener('status', function (e) {
    var d = JSON.parse(e.data);
    sections.innerHTML = d.html;
    live.textContent = 'live';
    live.dataset.live = 'true';
  });
  es.addEventListener('tags', function (e) {
    var d = JSON.parse(e.data);
    if (d.reset) {
      rows.clear();
      tbody.textContent = '';
      leftOut = 0;
    }
    leftOut += d.left_out;
    var added = false;
    d.tags.forEach(function (t) { added = upsert(t) || added; });
    if (added) sortRows();
    showNote();
  });
  es.addEventListener('error', function () {
    live.textContent = 'connection lost; retrying…';
    live.dataset.live = 'false';
  });
})();

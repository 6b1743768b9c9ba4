// The gallery's script (batchgen/gallery.py inlines it in index.html). Plain ES2017, no library: decode the
// data, filter, render a chunk of cards at a time as the sentinel below them comes near the viewport, load each
// poster when its card is in view, and (over http, from `batchgen serve`) poll live.json for what changed.
(function () {
  'use strict';
  var D = JSON.parse(document.getElementById('data').textContent);
  var T = D.tables, K = D.keys;
  var TABLE = {shot: 'shots', model: 'models', prompt: 'prompts', params: 'params', group: 'groups'};
  var CHUNK = 24, STATES = ['done', 'failed', 'lost', 'skipped', 'pending', 'submitting', 'submitted', 'downloading'];
  function decode(values) {
    var job = {};
    K.forEach(function (key, i) { job[key] = TABLE[key] ? T[TABLE[key]][values[i]] : values[i]; });
    return job;
  }
  var jobs = D.jobs.map(decode), byId = new Map(), head = D.header, version = D.version;
  jobs.forEach(function (job) { byId.set(job.id, job); });
  var filter = {state: 'all', shot: '', model: '', q: ''};
  var grid = document.getElementById('grid'), more = document.getElementById('more');
  var shown = [], cursor = 0, box = null, boxShot = null, shotModels = new Map(), boxGroup = null, boxRow = 1;

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function money(usd) { return '$' + Number(usd || 0).toLocaleString('en-US', {minimumFractionDigits: 3, maximumFractionDigits: 3}); }
  function span(seconds) {
    var s = Math.round(seconds), h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60);
    return h ? h + 'h ' + String(m).padStart(2, '0') + 'm' : m ? m + 'm ' + String(s % 60).padStart(2, '0') + 's' : s + 's';
  }
  function modelsOf(shot) {
    if (!shotModels.has(shot)) {
      var seen = [];
      jobs.forEach(function (job) { if (job.shot === shot && seen.indexOf(job.model) < 0) seen.push(job.model); });
      shotModels.set(shot, seen);
    }
    return shotModels.get(shot);
  }
  function matches(job) {
    if (filter.state !== 'all' && job.state !== filter.state) return false;
    if (filter.shot && job.shot !== filter.shot) return false;
    if (filter.model && job.model !== filter.model) return false;
    if (filter.q) {
      var text = job.search || (job.search = (job.id + ' ' + job.prompt + ' ' + job.params + ' ' + job.model).toLowerCase());
      if (text.indexOf(filter.q) < 0) return false;
    }
    return true;
  }

  var posters = 'IntersectionObserver' in window ? new IntersectionObserver(function (entries) {
    entries.forEach(function (entry) {
      if (entry.isIntersecting) { entry.target.src = entry.target.dataset.src; posters.unobserve(entry.target); }
    });
  }, {rootMargin: '0px 0px 200px 0px'}) : null;

  function still(job) {
    var box = el('div', 'still');
    box.title = 'play ' + job.id;
    if (job.poster) {
      var img = el('img');
      img.alt = job.id;
      img.dataset.src = job.poster;
      if (posters) posters.observe(img); else img.src = job.poster;
      box.appendChild(img);
    }
    box.appendChild(el('span', 'play', '▶'));
    box.addEventListener('click', function () {
      var video = el('video');
      video.controls = true; video.autoplay = true; video.src = job.video; video.title = job.id;
      box.replaceWith(video);
      video.style.width = '100%'; video.style.aspectRatio = '16/9'; video.style.background = '#000';
    });
    return box;
  }
  function card(job) {
    var node = el('article', 'card state-' + job.state);
    node.dataset.state = job.state; node.dataset.id = job.id;
    var picture = job.state === 'done' && job.video ? still(job) : el('p', 'reason', job.reason || job.state);
    if (job.input) {
      var pair = el('div', 'pair'), input = el('img');
      input.loading = 'lazy'; input.src = job.input; input.alt = 'input image'; input.className = 'input';
      pair.appendChild(input); pair.appendChild(picture); picture = pair;
    }
    node.appendChild(picture);
    node.appendChild(el('h3', null, job.id));
    var meta = el('p', 'meta');
    meta.appendChild(el('span', 'badge', job.state));
    meta.appendChild(document.createTextNode(' '));
    meta.appendChild(el('span', 'model', job.model));
    var attempts = job.att + ' attempt' + (job.att === 1 ? '' : 's');
    var duration = job.dur === null || job.dur === undefined ? '-' : job.dur + ' s';
    meta.appendChild(document.createTextNode(' · take ' + job.take + ' · ' + money(job.cost) + ' · ' + duration + ' · ' + attempts));
    node.appendChild(meta);
    node.appendChild(el('p', 'prompt', job.prompt));
    node.appendChild(el('p', 'meta params', job.params));
    (job.warn || []).forEach(function (w) { node.appendChild(el('p', 'warn', '⚠ ' + w)); });
    var models = modelsOf(job.shot);
    if (models.length > 1) node.style.gridColumn = String(models.indexOf(job.model) + 1);
    return node;
  }
  function place(job) {
    if (job.shot !== boxShot) {
      boxShot = job.shot;
      var models = modelsOf(job.shot), title = el('h2', null, job.shot);
      grid.appendChild(title);
      if (models.length > 1) {
        title.appendChild(el('small', null, ' · ' + models.length + ' models side by side'));
        box = el('div', 'compare');
        box.style.setProperty('--models', models.length);
        models.forEach(function (model, i) {
          var h = el('div', 'colhead', model);
          h.style.gridColumn = String(i + 1); h.style.gridRow = '1';
          box.appendChild(h);
        });
        grid.appendChild(box);
      } else {
        box = grid;
      }
    }
    var node = card(job);
    if (box !== grid) {  // a comparison: each combination on a row of its own, each model in its column
      if (job.group !== boxGroup) { boxGroup = job.group; boxRow += 1; }
      node.style.gridRow = String(boxRow);
    }
    box.appendChild(node);
  }
  function fill() {
    do {  // until the sentinel is out of reach (a tall screen takes more than one chunk)
      var end = Math.min(shown.length, cursor + CHUNK);
      for (; cursor < end; cursor++) place(shown[cursor]);
    } while (cursor < shown.length && more.getBoundingClientRect().top < innerHeight + 600);
  }
  function render() {
    shown = jobs.filter(matches); cursor = 0; box = null; boxShot = null; boxGroup = null; boxRow = 1;
    grid.textContent = '';
    fill();
    document.getElementById('shown').textContent = shown.length === jobs.length ? jobs.length + ' jobs' : shown.length + ' of ' + jobs.length + ' jobs';
    window.batchgenRendered = (window.batchgenRendered || 0) + 1;
  }
  if ('IntersectionObserver' in window) {
    new IntersectionObserver(function (entries) {
      if (entries[0].isIntersecting && cursor < shown.length) { fill(); }
    }, {rootMargin: '0px 0px 600px 0px'}).observe(more);
    window.addEventListener('scroll', function () {  // a fast scroll past the sentinel: keep filling
      if (cursor < shown.length && more.getBoundingClientRect().top < innerHeight + 600) fill();
    }, {passive: true});
  } else {
    CHUNK = 1e9;
  }

  function drawHeader() {
    var c = head.counts, parts = [];
    STATES.forEach(function (s) { if (c[s]) parts.push(s); });
    var stats = document.getElementById('stats');
    stats.textContent = '';
    parts.forEach(function (s, i) {
      if (i) stats.appendChild(document.createTextNode(' · '));
      stats.appendChild(el('b', null, c[s])); stats.appendChild(document.createTextNode(' ' + s));
    });
    var m = head.money, tail = ' · ';
    stats.appendChild(document.createTextNode(tail)); stats.appendChild(el('b', null, money(m.spent_usd)));
    stats.appendChild(document.createTextNode(' spent' + (m.budget_usd !== null && m.budget_usd !== undefined ? ' of ' + money(m.budget_usd) : '')));
    if (head.wall_s && !head.running) stats.appendChild(document.createTextNode(' · wall time ' + span(head.wall_s)));
    if (head.running && head.eta_s) stats.appendChild(document.createTextNode(' · about ' + span(head.eta_s) + ' to go'));
    if (head.lost) stats.appendChild(document.createTextNode(' · live view lost: asking again'));
    else if (head.live) stats.appendChild(document.createTextNode(head.running ? ' · live: running' : ' · live: no run going on'));
    else if (head.generated_at) stats.appendChild(document.createTextNode(' · ' + head.generated_at));
    var above = document.getElementById('above');
    above.hidden = !head.above; above.textContent = head.above || '';
    var buttons = document.getElementById('states');
    buttons.textContent = '';
    if (filter.state !== 'all' && parts.indexOf(filter.state) < 0) parts.push(filter.state);
    ['all'].concat(parts).forEach(function (s) {
      var b = el('button', s === filter.state ? 'on' : '', s === 'all' ? 'all' : s + ' ' + (c[s] || 0));
      b.dataset.state = s;
      b.addEventListener('click', function () { filter.state = s; drawHeader(); render(); });
      buttons.appendChild(b);
    });
  }
  function options(id, values) {
    var select = document.getElementById(id), known = new Set(Array.from(select.options).map(function (o) { return o.value; }));
    values.forEach(function (v) { if (!known.has(v)) { var o = el('option', null, v); o.value = v; select.appendChild(o); known.add(v); } });
    select.hidden = select.options.length <= 2;
  }
  function menus() { options('shot', T.shots); options('model', T.models); }
  document.getElementById('shot').addEventListener('change', function (e) { filter.shot = e.target.value; render(); });
  document.getElementById('model').addEventListener('change', function (e) { filter.model = e.target.value; render(); });
  document.getElementById('q').addEventListener('input', function (e) { filter.q = e.target.value.trim().toLowerCase(); render(); });

  function filtered() { return filter.state !== 'all' || filter.shot || filter.model || filter.q; }
  function merge(changed) {
    var fresh = false;
    changed.forEach(function (row) {
      var job = byId.get(row.id);
      if (!job) { fresh = true; return; }
      Object.keys(row).forEach(function (k) { if (k !== 'group') job[k] = row[k]; });
      delete job.search;
      if (filtered()) return;  // the view is drawn again below: what matches may have changed
      var old = grid.querySelector('article[data-id="' + CSS.escape(row.id) + '"]');
      if (old) {
        var node = card(job);
        node.style.gridRow = old.style.gridRow;
        old.replaceWith(node);
      }
    });
    if (fresh) return reload();  // jobs the page does not know: take the whole list again, in order
    if (changed.length && filtered()) redraw();
  }
  function redraw() {  // the same view with the data of now, as far down as it was
    var seen = cursor, y = window.scrollY;
    render();
    while (cursor < Math.min(seen, shown.length)) fill();
    window.scrollTo(0, y);
  }
  function reload() {
    return fetch('live.json?since=0', {cache: 'no-store'}).then(function (r) { return r.json(); }).then(function (all) {
      jobs = all.jobs; byId = new Map(); shotModels = new Map();
      jobs.forEach(function (job) { byId.set(job.id, job); });
      T.shots = Array.from(new Set(jobs.map(function (j) { return j.shot; })));
      T.models = Array.from(new Set(jobs.map(function (j) { return j.model; })));
      menus(); redraw();
    });
  }
  var failures = 0;
  function poll() {
    fetch('live.json?since=' + version, {cache: 'no-store'}).then(function (r) {
      if (!r.ok) throw new Error('no live view here');
      return r.json();
    }).then(function (live) {
      failures = 0; version = live.version; head = live.header;
      return Promise.resolve(merge(live.jobs)).then(function () {
        drawHeader();
        window.batchgenLive = (window.batchgenLive || 0) + 1;
        setTimeout(poll, LIVE_MS);
      });
    }).catch(function () {  // the server went away (the run ended, a restart): say so, and keep asking, slower
      failures += 1; head.lost = true; drawHeader();
      setTimeout(poll, Math.min(60000, LIVE_MS * Math.pow(2, failures)));
    });
  }
  var LIVE_MS = D.poll_ms || 2000;
  drawHeader(); menus(); render();
  if (head.live && /^https?:$/.test(location.protocol)) setTimeout(poll, LIVE_MS);
})();

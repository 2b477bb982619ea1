/* Blur review page. Plain script, no build step, no third-party code.
 *
 * Data flow: poll /api/review/results?since=SEQ (only what changed comes back) -> S.items -> sorted, filtered
 * S.order -> the first S.shown tiles are in the DOM (more as you scroll) -> each <img loading=lazy> asks for its
 * cached thumbnail. Colours are computed here from the threshold slider, so moving it never rescores anything.
 * File names only ever reach the DOM through textContent / attributes, never as HTML.
 */
(() => {
  'use strict';

  const PAGE = 150;               // tiles added to the DOM at a time
  const EAGER = 40;               // the first tiles fetch their thumbnails at once: they are the first screen
  const POLL_BUSY_MS = 700;       // while the scan runs
  const POLL_IDLE_MS = 2500;      // while it is idle (catches rescans and other tabs)
  const POLL_HIDDEN_MS = 6000;    // tab in the background
  const WORK_POLL_MS = 250;       // while an apply or undo moves files
  const SAVE_THRESHOLD_MS = 400;  // slider settles before it is saved

  const S = {
    items: new Map(),      // path -> record {path, p, lap, w, h, error, scale, content, v, seq, o}
    order: [],             // paths in display order (filter applied)
    orderDirty: true,
    countsDirty: true,
    seq: 0,
    epoch: '',
    t: 0.5,                // threshold
    band: 0.1,             // half-width of the uncertain band (from the server)
    tSet: false,           // the slider has been initialised / touched
    filter: 'all',
    shown: PAGE,
    sel: null,             // selected path
    tiles: new Map(),      // path -> tile element
    pendingO: new Map(),   // path -> override being saved (wins over a poll that crossed it)
    status: null,
    detail: null,          // path open in the detail view
    showMap: true,
    plan: null,
    failures: 0,
    renderQueued: false,
    pollTimer: null,
    moving: false,         // an apply or undo request is in flight: poll fast to show its progress
    opener: {},            // dialog id -> the element focused before it opened (focus goes back there)
  };

  const $ = (id) => document.getElementById(id);

  // ---- dialogs: focus moves in on open, stays inside while open (Tab cycles), and goes back on close ----------
  const DIALOGS = ['help', 'plan', 'detail'];  // topmost first
  const FOCUSABLE = 'button, [href], input, select, textarea, [tabindex]:not([tabindex="-1"])';

  function showDialog(id, focus) {
    if ($(id).hidden) S.opener[id] = document.activeElement;
    $(id).hidden = false;
    focus.focus({ preventScroll: true });
  }

  /** Close dialog ``id``; unless ``restore`` is false, focus goes back to what had it before the dialog opened. */
  function hideDialog(id, restore = true) {
    if ($(id).hidden) return;
    $(id).hidden = true;
    const back = S.opener[id];
    S.opener[id] = null;
    if (restore && back && back.isConnected && back !== document.body) back.focus({ preventScroll: true });
  }

  /** Keep Tab / Shift+Tab inside the topmost open dialog; true if one is open. */
  function trapTab(e) {
    const id = DIALOGS.find((d) => !$(d).hidden);
    if (!id) return false;
    const items = [...$(id).querySelectorAll(FOCUSABLE)].filter((el) => !el.disabled && el.getClientRects().length);
    const active = document.activeElement;
    const at = items.indexOf(active);
    if (!items.length) {
      e.preventDefault();
    } else if (at < 0 || (e.shiftKey && at === 0) || (!e.shiftKey && at === items.length - 1)) {
      e.preventDefault();
      items[e.shiftKey ? items.length - 1 : 0].focus();
    }
    return true;
  }

  const grid = $('grid');
  const tileTemplate = $('tile-template');

  // ---- helpers --------------------------------------------------------------------------------------------------
  const fmt = (n) => Number(n).toLocaleString('en-US');
  const pct = (p) => `${Math.round(p * 100)}%`;
  const baseName = (path) => path.slice(path.lastIndexOf('/') + 1);
  const q = (path) => encodeURIComponent(path);
  const thumbUrl = (r) => `api/review/thumb?path=${q(r.path)}&v=${q(r.v)}`;

  async function api(url, options = {}) {
    const init = { credentials: 'same-origin', ...options, headers: { ...(options.headers || {}) } };
    if (init.body !== undefined) init.headers['Content-Type'] = 'application/json';
    const response = await fetch(url, init);
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) {
      let msg = `${response.status} ${response.statusText}`;
      if (body && typeof body.detail === 'string') msg = body.detail;
      else if (body && Array.isArray(body.detail) && body.detail[0] && body.detail[0].msg) msg = body.detail[0].msg;
      else if (body && typeof body.error === 'string') msg = body.error;
      if (response.status === 401 || response.status === 403) msg = `not allowed: ${msg}`;
      throw new Error(msg);
    }
    return body;
  }

  function toast(text, kind = '') {
    const el = document.createElement('div');
    el.className = `toast ${kind}`;
    el.textContent = text;
    $('toasts').append(el);
    setTimeout(() => el.remove(), kind === 'bad' ? 8000 : 4500);
  }

  /** 'sharp' | 'uncertain' | 'blurry' | 'flat' | 'error' | 'pending' for a record at the current threshold (same rule as
   *  ensemble/review/decisions.py). */
  function verdict(r) {
    if (r.p === null || r.p === undefined) return r.error ? 'error' : r.flat ? 'flat' : 'pending';
    if (Math.abs(r.p - S.t) < S.band) return 'uncertain';
    return r.p > S.t ? 'blurry' : 'sharp';
  }

  /** 'motion' or 'defocus' for a photo that looks blurry (or uncertain) at the threshold and has a kind, else null. */
  const kindOf = (r) => {
    const v = verdict(r);
    return (v === 'blurry' || v === 'uncertain') && (r.kind === 'motion' || r.kind === 'defocus') ? r.kind : null;
  };

  /** "motion 80° · 12 px" or "defocus · 6 px": what the kind badge and the detail view say. */
  const kindText = (r) => {
    const angle = r.kind === 'motion' && r.ang !== null && r.ang !== undefined ? ` ${Math.round(r.ang)}°` : '';
    const extent = r.ext !== null && r.ext !== undefined ? ` · ${Math.round(r.ext)} px` : '';
    return `${r.kind}${angle}${extent}`;
  };

  /** Whether Apply would move it: rejected, or blurry and not kept. */
  const moves = (r) => r.o === 'reject' || (r.o !== 'keep' && verdict(r) === 'blurry');

  function matches(r) {
    switch (S.filter) {
      case 'all': return true;
      case 'overridden': return !!r.o;
      case 'motion': case 'defocus': return kindOf(r) === S.filter;
      default: return verdict(r) === S.filter;
    }
  }

  function compare(a, b) {
    const rank = (r) => (r.p !== null && r.p !== undefined ? 0 : r.flat ? 1 : r.error ? 2 : 3);
    const ra = rank(a), rb = rank(b);
    if (ra !== rb) return ra - rb;
    if (ra === 0 && a.p !== b.p) return b.p - a.p;           // blurriest first
    return a.path < b.path ? -1 : a.path > b.path ? 1 : 0;
  }

  // ---- rendering ----------------------------------------------------------------------------------------------
  function queueRender() {
    if (S.renderQueued) return;
    S.renderQueued = true;
    requestAnimationFrame(() => { S.renderQueued = false; render(); });
  }

  function makeTile(r, index) {
    const el = tileTemplate.content.firstElementChild.cloneNode(true);
    el.dataset.path = r.path;
    const img = el.querySelector('.thumb');
    if (index < EAGER) img.loading = 'eager';  // no wait for layout: these are on screen
    img.addEventListener('load', () => { img.classList.add('loaded'); el.classList.remove('noimg'); });
    img.addEventListener('error', () => {
      if (!img.getAttribute('src')) return;
      el.classList.add('noimg');
      el.querySelector('.problem-text').textContent = 'no preview';
    });
    // Sub-folder and name: the same name can be in two folders. A long folder gives way before the name.
    const base = baseName(r.path);
    el.querySelector('.dir').textContent = r.path.slice(0, r.path.length - base.length);
    el.querySelector('.base').textContent = base;
    el.querySelector('.name').title = r.path;
    img.alt = baseName(r.path);
    S.tiles.set(r.path, el);
    return el;
  }

  function updateTile(el, r) {
    const v = verdict(r);
    const key = `${r.seq}|${r.o}|${v}|${S.sel === r.path}`;
    if (el._key === key) return;
    el._key = key;
    el.className = `tile v-${v}${r.o ? ` o-${r.o}` : ''}${S.sel === r.path ? ' selected' : ''}` +
      (el.classList.contains('noimg') ? ' noimg' : '');
    el.setAttribute('aria-selected', String(S.sel === r.path));
    const pctEl = el.querySelector('.pct');
    pctEl.textContent = v === 'pending' ? 'scoring…' : v === 'error' ? 'unreadable' : v === 'flat' ? 'flat' : pct(r.p);
    el.querySelector('.badge').textContent = r.o === 'keep' ? '✓ Keep' : r.o === 'reject' ? '✕ Reject' : '';
    const kind = kindOf(r);
    const kb = el.querySelector('.kind-badge');
    kb.hidden = !kind;
    kb.className = `kind-badge${kind ? ` k-${kind}` : ''}`;
    kb.textContent = kind ? kindText(r) : '';
    kb.title = kind === 'motion' ? 'motion blur: the camera or the subject moved (direction on screen, length)'
      : kind === 'defocus' ? 'defocus: missed focus or a soft lens (blur radius)' : '';
    const img = el.querySelector('.thumb');
    if (r.error) {
      el.querySelector('.problem-text').textContent = r.error;
      img.removeAttribute('src');
    } else {
      const url = thumbUrl(r);
      if (img.getAttribute('src') !== url) img.src = url;
    }
    el.dataset.scale = r.scale || '';
    el.dataset.content = r.content || '';
    el.title = `${r.path}\n${v === 'pending' ? 'not scored yet' : v === 'error' ? r.error : v === 'flat' ? r.flat : `blur ${pct(r.p)} · ${v}`}` +
      (r.scale ? `\njudged at: ${scaleText(r)}` : '') + (r.o ? `\nyou chose: ${r.o}` : '');
  }

  function rebuildOrder() {
    const recs = [];
    for (const r of S.items.values()) if (matches(r)) recs.push(r);
    recs.sort(compare);
    S.order = recs.map((r) => r.path);
    S.orderDirty = false;
  }

  function render() {
    if (S.orderDirty) rebuildOrder();
    const n = Math.min(S.shown, S.order.length);
    // Keep the selected tile where the eye is while results arriving above it reshuffle the grid.
    const anchor = S.sel && S.tiles.get(S.sel);
    let anchorTop = null;
    if (anchor && anchor.isConnected) {
      const box = anchor.getBoundingClientRect();
      if (box.bottom > 0 && box.top < window.innerHeight) anchorTop = box.top;
    }
    const els = new Array(n);
    for (let i = 0; i < n; i++) {
      const r = S.items.get(S.order[i]);
      const el = S.tiles.get(r.path) || makeTile(r, i);
      updateTile(el, r);
      els[i] = el;
    }
    let same = grid.children.length === n;
    for (let i = 0; same && i < n; i++) same = grid.children[i] === els[i];
    if (!same) grid.replaceChildren(...els);
    if (anchorTop !== null && anchor.isConnected) {
      const shift = anchor.getBoundingClientRect().top - anchorTop;
      if (Math.abs(shift) > 1) window.scrollBy(0, shift);
    }
    if (S.countsDirty) renderCounts();
    renderEmpty();
    // The observer only fires on a change: if the grid still ends near the viewport, add more at once.
    if (S.shown < S.order.length && $('more').getBoundingClientRect().top < window.innerHeight + 1200) {
      S.shown += PAGE;
      queueRender();
    }
    if (S.detail) renderDetail(false);
  }

  function renderCounts() {
    const c = { all: 0, sharp: 0, uncertain: 0, blurry: 0, flat: 0, error: 0, pending: 0, overridden: 0, motion: 0,
      defocus: 0 };
    let move = 0;
    for (const r of S.items.values()) {
      c.all++;
      c[verdict(r)]++;
      if (r.o) c.overridden++;
      const kind = kindOf(r);
      if (kind) c[kind]++;
      if (moves(r)) move++;
    }
    for (const el of document.querySelectorAll('[data-count]')) el.textContent = fmt(c[el.dataset.count]);
    const mc = $('move-count');
    mc.replaceChildren();
    if (move) {
      const b = document.createElement('b');
      b.textContent = fmt(move);
      mc.append('Apply would move ', b, ` photo${move === 1 ? '' : 's'} to ${(S.status && S.status.dest) || '_blurry'}/`);
    } else {
      mc.textContent = 'Nothing to move at this threshold';
    }
    $('apply').textContent = move ? `Apply (${fmt(move)})…` : 'Apply…';
    S.countsDirty = false;
  }

  function renderEmpty() {
    const st = S.status;
    const empty = $('empty');
    if (S.order.length) { empty.hidden = true; return; }
    if (S.items.size && S.filter !== 'all') {
      empty.textContent = 'No photo matches this filter.';
    } else if (st && st.phase === 'idle') {
      empty.textContent = `No photos found in ${st.root}. Add some, then press Rescan.`;
    } else {
      empty.textContent = 'Looking for photos…';
    }
    empty.hidden = false;
  }

  function renderStatus(st) {
    S.status = st;
    document.body.dataset.phase = st.phase;
    document.body.dataset.work = st.work ? st.work.verb : '';
    // Left-to-right marks: the rtl box ellipsises the start of a long path without moving its slashes.
    $('root-name').textContent = `\u200e${st.root}\u200e`;
    $('root-name').title = st.root;
    document.title = `Blur review · ${st.name}`;
    $('folder-name').textContent = st.name;
    const text = $('progress-text');
    const work = st.work;  // an apply or undo moving files: shown in place of the scan
    const frac = work ? (work.total ? work.done / work.total : 0)
      : st.total ? st.done / st.total : st.phase === 'idle' ? 1 : 0;
    for (const [track, fill] of [['progress-track', 'progress-fill'], ['plan-progress', 'plan-fill']]) {
      $(fill).style.width = `${(100 * frac).toFixed(1)}%`;
      $(track).setAttribute('aria-valuenow', String(Math.round(100 * frac)));
    }
    $('plan-progress').hidden = !work;  // the top bar is behind the dialog's backdrop
    text.classList.toggle('bad', !!st.error);
    const errors = st.errors ? ` · ${fmt(st.errors)} unreadable` : '';
    if (work) {
      const line = `${work.verb === 'move' ? 'Moving' : 'Putting back'} ${fmt(work.done)} / ${fmt(work.total)}…`;
      text.textContent = line;
      if (work.verb === 'move' && $('plan-confirm').disabled) $('plan-confirm').textContent = line;
    } else if (st.error) {
      text.textContent = st.error;
    } else if (st.phase === 'listing' || st.phase === 'starting') {
      text.textContent = st.total ? `Looking for new photos… ${fmt(st.total)} so far` : 'Looking for photos…';
    } else if (st.phase === 'scoring') {
      const rate = st.rate ? ` · ${st.rate >= 10 ? Math.round(st.rate) : st.rate.toFixed(1)}/s` : '';
      const eta = st.eta_s !== null && st.eta_s !== undefined ? ` · ${duration(st.eta_s)} left` : '';
      text.textContent = `Scoring ${fmt(st.done)} / ${fmt(st.total)}${rate}${eta}${errors}`;
      text.title = 'photos scored / photos found · photos scored per second · time left at that rate';
    } else {
      text.textContent = `${fmt(st.total)} photo${st.total === 1 ? '' : 's'} scored${errors}`;
    }
    $('scale-text').textContent = st.scale ? `judged at: ${st.scale}` : '';
    $('undo').disabled = !st.undo_available;
    $('undo').title = st.undo_available ? `Put back the files of the last apply (${st.undo_available} to undo)`
      : 'Nothing to undo';
    S.band = st.band;
    for (const el of document.querySelectorAll('.band-points')) el.textContent = String(Math.round(st.band * 100));
    // Until the user moves it, the slider follows the saved threshold, or the model's once the scan knows it.
    if (!S.tSet) setThreshold(st.threshold, false, st.threshold_saved || st.model_threshold !== null);
  }

  function duration(s) {
    if (s < 60) return `${Math.max(1, Math.round(s))} s`;
    if (s < 3600) return `~${Math.round(s / 60)} min`;
    return `~${(s / 3600).toFixed(1)} h`;
  }

  // ---- polling ------------------------------------------------------------------------------------------------
  async function poll() {
    clearTimeout(S.pollTimer);
    try {
      const res = await api(`api/review/results?since=${S.seq}&epoch=${q(S.epoch)}`);
      if (res.reset) {
        S.items.clear();
        S.tiles.clear();
      }
      for (const it of res.items) {
        if (it.gone) { S.items.delete(it.path); continue; }
        if (S.pendingO.has(it.path)) it.o = S.pendingO.get(it.path);
        S.items.set(it.path, it);
      }
      if (res.reset || res.items.length) { S.orderDirty = true; S.countsDirty = true; }
      S.seq = res.seq;
      S.epoch = res.epoch;
      renderStatus(res.status);
      if (S.sel && !S.items.has(S.sel)) S.sel = null;
      if (S.detail && !S.items.has(S.detail)) closeDetail();
      S.failures = 0;
      $('offline').hidden = true;
      queueRender();
    } catch (err) {
      S.failures++;
      if (S.failures >= 2) {
        $('offline').hidden = false;
        $('offline').textContent = `Lost contact with the server (${err.message}); retrying…`;
      }
    }
    const busy = !S.status || S.status.phase !== 'idle';
    const moving = S.moving || (S.status && S.status.work);  // this tab's apply or undo, or another tab's
    S.pollTimer = setTimeout(poll, moving ? WORK_POLL_MS : document.hidden ? POLL_HIDDEN_MS
      : busy ? POLL_BUSY_MS : POLL_IDLE_MS);
  }

  // ---- threshold ----------------------------------------------------------------------------------------------
  let saveTimer = null;
  function setThreshold(t, save, settled = true) {
    if (typeof t !== 'number' || !isFinite(t)) return;
    const changed = Math.abs(S.t - t) > 1e-9;
    S.t = Math.min(0.99, Math.max(0.01, Math.round(t * 100) / 100));
    S.tSet = S.tSet || settled;
    if (!changed && !save && $('threshold-value').textContent === pct(S.t)) return;
    $('threshold').value = String(S.t);
    $('threshold-value').textContent = pct(S.t);
    S.countsDirty = true;
    if (S.filter !== 'all' && S.filter !== 'overridden') S.orderDirty = true;
    queueRender();
    if (save) {
      clearTimeout(saveTimer);
      saveTimer = setTimeout(() => {
        api('api/review/threshold', { method: 'PUT', body: JSON.stringify({ threshold: S.t }) })
          .catch((err) => toast(`Could not save the threshold: ${err.message}`, 'bad'));
      }, SAVE_THRESHOLD_MS);
    }
  }

  // ---- selection and overrides ---------------------------------------------------------------------------------
  function select(path, scroll = true) {
    const prev = S.sel;
    S.sel = path;
    for (const p of [prev, path]) {
      const el = p && S.tiles.get(p);
      const r = p && S.items.get(p);
      if (el && r) updateTile(el, r);
    }
    if (scroll && path) {
      const el = S.tiles.get(path);
      if (el && el.isConnected) el.scrollIntoView({ block: 'nearest' });
    }
  }

  function columns() {
    const cols = getComputedStyle(grid).gridTemplateColumns.split(' ').filter(Boolean).length;
    return Math.max(1, cols);
  }

  function move(delta) {
    if (!S.order.length) return;
    let i = S.sel ? S.order.indexOf(S.sel) : -1;
    i = i < 0 ? 0 : Math.min(S.order.length - 1, Math.max(0, i + delta));
    if (i >= S.shown) { S.shown = i + PAGE; render(); }
    select(S.order[i]);
  }

  async function setOverride(path, decision) {
    const r = path && S.items.get(path);
    if (!r) { toast('Select a photo first: arrow keys or a click.'); return; }
    const before = r.o || null;
    if (before === decision) return;
    r.o = decision;
    S.pendingO.set(path, decision);
    S.countsDirty = true;
    if (S.filter === 'overridden') S.orderDirty = true;
    queueRender();
    try {
      await api('api/review/override', { method: 'PUT', body: JSON.stringify({ path, decision }) });
    } catch (err) {
      r.o = before;
      S.countsDirty = true;
      queueRender();
      toast(`Could not save your choice for ${baseName(path)}: ${err.message}`, 'bad');
    } finally {
      if (S.pendingO.get(path) === decision) S.pendingO.delete(path);
    }
  }

  // ---- detail view --------------------------------------------------------------------------------------------
  function openDetail(path) {
    if (!S.items.has(path)) return;
    S.detail = path;
    select(path, false);
    renderDetail(true);
    showDialog('detail', $('detail-close'));
  }

  function closeDetail() {
    const path = S.detail;
    S.detail = null;
    hideDialog('detail', false);  // focus goes to the photo's tile instead, below
    for (const id of ['detail-photo', 'detail-map']) $(id).removeAttribute('src');
    if (path) select(path);
  }

  // "native (at 100 %) · document": the scale the photo was judged at and what it shows, as far as known.
  function scaleText(r) {
    if (!r.scale) return '—';
    const scale = r.scale === 'native' ? 'native (at 100 %)' : 'screen (640 px)';
    return r.content ? `${scale} · ${r.content}` : scale;
  }

  function renderDetail(fresh) {
    const r = S.items.get(S.detail);
    if (!r) return;
    const v = verdict(r);
    const colour = { sharp: 'var(--sharp)', uncertain: 'var(--uncertain)', blurry: 'var(--blurry)' }[v] || 'var(--muted)';
    $('detail-name').textContent = baseName(r.path);
    $('detail-path').textContent = r.path;
    const score = $('detail-score');
    score.style.setProperty('--c', colour);
    score.replaceChildren();
    const small = document.createElement('small');
    if (v === 'pending') { score.append('…'); small.textContent = 'not scored yet'; }
    else if (v === 'error') { score.append('—'); small.textContent = 'unreadable'; }
    else if (v === 'flat') { score.append('—'); small.textContent = 'nothing to judge'; }
    else { score.append(pct(r.p)); small.textContent = 'blur probability'; }
    score.append(small);
    $('detail-verdict').textContent = v === 'pending' ? 'waiting' : v === 'error' ? r.error : v === 'flat' ? `flat: ${r.flat}` : v;
    $('detail-kind').textContent = r.kind ? `${kindText(r)}${r.kp ? ` (${pct(r.kp)} sure)` : ''}` +
      (kindOf(r) ? '' : ' — if it is blurry at all') : '—';
    $('detail-noise').textContent = r.noise === null || r.noise === undefined ? '—' : `σ ${r.noise} grey levels`;
    $('detail-scale').textContent = scaleText(r);
    $('detail-lap').textContent = r.lap === null || r.lap === undefined ? '—' : fmt(r.lap);
    $('detail-size').textContent = r.w ? `${fmt(r.w)} × ${fmt(r.h)}` : '—';
    $('detail-override').textContent = r.o === 'keep' ? 'keep' : r.o === 'reject' ? 'reject' : 'none';
    for (const b of document.querySelectorAll('.detail-buttons .btn')) {
      b.classList.toggle('on', b.dataset.act === r.o);
    }
    const i = S.order.indexOf(r.path);
    $('detail-prev').disabled = i <= 0;
    $('detail-next').disabled = i < 0 || i >= S.order.length - 1;
    const toggle = $('detail-toggle');
    toggle.disabled = r.p === null || r.p === undefined;
    toggle.checked = S.showMap && !toggle.disabled;
    $('detail').classList.toggle('map-on', toggle.checked);
    const problem = $('detail-problem');
    problem.hidden = !r.error;
    problem.textContent = r.error ? `This file cannot be read: ${r.error}` : '';
    if (!fresh && $('detail-photo').dataset.path === r.path && $('detail-photo').dataset.v === r.v &&
        ($('detail-map').dataset.p === String(r.p))) return;
    const photo = $('detail-photo');
    const map = $('detail-map');
    photo.dataset.path = r.path;
    photo.dataset.v = r.v;
    map.dataset.p = String(r.p);
    map.classList.remove('ready');
    photo.alt = r.path;
    map.alt = `${r.path} with its blur map`;
    if (r.error) {
      photo.removeAttribute('src');
      map.removeAttribute('src');
      $('detail-loading').hidden = true;
      return;
    }
    $('detail-loading').hidden = false;
    photo.onload = photo.onerror = () => { $('detail-loading').hidden = true; };
    photo.src = `api/review/image?path=${q(r.path)}&v=${q(r.v)}`;
    if (r.p !== null && r.p !== undefined) {
      map.onload = () => map.classList.add('ready');
      map.src = `api/review/overlay?path=${q(r.path)}&v=${q(r.v)}&m=${q(String(r.p))}`;
    } else {
      map.removeAttribute('src');
    }
  }

  function step(delta) {
    const i = S.order.indexOf(S.detail);
    const j = i + delta;
    if (i < 0 || j < 0 || j >= S.order.length) return;
    if (j >= S.shown) { S.shown = j + PAGE; render(); }
    S.detail = S.order[j];
    select(S.detail, true);
    renderDetail(true);
  }

  // ---- apply and undo ------------------------------------------------------------------------------------------
  function planRow(path, tag, tagClass, to = null) {
    const li = document.createElement('li');
    const img = document.createElement('img');
    const r = S.items.get(path);
    img.alt = '';
    img.loading = 'lazy';
    if (r && !r.error) img.src = thumbUrl(r);
    const name = document.createElement('span');
    name.className = 'path';
    name.textContent = path;
    name.title = path;
    const why = document.createElement('span');
    why.className = `why ${tagClass}`;
    why.textContent = tag;
    li.append(img, name);
    if (to) {
      const arrow = document.createElement('span');
      arrow.className = 'arrow';
      arrow.textContent = '→';
      const dest = document.createElement('span');
      dest.className = 'path';
      dest.textContent = to;
      dest.title = to;
      li.append(arrow, dest);
    }
    if (tag) li.append(why);
    return li;
  }

  function para(...parts) {
    const p = document.createElement('p');
    for (const part of parts) {
      if (typeof part === 'string') p.append(part);
      else { const b = document.createElement('b'); b.textContent = part.b; p.append(b); }
    }
    return p;
  }

  async function openPlan() {
    if (!$('plan').hidden) return;
    let plan;
    try {
      plan = await api(`api/review/plan?threshold=${S.t}`);
    } catch (err) {
      toast(`Could not make the plan: ${err.message}`, 'bad');
      return;
    }
    S.plan = plan;
    const body = $('plan-body');
    body.replaceChildren();
    const n = plan.items.length;
    const rejectedN = plan.items.filter((i) => i.reason === 'rejected').length;
    $('plan-title').textContent = n ? `Move ${fmt(n)} photo${n === 1 ? '' : 's'} to ${plan.dest}/` : 'Nothing to move';
    if (n) {
      body.append(para('These photos go into ', { b: `${plan.dest}/` }, ' inside the folder, keeping their sub-folders: ',
        { b: fmt(rejectedN) }, ' you rejected and ', { b: fmt(n - rejectedN) },
        ` scored blurry at the ${pct(plan.threshold)} threshold. Nothing is deleted, and Undo last apply puts them back.`));
    } else {
      body.append(para(`No photo is rejected or blurry at the ${pct(plan.threshold)} threshold.`));
    }
    const stays = [];
    if (plan.uncertain_staying) stays.push(`${fmt(plan.uncertain_staying)} uncertain (amber) photo${plan.uncertain_staying === 1 ? '' : 's'} stay — press r on one to move it`);
    if (plan.kept_blurry) stays.push(`${fmt(plan.kept_blurry)} blurry photo${plan.kept_blurry === 1 ? '' : 's'} you marked keep stay`);
    if (stays.length) body.append(para(`${stays.join('; ')}.`));
    if (S.status && S.status.phase !== 'idle') body.append(para('The scan is still running: photos scored after this point are not included.'));
    if (n) {
      const list = document.createElement('ul');
      list.className = 'plan-list';
      for (const item of plan.items.slice(0, 1000)) {
        list.append(planRow(item.path, item.reason === 'rejected' ? 'you rejected' : `blurry ${pct(item.p)}`, item.reason));
      }
      if (n > 1000) list.append(planRow(`… and ${fmt(n - 1000)} more`, '', ''));
      body.append(list);
    }
    const confirm = $('plan-confirm');
    confirm.hidden = !n;
    confirm.disabled = false;
    confirm.textContent = `Move ${fmt(n)} photo${n === 1 ? '' : 's'}`;
    $('plan-cancel').textContent = 'Cancel';
    $('plan-undo').hidden = true;
    showDialog('plan', n ? confirm : $('plan-cancel'));
  }

  /** Run ``request`` (an apply or undo) with the poll sped up, so that its status shows the files as they move. */
  async function withProgress(request) {
    S.moving = true;
    clearTimeout(S.pollTimer);
    S.pollTimer = setTimeout(poll, WORK_POLL_MS);
    try {
      return await request();
    } finally {
      S.moving = false;
    }
  }

  async function doApply() {
    const plan = S.plan;
    if (!plan) return;
    const confirm = $('plan-confirm');
    confirm.disabled = true;
    confirm.textContent = 'Moving…';
    let res;
    try {
      res = await withProgress(() => api('api/review/apply', {
        method: 'POST', body: JSON.stringify({ threshold: plan.threshold, paths: plan.items.map((i) => i.path) }),
      }));
    } catch (err) {
      confirm.disabled = false;
      confirm.textContent = 'Try again';
      toast(`Apply failed: ${err.message}`, 'bad');
      return;
    }
    for (const d of res.done) { S.items.delete(d.from); }
    S.orderDirty = true;
    S.countsDirty = true;
    queueRender();
    showReport('Moved', res, plan.dest);
    poll();
  }

  function showReport(verb, res, dest) {
    const body = $('plan-body');
    body.replaceChildren();
    const n = res.done.length;
    const failed = res.failed.length;
    $('plan-title').textContent = verb === 'Moved'
      ? `Moved ${fmt(n)} photo${n === 1 ? '' : 's'} to ${dest}/` : `Restored ${fmt(n)} photo${n === 1 ? '' : 's'}`;
    if (res.error) body.append(para('Stopped early: ', { b: res.error }));
    if (failed) body.append(para({ b: fmt(failed) }, ` file${failed === 1 ? '' : 's'} could not be ${verb === 'Moved' ? 'moved' : 'restored'}; they were left where they are.`));
    if (res.journal && verb === 'Moved') {
      body.append(para('Journal: ', { b: res.journal }, '. Undo last apply (or blur-detect undo with this journal) puts the files back.'));
    }
    const list = document.createElement('ul');
    list.className = 'plan-list';
    for (const f of res.failed.slice(0, 200)) {
      const li = planRow(`${f.path}: ${f.error}`, 'failed', 'failed');
      li.classList.add('bad');
      list.append(li);
    }
    for (const d of res.done.slice(0, 500)) list.append(planRow(d.from, '', '', d.to));
    if (n > 500) list.append(planRow(`… and ${fmt(n - 500)} more`, '', ''));
    if (list.childElementCount) body.append(list);
    $('plan-confirm').hidden = true;
    $('plan-undo').hidden = verb !== 'Moved' || !n;
    $('plan-cancel').textContent = 'Close';
    showDialog('plan', $('plan-cancel'));
  }

  async function doUndo() {
    const button = $('undo');
    button.disabled = true;
    $('plan-undo').disabled = true;
    try {
      const res = await withProgress(() => api('api/review/undo', { method: 'POST' }));
      const n = res.done.length;
      if (res.failed.length || res.error) {
        showReport('Restored', res, '');
        toast(`Undo: ${fmt(n)} restored, ${fmt(res.failed.length)} could not be`, 'bad');
      } else {
        hideDialog('plan');
        toast(`Restored ${fmt(n)} photo${n === 1 ? '' : 's'} to where they were.`, 'good');
      }
    } catch (err) {
      toast(`Undo failed: ${err.message}`, 'bad');
    } finally {
      $('plan-undo').disabled = false;
      poll();
    }
  }

  // ---- events ---------------------------------------------------------------------------------------------------
  grid.addEventListener('click', (e) => {
    const tile = e.target.closest('.tile');
    if (!tile) return;
    const path = tile.dataset.path;
    const act = e.target.closest('button[data-act]');
    if (act) {
      select(path, false);
      setOverride(path, act.dataset.act === 'clear' ? null : act.dataset.act);
      return;
    }
    openDetail(path);
  });

  document.querySelector('.detail-buttons').addEventListener('click', (e) => {
    const act = e.target.closest('button[data-act]');
    if (act && S.detail) setOverride(S.detail, act.dataset.act === 'clear' ? null : act.dataset.act);
  });
  $('detail-close').addEventListener('click', closeDetail);
  $('detail-prev').addEventListener('click', () => step(-1));
  $('detail-next').addEventListener('click', () => step(1));
  $('detail-toggle').addEventListener('change', (e) => {
    S.showMap = e.target.checked;
    $('detail').classList.toggle('map-on', S.showMap);
  });

  document.querySelector('.filters').addEventListener('click', (e) => {
    const chip = e.target.closest('.chip');
    if (!chip) return;
    S.filter = chip.dataset.filter;
    for (const c of document.querySelectorAll('.chip')) c.classList.toggle('active', c === chip);
    S.orderDirty = true;
    S.shown = PAGE;
    window.scrollTo(0, 0);
    queueRender();
  });

  $('threshold').addEventListener('input', (e) => setThreshold(Number(e.target.value), true));
  $('threshold-reset').addEventListener('click', async () => {
    try {
      const res = await api('api/review/threshold', { method: 'PUT', body: JSON.stringify({ threshold: null }) });
      setThreshold(res.threshold, false);
    } catch (err) {
      toast(`Could not reset the threshold: ${err.message}`, 'bad');
    }
  });
  $('apply').addEventListener('click', openPlan);
  $('rescan').addEventListener('click', async () => {
    try {
      await api('api/review/rescan', { method: 'POST' });
      toast('Looking for new, edited or removed photos…');
      setTimeout(poll, 300);
    } catch (err) {
      toast(`Could not rescan: ${err.message}`, 'bad');
    }
  });
  $('undo').addEventListener('click', doUndo);
  $('plan-confirm').addEventListener('click', doApply);
  $('plan-undo').addEventListener('click', doUndo);
  $('plan-cancel').addEventListener('click', () => hideDialog('plan'));
  $('help-btn').addEventListener('click', () => showDialog('help', $('help-close')));
  $('help-close').addEventListener('click', () => hideDialog('help'));
  for (const id of ['plan', 'help']) {
    $(id).addEventListener('click', (e) => { if (e.target === $(id)) hideDialog(id); });
  }

  document.addEventListener('keydown', (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === 'Tab') { trapTab(e); return; }
    const target = e.target;
    const typing = target instanceof HTMLInputElement && target.type !== 'checkbox' && target.type !== 'range';
    if (typing || target instanceof HTMLTextAreaElement) return;
    if (target instanceof HTMLInputElement && target.type === 'range' && e.key.startsWith('Arrow')) return;
    const key = e.key;
    if (key === 'Escape') {
      if (!$('help').hidden) hideDialog('help');
      else if (!$('plan').hidden) hideDialog('plan');
      else if (S.detail) closeDetail();
      else return;
      e.preventDefault();
      return;
    }
    if (!$('plan').hidden || !$('help').hidden) {
      if (key === '?' && !$('help').hidden) { hideDialog('help'); e.preventDefault(); }
      return;  // a dialog is open: Tab / Enter work on its buttons
    }
    const cols = columns();
    const handled = {
      ArrowLeft: () => (S.detail ? step(-1) : move(-1)),
      ArrowRight: () => (S.detail ? step(1) : move(1)),
      ArrowUp: () => (S.detail ? step(-1) : move(-cols)),
      ArrowDown: () => (S.detail ? step(1) : move(cols)),
      Home: () => (S.detail ? null : move(-Infinity)),
      End: () => (S.detail ? null : move(Infinity)),
      k: () => setOverride(S.detail || S.sel, 'keep'),
      r: () => setOverride(S.detail || S.sel, 'reject'),
      u: () => setOverride(S.detail || S.sel, null),
      m: () => { if (S.detail && !$('detail-toggle').disabled) $('detail-toggle').click(); },
      Enter: () => { if (!S.detail && S.sel && !(target instanceof HTMLButtonElement)) openDetail(S.sel); },
      a: () => (S.detail ? null : openPlan()),
      '?': () => showDialog('help', $('help-close')),
    }[key.length === 1 ? key.toLowerCase() : key];
    if (!handled) return;
    if (key === 'Enter' && target instanceof HTMLButtonElement) return;  // let the button do its own thing
    e.preventDefault();
    handled();
  });

  // Infinite scroll: more tiles when the end of the grid comes near.
  new IntersectionObserver((entries) => {
    if (entries.some((en) => en.isIntersecting) && S.shown < S.order.length) {
      S.shown += PAGE;
      queueRender();
    }
  }, { rootMargin: '1200px 0px' }).observe($('more'));

  const bar = document.querySelector('.bar');
  const setBarHeight = () => document.documentElement.style.setProperty('--bar-h', `${bar.offsetHeight}px`);
  new ResizeObserver(setBarHeight).observe(bar);
  document.addEventListener('visibilitychange', () => { if (!document.hidden) poll(); });

  poll();
})();

// The curation page: a keyboard-driven grid of one batch's samples. Every decision is sent to the server at
// once (one request at a time, in order) and written there to data/curation/<batch>.tsv before it answers.
'use strict';
(function () {
  const token = new URLSearchParams(location.search).get('token') || '';
  const PAGE_SIZE = 60; // cards in the page at once: a 10,000-sample batch is shown a page at a time
  const $ = (id) => document.getElementById(id);
  let state = null;
  let visible = [];
  let cursor = 0;
  let shownPage = -1;
  let view = 'overlay';
  const history = []; // what each decision replaced, newest last, for u
  let queue = Promise.resolve();
  let pending = 0, saved = 0, failed = 0, lastError = '';

  function api(path, options) {
    options = options || {};
    const headers = Object.assign({'X-Curate-Token': token}, options.headers || {});
    return fetch(path, Object.assign({}, options, {headers: headers, cache: 'no-store'}));
  }
  const withToken = (extra) => '?token=' + encodeURIComponent(token) + (extra || '');
  const thumbUrl = (s, kind) => '/thumb/' + encodeURIComponent(s.id) + '/' + kind + withToken('&v=' + s.files);
  const imageUrl = (s, modality) => '/image/' + encodeURIComponent(s.id) + '/' + modality + withToken('&v=' + s.files);
  const shownDecision = (s) => (s.stale ? 'fresh' : (s.decision || 'undecided'));

  function setStatus() {
    const status = $('status');
    document.body.dataset.pending = pending;
    document.body.dataset.saved = saved;
    document.body.dataset.failed = failed;
    status.className = failed ? 'error' : (pending ? 'saving' : '');
    status.textContent = failed ? 'NOT SAVED: ' + lastError : (pending ? 'saving...' : 'all decisions saved');
  }

  function showCounts() {
    const n = {keep: 0, reject: 0, undecided: 0, fresh: 0};
    state.samples.forEach((s) => { n[shownDecision(s)] += 1; });
    $('counts').textContent = state.samples.length + ' samples: ' + n.keep + ' kept, ' + n.reject + ' rejected, ' +
      n.undecided + ' undecided' + (n.fresh ? ', ' + n.fresh + ' to look at again (re-rendered)' : '');
    Object.keys(n).forEach((key) => { document.body.dataset['count' + key[0].toUpperCase() + key.slice(1)] = n[key]; });
  }

  function matches(s) {
    const poseSet = $('f-pose-set').value, camera = $('f-camera').value, decision = $('f-decision').value;
    return (!poseSet || s.pose_set === poseSet) && (!camera || s.camera === camera) &&
      (!decision || shownDecision(s) === decision);
  }

  function paint(card, s) {
    const decision = shownDecision(s);
    card.classList.remove('keep', 'reject', 'stale');
    if (decision === 'fresh') card.classList.add('stale');
    else if (decision !== 'undecided') card.classList.add(decision);
    card.dataset.decision = decision;
    card.querySelector('.badge').textContent = {keep: 'keep', reject: 'reject', fresh: 'look again', undecided: ''}[decision];
    card.querySelector('.why').textContent = s.stale ? 're-rendered since: ' + (s.decision || '') : s.reason;
  }

  function makeCard(s, index) {
    const card = document.createElement('div');
    card.className = 'card';
    card.dataset.sample = s.id;
    card.dataset.index = index;
    const img = document.createElement('img');
    img.loading = 'lazy';
    img.alt = s.id + ' ' + view;
    img.src = thumbUrl(s, view);
    const cap = document.createElement('div');
    cap.className = 'cap';
    cap.innerHTML = '<span class="id"></span><span class="badge"></span>';
    cap.querySelector('.id').textContent = s.id;
    const meta = document.createElement('div');
    meta.className = 'meta';
    meta.textContent = s.camera + ' · ' + s.pose_set;
    const why = document.createElement('div');
    why.className = 'why';
    card.append(img, cap, meta, why);
    card.addEventListener('click', () => { cursor = index; select(); });
    paint(card, s);
    return card;
  }

  function repaint(s) {
    const card = $('grid').querySelector('[data-sample="' + CSS.escape(s.id) + '"]');
    if (card) paint(card, s);
  }

  function render() {
    const grid = $('grid');
    const page = Math.floor(cursor / PAGE_SIZE);
    const start = page * PAGE_SIZE;
    grid.textContent = '';
    visible.slice(start, start + PAGE_SIZE).forEach((s, k) => grid.appendChild(makeCard(s, start + k)));
    shownPage = page;
    const pages = Math.max(1, Math.ceil(visible.length / PAGE_SIZE));
    $('pager').textContent = visible.length
      ? 'page ' + (page + 1) + ' of ' + pages + ' · samples ' + (start + 1) + '-' +
        Math.min(start + PAGE_SIZE, visible.length) + ' of ' + visible.length + ' shown'
      : 'no sample matches the filters';
    document.body.dataset.visible = visible.length;
    document.body.dataset.page = page + 1;
    select();
  }

  function select() {
    if (!visible.length) { delete document.body.dataset.selected; return; }
    if (Math.floor(cursor / PAGE_SIZE) !== shownPage) { render(); return; }
    $('grid').querySelectorAll('.card.selected').forEach((card) => card.classList.remove('selected'));
    const card = $('grid').querySelector('[data-index="' + cursor + '"]');
    if (card) {
      card.classList.add('selected');
      card.scrollIntoView({block: 'nearest'});
    }
    document.body.dataset.selected = visible[cursor].id;
    if (!$('detail').hidden) showDetail();
  }

  function columns() {
    const cards = $('grid').children;
    let n = 0;
    for (const card of cards) { if (card.offsetTop !== cards[0].offsetTop) break; n += 1; }
    return Math.max(1, n);
  }

  function move(delta) {
    if (!visible.length) return;
    cursor = Math.min(visible.length - 1, Math.max(0, cursor + delta));
    select();
  }

  function send(s, decision, reason, files) {
    s.decision = decision === 'clear' ? '' : decision;
    s.reason = reason || '';
    s.stale = Boolean(files && files !== s.files);
    s.decided_files = files || s.files;
    repaint(s);
    showCounts();
    pending += 1;
    setStatus();
    const body = JSON.stringify({sample_id: s.id, decision: decision, reason: reason || '', files: files || ''});
    queue = queue
      .then(() => api('/api/decision', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: body}))
      .then((answer) => (answer.ok ? answer.json() : answer.text().then((text) => { throw new Error(text); })))
      .then((row) => {
        saved += 1;
        s.decision = row.decision; s.reason = row.reason; s.stale = row.stale;
        repaint(s);
      })
      .catch((error) => { failed += 1; lastError = String(error.message || error).trim(); })
      .finally(() => { pending -= 1; setStatus(); showCounts(); });
  }

  function decide(decision, reason) {
    const s = visible[cursor];
    if (!s) return;
    history.push({s: s, decision: s.decision, reason: s.reason, files: s.decision ? s.decided_files : ''});
    send(s, decision, reason, '');
    move(1);
  }

  function undo() {
    const last = history.pop();
    if (!last) return;
    const index = visible.indexOf(last.s);
    if (index >= 0) { cursor = index; select(); }
    send(last.s, last.decision || 'clear', last.reason, last.decision ? last.files : '');
  }

  function showDetail() {
    const s = visible[cursor];
    const detail = $('detail');
    if (!s) return;
    detail.textContent = '';
    const title = document.createElement('h2');
    title.textContent = 'sample ' + s.id + ' · ' + s.pose_set + ' · ' + s.camera +
      (s.frame === null || s.frame === undefined ? '' : ' · frame ' + s.frame) + ' (Enter or Esc closes)';
    detail.appendChild(title);
    const figures = [['skeleton over rgb', thumbUrl(s, 'overlay')]].concat(
      s.modalities.map((m) => [m, imageUrl(s, m)]));
    figures.forEach(([caption, url]) => {
      const figure = document.createElement('figure');
      const img = document.createElement('img');
      img.src = url;
      img.alt = s.id + ' ' + caption;
      const label = document.createElement('figcaption');
      label.textContent = caption;
      figure.append(img, label);
      detail.appendChild(figure);
    });
    detail.hidden = false;
    document.body.dataset.detail = s.id;
  }

  function closeDetail() {
    $('detail').hidden = true;
    delete document.body.dataset.detail;
  }

  function refilter() {
    visible = state.samples.filter(matches);
    cursor = 0;
    render();
  }

  function fillSelect(select, values) {
    values.forEach((value) => {
      const option = document.createElement('option');
      option.value = value;
      option.textContent = value;
      select.appendChild(option);
    });
  }

  document.addEventListener('keydown', (event) => {
    if (!state || event.target.tagName === 'SELECT' || event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key;
    if (key === 'ArrowRight') move(1);
    else if (key === 'ArrowLeft') move(-1);
    else if (key === 'ArrowDown') move(columns());
    else if (key === 'ArrowUp') move(-columns());
    else if (key === 'PageDown') move(PAGE_SIZE);
    else if (key === 'PageUp') move(-PAGE_SIZE);
    else if (key === 'Home') move(-visible.length);
    else if (key === 'End') move(visible.length);
    else if (key === 'k') decide('keep', '');
    else if (key === 'r') decide('reject', '');
    else if (/^[1-9]$/.test(key) && state.reasons[Number(key) - 1]) decide('reject', state.reasons[Number(key) - 1]);
    else if (key === 'u') undo();
    else if (key === 'Enter') { if ($('detail').hidden) showDetail(); else closeDetail(); }
    else if (key === 'Escape') closeDetail();
    else if (key === 'v') {
      const kinds = state.thumb_kinds;
      view = kinds[(kinds.indexOf(view) + 1) % kinds.length];
      $('f-view').value = view;
      render();
    } else return;
    event.preventDefault();
  });

  window.addEventListener('beforeunload', (event) => { if (pending) event.preventDefault(); });

  async function load() {
    const answer = await api('/api/state');
    if (!answer.ok) {
      $('status').className = 'error';
      $('status').textContent = (await answer.text()).trim();
      return;
    }
    state = await answer.json();
    state.samples.forEach((s) => { s.decided_files = s.decided_files || s.files; });
    document.title = 'Curate ' + state.batch_id;
    $('batch').textContent = state.batch_id + ' → ' + state.file;
    const unique = (key) => Array.from(new Set(state.samples.map((s) => s[key]))).sort();
    fillSelect($('f-pose-set'), unique('pose_set'));
    fillSelect($('f-camera'), unique('camera'));
    fillSelect($('f-view'), state.thumb_kinds);
    state.reasons.forEach((reason, i) => {
      const item = document.createElement('li');
      item.innerHTML = '<b></b> ';
      item.querySelector('b').textContent = String(i + 1);
      item.append(reason);
      $('reasons').appendChild(item);
    });
    ['f-pose-set', 'f-camera', 'f-decision'].forEach((id) => $(id).addEventListener('change', (event) => {
      refilter();
      event.target.blur(); // back to the grid's keys
    }));
    $('f-view').addEventListener('change', (event) => { view = event.target.value; render(); event.target.blur(); });
    showCounts();
    setStatus();
    refilter();
    document.body.dataset.ready = '1';
  }

  load().catch((error) => { $('status').className = 'error'; $('status').textContent = String(error); });
})();

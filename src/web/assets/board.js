// Switchboard supervisor board (/board): live queue, agents and tasks.
// Each time /v1/supervisor/ws opens (first and after every reconnect) the board
// takes a snapshot of the open tasks (GET /v1/tasks) and then applies the
// task.state frames; agent.state frames keep the agent list current. Figures
// come from GET /v1/stats and GET /v1/agents (admin bearer), polled and
// fetched again shortly after every event. The per-queue tiles start from
// /v1/stats (`queues`, fetched again on every (re)connect) and follow the
// `stats` frames the broker pushes when they change (at most once a second);
// each tile's longest wait ticks between them.
'use strict';

(function () {
  const { h, $, icon, channelIcon, channelName, duration, humanize, api, request, Socket, wsUrl, session, toast, upsertMessage } = window.SB;

  const POLL_MS = 5000;
  /** Completed and canceled tasks stay in the table, greyed, this long. */
  const KEEP_FINISHED_MS = 10000;
  /** At most this many task rows are drawn: waiting customers first, longest wait first. */
  const MAX_ROWS = 200;
  /**
   * Open-task counts that disagree with /v1/stats for this long mean a frame
   * was missed or applied out of order: take a new snapshot (at most this often).
   */
  const DRIFT_MS = 4000;
  const CHANNELS = ['webchat', 'sms', 'whatsapp', 'messenger'];
  const OPEN_STATES = ['queued', 'reserved', 'assigned', 'wrapping'];
  const FINAL_STATES = ['completed', 'canceled'];
  const FIGURES = ['available', 'busy', 'break', 'offline', 'disconnected'];

  const B = {
    token: null,
    socket: null,
    stats: null,
    statsAt: 0,
    /** Per-queue figures (`queues` of /v1/stats or of a `stats` frame) and when they arrived (local ms). */
    queues: null,
    queuesAt: 0,
    agents: new Map(),
    /** task id -> task summary (as GET /v1/tasks) plus waitingMs and finishedAt (local ms, 0 while open). */
    tasks: new Map(),
    /** task id -> its <tr>, reused while the task does not change. */
    rows: new Map(),
    /** true once GET /v1/tasks answered; false on a broker without it (rows then come from frames only). */
    tasksApi: null,
    snapshotGen: 0,
    /** task.state frames that arrived while a snapshot was on its way, to apply again on top of it. */
    buffer: null,
    lastSnapshot: 0,
    /** The broker's clock minus this browser's, when they differ by more than 2 s. */
    clockOffset: 0,
    frames: 0,
    driftSince: 0,
    poller: null,
    everConnected: false,
    /** The conversation watched read-only: {id, who, messages}, or null. */
    monitor: null,
    /** The task the complete dialog is for. */
    completing: null,
    dispositions: null,
  };
  /** GET /v1/tasks gives a page at a time: the board asks for the largest. */
  const TASK_PAGE = 1000;
  /** Activities a supervisor may set (not_responding is the broker's). */
  const ACTIVITIES = ['available', 'break', 'offline'];

  function showSignin(error) {
    $('#app').hidden = true;
    $('#signin').hidden = false;
    const box = $('#signin-error');
    box.hidden = !error;
    box.textContent = error || '';
    $('#admin-token').focus();
  }

  async function onSignin(ev) {
    ev.preventDefault();
    const token = $('#admin-token').value.trim();
    if (!token) {
      showSignin('Enter the admin token.');
      return;
    }
    $('#signin-button').disabled = true;
    try {
      await api('GET', '/v1/stats', token);
      session.set('switchboard.board', { token });
      start(token);
    } catch (e) {
      showSignin(e.status === 401 ? 'That is not the admin token.' : e.message);
    } finally {
      $('#signin-button').disabled = false;
    }
  }

  function signOut(message) {
    if (B.socket) B.socket.close();
    B.socket = null;
    clearInterval(B.poller);
    session.set('switchboard.board', null);
    B.token = null;
    B.snapshotGen += 1;
    B.buffer = null;
    B.tasks.clear();
    B.rows.clear();
    B.queues = null;
    renderQueues();
    B.tasksApi = null;
    B.everConnected = false;
    B.monitor = null;
    $('#monitor-panel').hidden = true;
    $('#admin-token').value = '';
    showSignin(message);
  }

  function start(token) {
    B.token = token;
    $('#signin').hidden = true;
    $('#app').hidden = false;
    renderTasks();
    refresh();
    B.poller = setInterval(refresh, POLL_MS);
    B.socket = new Socket(() => wsUrl('/v1/supervisor/ws?token=' + encodeURIComponent(token)), {
      onmessage: onEvent,
      onstatus: onStatus,
    });
  }

  function onStatus(status) {
    const conn = $('#conn');
    conn.dataset.state = status;
    conn.textContent = status === 'open' ? 'Live' : B.everConnected ? 'Reconnecting…' : 'Connecting…';
    const banner = $('#banner');
    if (status === 'open') {
      B.everConnected = true;
      banner.hidden = true;
      // Frames missed while the socket was down are not replayed: start again from a snapshot.
      snapshot();
      refresh();
      // A new socket monitors nothing: ask again.
      if (B.monitor) B.socket.send({ type: 'monitor', conversation_id: B.monitor.id, ref: 'monitor' });
    } else if (status === 'closed' && B.everConnected) {
      banner.hidden = false;
      banner.textContent = 'Live updates lost. Reconnecting… figures still refresh every few seconds.';
    }
  }

  // ---- Data ---------------------------------------------------------------------

  async function refresh() {
    if (!B.token) return;
    const framesBefore = B.frames;
    try {
      const [stats, agents] = await Promise.all([
        api('GET', '/v1/stats', B.token),
        api('GET', '/v1/agents', B.token),
      ]);
      if (!B.token) return;
      B.stats = stats;
      B.statsAt = Date.now();
      if (Array.isArray(stats.queues)) setQueues(stats.queues);
      B.agents = new Map(agents.map((a) => [a.id, a]));
      $('#updated').textContent = 'Updated ' + new Date().toLocaleTimeString();
      render();
      checkDrift(B.frames === framesBefore);
    } catch (e) {
      if (e.status === 401) signOut('The admin token is no longer accepted.');
      else $('#updated').textContent = 'Update failed: ' + e.message;
    }
  }

  let soon = null;
  /** Events change the figures: fetch them again, at most every 150 ms. */
  function refreshSoon() {
    if (soon) return;
    soon = setTimeout(() => {
      soon = null;
      refresh();
    }, 150);
  }

  /**
   * GET /v1/tasks (every open task, oldest wait first, page after page);
   * also reads the broker's clock from `Date`.
   */
  async function fetchTasks() {
    const all = [];
    for (let offset = 0; ; offset += TASK_PAGE) {
      const sent = Date.now();
      const { json, headers } = await request('GET', '/v1/tasks?limit=' + TASK_PAGE + '&offset=' + offset, B.token);
      if (offset === 0) {
        const date = Date.parse(headers.get('Date') || '');
        if (!Number.isNaN(date)) {
          // `Date` has whole seconds: only a clearly wrong clock is corrected.
          const o = date - (sent + Date.now()) / 2;
          B.clockOffset = Math.abs(o) > 2000 ? o : 0;
        }
      }
      const page = Array.isArray(json) ? json : [];
      all.push(...page);
      if (page.length < TASK_PAGE) return all;
    }
  }

  /** Replace the open tasks with the broker's list, then re-apply the frames that raced it. */
  async function snapshot() {
    if (!B.token) return;
    const gen = ++B.snapshotGen;
    B.buffer = [];
    B.lastSnapshot = Date.now();
    let list;
    try {
      list = await fetchTasks();
    } catch (e) {
      if (gen !== B.snapshotGen) return;
      B.buffer = null;
      if (e.status === 401) {
        signOut('The admin token is no longer accepted.');
      } else if (e.status === 404 || e.status === 405) {
        B.tasksApi = false; // An older broker: show the changes seen since the board opened.
        renderTasks();
      } else {
        setTimeout(() => {
          if (gen === B.snapshotGen && B.socket && B.socket.open) snapshot();
        }, 3000);
      }
      return;
    }
    if (gen !== B.snapshotGen) return;
    const raced = B.buffer || [];
    B.buffer = null;
    B.tasksApi = true;
    B.driftSince = 0;
    const fresh = new Map();
    for (const t of list) {
      if (t && t.id && !FINAL_STATES.includes(t.state)) fresh.set(t.id, record(t, null));
    }
    // Recently finished rows stay greyed until they expire.
    for (const [id, t] of B.tasks) {
      if (t.finishedAt && !fresh.has(id)) fresh.set(id, t);
    }
    B.tasks = fresh;
    for (const msg of raced) applyFrame(msg, true);
    renderTasks();
  }

  /** The row's data from a task summary, keeping what an older frame knew. */
  function record(t, old) {
    const o = old || {};
    const waiting = t.waiting_since || o.waiting_since || null;
    let waitingMs = waiting ? Date.parse(waiting) : NaN;
    if (Number.isNaN(waitingMs)) waitingMs = o.waitingMs || serverNow();
    return {
      id: t.id,
      conversation_id: t.conversation_id || o.conversation_id || '',
      channel: t.channel || o.channel || '',
      customer: t.customer || o.customer || null,
      queue: t.queue || o.queue || '',
      state: t.state,
      agent_id: t.agent_id === undefined ? o.agent_id || null : t.agent_id,
      waiting_since: waiting,
      waitingMs,
      finishedAt: FINAL_STATES.includes(t.state) ? o.finishedAt || Date.now() : 0,
    };
  }

  function rank(state) {
    if (FINAL_STATES.includes(state)) return OPEN_STATES.length;
    const i = OPEN_STATES.indexOf(state);
    return i < 0 ? 0 : i;
  }

  /**
   * Apply one task.state frame. `replayed`: the frame arrived while the
   * snapshot was being taken, so the snapshot may already be newer; such a
   * frame never moves a task back (a real step back, say an offer that timed
   * out in that instant, is caught by the drift check).
   */
  function applyFrame(msg, replayed) {
    const id = (msg.task && msg.task.id) || msg.task_id;
    const state = msg.state || (msg.task && msg.task.state);
    if (!id || !state) return;
    const old = B.tasks.get(id);
    if (replayed && old && rank(state) < rank(old.state)) return;
    // A task that finished unseen: nothing to show, except on a broker without
    // GET /v1/tasks, where frames are all the board knows.
    if (FINAL_STATES.includes(state) && !old && !msg.task && B.tasksApi !== false) return;
    const t = msg.task ? Object.assign({}, msg.task, { id, state }) : {
      id, state, conversation_id: msg.conversation_id, channel: msg.channel, agent_id: msg.agent_id,
    };
    if (!msg.task && msg.agent_id === undefined) delete t.agent_id;
    B.tasks.set(id, record(t, old));
  }

  /** Compare open tasks by state with /v1/stats; `clean`: no frame arrived while the figures were fetched. */
  function checkDrift(clean) {
    if (!B.tasksApi || !B.stats || !B.stats.tasks || B.buffer || !B.socket || !B.socket.open) {
      B.driftSince = 0;
      return;
    }
    if (!clean) return; // Frames raced the figures: this sample tells nothing.
    const counts = {};
    for (const t of B.tasks.values()) {
      if (!t.finishedAt) counts[t.state] = (counts[t.state] || 0) + 1;
    }
    if (OPEN_STATES.every((st) => (counts[st] || 0) === (B.stats.tasks[st] || 0))) {
      B.driftSince = 0;
      return;
    }
    const now = Date.now();
    if (!B.driftSince) B.driftSince = now;
    else if (now - B.driftSince >= DRIFT_MS && now - B.lastSnapshot >= DRIFT_MS) snapshot();
  }

  function setQueues(queues) {
    B.queues = queues;
    B.queuesAt = Date.now();
    renderQueues();
  }

  function onEvent(msg) {
    if (msg.type === 'stats' && Array.isArray(msg.queues)) {
      setQueues(msg.queues);
    } else if (msg.type === 'agent.state' && msg.agent) {
      const old = B.agents.get(msg.agent.id);
      B.agents.set(msg.agent.id, Object.assign({}, old || {}, msg.agent));
      renderAgents();
      renderTasksSoon();
      refreshSoon();
    } else if (msg.type === 'agent.removed') {
      B.agents.delete(msg.agent_id);
      renderAgents();
      refreshSoon();
    } else if (msg.type === 'task.state') {
      B.frames += 1;
      if (B.buffer) B.buffer.push(msg);
      applyFrame(msg, false);
      renderTasksSoon();
      refreshSoon();
    } else if (msg.type === 'monitoring' && B.monitor && msg.conversation_id === B.monitor.id) {
      B.monitor.messages = Array.isArray(msg.messages) ? msg.messages.slice() : [];
      B.monitor.live = true;
      renderMonitor();
    } else if (msg.type === 'message' && B.monitor && msg.conversation_id === B.monitor.id && msg.message) {
      upsertMessage(B.monitor.messages, msg.message);
      renderMonitor();
    } else if (msg.type === 'error' && msg.ref === 'monitor') {
      toast('Cannot monitor: ' + msg.message, 'error');
      stopMonitor(false);
    }
  }

  // ---- Supervisor actions -----------------------------------------------------------

  /** Watch a task's conversation read-only (one at a time). */
  function startMonitor(t) {
    if (B.monitor && B.monitor.id === t.conversation_id) return;
    if (B.monitor) stopMonitor(true);
    const who = customerLabel(t).name;
    B.monitor = { id: t.conversation_id, who, messages: [], live: false };
    if (B.socket) B.socket.send({ type: 'monitor', conversation_id: t.conversation_id, ref: 'monitor' });
    renderMonitor();
    renderTasks();
    $('#monitor-panel').hidden = false;
    $('#monitor-stop').focus();
  }

  function stopMonitor(tellBroker) {
    if (!B.monitor) return;
    if (tellBroker && B.socket) B.socket.send({ type: 'unmonitor', conversation_id: B.monitor.id, ref: 'unmonitor' });
    B.monitor = null;
    $('#monitor-panel').hidden = true;
    renderTasks();
  }

  function renderMonitor() {
    const m = B.monitor;
    if (!m) return;
    set('monitor-who', m.who);
    const list = $('#monitor-messages');
    if (!m.messages.length) {
      list.replaceChildren(h('li', { class: 'muted', text: m.live ? 'No messages yet.' : 'Connecting…' }));
      return;
    }
    list.replaceChildren(...m.messages.map((msg) => {
      const who = msg.from === 'agent' ? (B.agents.get(msg.agent_id) || {}).name || msg.agent_id || 'Agent'
        : msg.from === 'customer' ? m.who : 'System';
      const files = (msg.attachments || []).map((a) => a.filename).filter(Boolean);
      return h('li', { class: 'from-' + msg.from, dataset: { seq: String(msg.seq) } },
        h('span', { class: 'who', text: who }),
        h('span', { class: 'text', text: msg.text || '' }),
        files.length ? h('span', { class: 'muted', text: ' [' + files.join(', ') + ']' }) : null);
    }));
    list.scrollTop = list.scrollHeight;
  }

  async function openComplete(t) {
    B.completing = t;
    set('complete-who', customerLabel(t).name + ' · ' + agentLabel(t));
    const err = $('#complete-error');
    err.hidden = true;
    $('#complete-notes').value = '';
    const select = $('#complete-disposition');
    if (!B.dispositions) {
      try {
        B.dispositions = await api('GET', '/v1/dispositions');
      } catch (e) {
        B.dispositions = null;
        toast('Cannot load the dispositions: ' + e.message, 'error');
        return;
      }
    }
    select.replaceChildren(...B.dispositions.map((d) => h('option', { value: d, text: humanize(d) })));
    $('#complete-dialog').showModal();
    select.focus();
  }

  async function onComplete(ev) {
    ev.preventDefault();
    const t = B.completing;
    if (!t) return;
    const button = $('#complete-submit');
    button.disabled = true;
    try {
      await api('POST', '/v1/tasks/' + encodeURIComponent(t.id) + '/complete', B.token, {
        disposition: $('#complete-disposition').value,
        notes: $('#complete-notes').value,
      });
      $('#complete-dialog').close();
      B.completing = null;
      toast('Task completed.');
    } catch (e) {
      const err = $('#complete-error');
      err.hidden = false;
      err.textContent = e.message;
    } finally {
      button.disabled = false;
    }
  }

  async function setActivity(agentId, activity) {
    try {
      const view = await api('PATCH', '/v1/agents/' + encodeURIComponent(agentId), B.token, { activity });
      const old = B.agents.get(agentId);
      B.agents.set(agentId, Object.assign({}, old || {}, view));
      renderAgents();
    } catch (e) {
      toast('Cannot set the activity: ' + e.message, 'error');
      renderAgents();
    }
  }

  function serverNow() {
    return Date.now() + B.clockOffset;
  }

  // ---- Agents -------------------------------------------------------------------

  function capacityOf(a, c) {
    return (a.capacity && a.capacity[c]) || 0;
  }

  function loadOf(a, c) {
    return (a.load && a.load[c]) || 0;
  }

  /**
   * One agent as the figures count it, overall or on one channel: available
   * (free capacity), busy (available but full), break, offline, or
   * disconnected (socket gone, still within the grace period).
   */
  function agentState(a, channel) {
    if (!a.connected) return a.activity === 'offline' ? 'offline' : 'disconnected';
    if (a.activity === 'break') return 'break';
    if (a.activity !== 'available') return 'offline';
    const channels = channel ? [channel] : CHANNELS.filter((c) => capacityOf(a, c) > 0);
    return channels.some((c) => loadOf(a, c) < capacityOf(a, c)) ? 'available' : 'busy';
  }

  /** Figures from /v1/stats when the broker gives them per channel, else counted from the agent list. */
  function figures() {
    const s = B.stats && B.stats.agents;
    if (s && s.by_channel) return { all: s, byChannel: s.by_channel };
    const zero = () => ({ available: 0, busy: 0, break: 0, offline: 0, disconnected: 0 });
    const all = zero();
    const byChannel = {};
    for (const c of CHANNELS) byChannel[c] = zero();
    for (const a of B.agents.values()) {
      all[agentState(a)] += 1;
      for (const c of CHANNELS) {
        if (capacityOf(a, c) > 0) byChannel[c][agentState(a, c)] += 1;
      }
    }
    return { all, byChannel };
  }

  // ---- Rendering ----------------------------------------------------------------

  function render() {
    renderTiles();
    renderAgents();
    renderTasks();
  }

  function set(id, text) {
    $('#' + id).textContent = text;
  }

  function renderTiles() {
    const s = B.stats;
    if (!s) return;
    set('queue-length', String(s.queue.length));
    const byChannel = CHANNELS.filter((c) => s.queue.by_channel && s.queue.by_channel[c])
      .map((c) => channelName(c) + ' ' + s.queue.by_channel[c]);
    set('queue-detail', byChannel.length ? byChannel.join(' · ') : 'no one waiting');
    $('#tile-queue').classList.toggle('alert', s.queue.length > 0);
    tickWait();
    set('tasks-assigned', String(s.tasks.assigned));
    set('tasks-detail', s.tasks.wrapping + ' in wrap-up · ' + s.tasks.reserved + ' offered');
    set('tasks-completed', String(s.tasks.completed));
    set('tasks-finished', s.tasks.canceled + ' canceled since start');
    set('messages-in', String(s.messages.in));
    set('messages-detail', 'in · ' + s.messages.out + ' out');
    const counts = $('#state-counts');
    counts.replaceChildren(...OPEN_STATES.concat(FINAL_STATES).map((state) =>
      h('span', { class: 'pill ' + state, text: humanize(state) + ' ' + (s.tasks[state] || 0) })));
  }

  /** A tile per queue: waiting, longest wait (ticking), SLA today, agents available and busy. */
  function renderQueues() {
    const box = $('#queue-tiles');
    const queues = B.queues || [];
    box.hidden = !queues.length;
    box.replaceChildren(...queues.map((q) => {
      const agents = q.agents || {};
      const today = q.today || {};
      const sla = today.sla_met_pct === null || today.sla_met_pct === undefined ? '—' : today.sla_met_pct + '%';
      return h('div', { class: 'tile queue-tile', dataset: { queue: q.id } },
        h('div', { class: 'label', text: q.id }),
        h('div', { class: 'value', dataset: { figure: 'waiting' }, text: String(q.waiting) }),
        h('div', { class: 'detail' }, 'waiting · longest ',
          h('span', { class: 'longest', dataset: { figure: 'longest' }, text: '' })),
        h('div', { class: 'detail' }, 'SLA ', h('span', { dataset: { figure: 'sla' }, text: sla }),
          ' · ', h('span', { dataset: { figure: 'available' }, text: String(agents.available || 0) }), ' available · ',
          h('span', { dataset: { figure: 'busy' }, text: String(agents.busy || 0) }), ' busy'));
    }));
    tickQueues();
  }

  /** Longest waits go on ticking between frames, from the figure and its age. */
  function tickQueues() {
    const since = Date.now() - B.queuesAt;
    for (const q of B.queues || []) {
      const tile = document.querySelector('#queue-tiles [data-queue="' + CSS.escape(q.id) + '"]');
      if (!tile) continue;
      const wait = q.waiting > 0 ? q.longest_wait_ms + since : 0;
      tile.querySelector('.longest').textContent = duration(wait);
      tile.classList.toggle('alert', q.waiting > 0);
    }
  }

  function tickWait() {
    const s = B.stats;
    if (!s) return;
    const wait = s.queue.length > 0 ? s.queue.oldest_wait_ms + (Date.now() - B.statsAt) : 0;
    set('oldest-wait', duration(wait));
    $('#tile-wait').classList.toggle('alert', wait > 60000);
  }

  function renderFigures() {
    const f = figures();
    const n = (o, k) => Number((o && o[k]) || 0);
    set('agents-available', String(n(f.all, 'available')));
    set('agents-detail', n(f.all, 'busy') + ' busy · ' + n(f.all, 'break') + ' on break · ' +
      n(f.all, 'offline') + ' offline · ' + n(f.all, 'disconnected') + ' disconnected' +
      (n(f.all, 'not_responding') > 0 ? ' · ' + n(f.all, 'not_responding') + ' not responding' : ''));
    const channels = CHANNELS.concat(Object.keys(f.byChannel || {}).filter((c) => !CHANNELS.includes(c)))
      .filter((c) => f.byChannel && FIGURES.some((k) => n(f.byChannel[c], k) > 0));
    const body = $('#figures');
    if (!channels.length) {
      body.replaceChildren(h('tr', { class: 'empty-row' }, h('td', { colspan: '6', text: 'No agent has capacity on any channel yet.' })));
      return;
    }
    body.replaceChildren(...channels.map((c) => h('tr', { dataset: { channel: c } },
      h('th', { scope: 'row', class: 'small-channel' }, channelIcon(c), ' ', h('span', { text: channelName(c) })),
      ...FIGURES.map((k) => {
        const v = n(f.byChannel[c], k);
        return h('td', { class: 'num figure' + (v ? ' ' + k : ' zero'), dataset: { figure: k }, text: String(v) });
      }))));
  }

  function renderAgents() {
    renderFigures();
    const rows = Array.from(B.agents.values()).sort((a, b) => String(a.id).localeCompare(String(b.id)));
    set('agents-count', rows.length ? rows.filter((a) => a.connected).length + ' of ' + rows.length + ' connected' : '');
    const body = $('#agents');
    if (!rows.length) {
      body.replaceChildren(h('tr', { class: 'empty-row' }, h('td', { colspan: '4', text: 'No agents yet.' })));
      return;
    }
    body.replaceChildren(...rows.map((a) => {
      const loads = h('div', { class: 'loads' });
      for (const c of CHANNELS) {
        const cap = capacityOf(a, c);
        const load = loadOf(a, c);
        if (!cap && !load) continue;
        loads.appendChild(h('span', {
          class: 'load small-channel' + (load >= cap ? ' full' : ''),
          title: channelName(c) + ': ' + load + ' of ' + cap,
        }, channelIcon(c), load + '/' + cap));
      }
      const state = agentState(a);
      const select = h('select', {
        class: 'activity-select',
        'aria-label': 'Set the activity of ' + (a.name || a.id),
        onchange: (ev) => setActivity(a.id, ev.target.value),
      }, ACTIVITIES.includes(a.activity) ? null : h('option', { value: '', text: humanize(a.activity || 'unknown'), disabled: true, selected: true }),
      ACTIVITIES.map((act) => h('option', { value: act, text: humanize(act), selected: a.activity === act })));
      return h('tr', { dataset: { agent: a.id } },
        h('td', {}, h('span', { class: 'dot' + (a.connected ? ' on' : ''), title: a.connected ? 'Connected' : 'Not connected' }),
          h('strong', { text: a.name || a.id }), ' ', h('span', { class: 'muted', text: a.id })),
        h('td', {}, h('span', { class: 'pill ' + state, text: humanize(state) })),
        h('td', {}, loads),
        h('td', {}, select));
    }));
  }

  let renderTimer = null;
  /** Frames can come in bursts: draw the table once per burst. */
  function renderTasksSoon() {
    if (renderTimer) return;
    renderTimer = setTimeout(() => {
      renderTimer = null;
      renderTasks();
    }, 30);
  }

  function customerLabel(t) {
    const c = t.customer || {};
    return { name: c.name || c.address || t.conversation_id || t.id, address: c.name && c.address ? c.address : '' };
  }

  function agentLabel(t) {
    if (!t.agent_id) return '—';
    const a = B.agents.get(t.agent_id);
    return a && a.name ? a.name : t.agent_id;
  }

  /** The row of a task, built again only when something it shows has changed. */
  function rowFor(t) {
    const who = customerLabel(t);
    const agent = agentLabel(t);
    const watched = !!B.monitor && B.monitor.id === t.conversation_id;
    const key = JSON.stringify([t.state, agent, who.name, who.address, t.channel, t.queue, t.waitingMs, !!t.finishedAt, watched]);
    const old = B.rows.get(t.id);
    if (old && old.dataset.key === key) return old;
    const wait = h('td', { class: 'num wait' });
    if (t.finishedAt) wait.textContent = duration(t.finishedAt + B.clockOffset - t.waitingMs);
    else {
      wait.dataset.since = String(t.waitingMs);
      wait.textContent = duration(serverNow() - t.waitingMs);
    }
    const tr = h('tr', { class: t.finishedAt ? 'fade' : null, dataset: { task: t.id, state: t.state } },
      h('td', { class: 'customer' }, h('strong', { text: who.name }),
        who.address ? h('span', { class: 'muted address', text: who.address }) : null),
      h('td', { class: 'small-channel' }, channelIcon(t.channel)),
      h('td', { class: 'task-queue', text: t.queue || '—' }),
      h('td', {}, h('span', { class: 'pill ' + t.state, text: humanize(t.state) })),
      h('td', { class: 'agent', text: agent }),
      wait,
      h('td', {}, rowActions(t, who.name, watched)));
    tr.dataset.key = key;
    B.rows.set(t.id, tr);
    return tr;
  }

  /** A task row's buttons: complete (held by an agent), monitor (its conversation). */
  function rowActions(t, name, watched) {
    const box = h('div', { class: 'row-actions' });
    if (t.finishedAt) return box;
    if (t.conversation_id) {
      box.appendChild(h('button', {
        type: 'button', class: 'button small', 'data-action': 'monitor', 'aria-pressed': watched ? 'true' : 'false',
        'aria-label': (watched ? 'Monitoring ' : 'Monitor ') + name, text: watched ? 'Monitoring' : 'Monitor',
        onclick: () => (watched ? stopMonitor(true) : startMonitor(t)),
      }));
    }
    if (t.state === 'assigned' || t.state === 'wrapping') {
      box.appendChild(h('button', {
        type: 'button', class: 'button small', 'data-action': 'complete',
        'aria-label': 'Complete the task of ' + name, text: 'Complete', onclick: () => openComplete(t),
      }));
    }
    return box;
  }

  function renderTasks() {
    if (renderTimer) {
      clearTimeout(renderTimer);
      renderTimer = null;
    }
    const now = Date.now();
    for (const [id, t] of B.tasks) {
      if (t.finishedAt && now - t.finishedAt > KEEP_FINISHED_MS) B.tasks.delete(id);
    }
    set('tasks-note', B.tasksApi === false ? 'changes since this board opened' : 'open tasks, live');
    const list = Array.from(B.tasks.values()).sort((a, b) =>
      (a.finishedAt ? 1 : 0) - (b.finishedAt ? 1 : 0) || rank(a.state) - rank(b.state) ||
      a.waitingMs - b.waitingMs || String(a.id).localeCompare(String(b.id)));
    const body = $('#tasks');
    if (!list.length) {
      B.rows.clear();
      const text = !B.token || B.tasksApi === null ? 'Loading…'
        : B.tasksApi ? 'No open tasks.' : 'No task activity since this board opened.';
      body.replaceChildren(h('tr', { class: 'empty-row' }, h('td', { colspan: '7', text })));
      return;
    }
    const shown = list.slice(0, MAX_ROWS);
    const rows = shown.map(rowFor);
    const keep = new Set(shown.map((t) => t.id));
    for (const id of B.rows.keys()) {
      if (!keep.has(id)) B.rows.delete(id);
    }
    if (list.length > shown.length) {
      rows.push(h('tr', { class: 'empty-row more-row' },
        h('td', { colspan: '7', text: 'and ' + (list.length - shown.length) + ' more' })));
    }
    const current = body.children;
    if (current.length !== rows.length || rows.some((tr, i) => current[i] !== tr)) body.replaceChildren(...rows);
  }

  function tick() {
    tickWait();
    tickQueues();
    const now = serverNow();
    for (const el of document.querySelectorAll('#tasks td.wait[data-since]')) {
      el.textContent = duration(now - Number(el.dataset.since));
    }
    if (Array.from(B.tasks.values()).some((t) => t.finishedAt && Date.now() - t.finishedAt > KEEP_FINISHED_MS)) renderTasks();
  }

  function init() {
    $('#signin-mark').appendChild(icon('chat'));
    $('#top-mark').appendChild(icon('chat'));
    $('#signin-form').addEventListener('submit', onSignin);
    $('#signout').addEventListener('click', () => signOut(null));
    $('#monitor-stop').addEventListener('click', () => stopMonitor(true));
    $('#complete-form').addEventListener('submit', onComplete);
    $('#complete-cancel').addEventListener('click', () => {
      B.completing = null;
      $('#complete-dialog').close();
    });
    setInterval(tick, 1000);
    renderAgents();
    renderTasks();
    const saved = session.get('switchboard.board');
    if (saved && saved.token) start(saved.token);
    else showSignin(null);
  }

  init();
})();

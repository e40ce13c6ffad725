// Switchboard supervisor board (/board): live queue, agents and tasks.
// Figures come from GET /v1/stats and GET /v1/agents (admin bearer), polled;
// agent and task changes arrive at once on /v1/supervisor/ws.
'use strict';

(function () {
  const { h, $, icon, channelIcon, channelName, duration, humanize, api, Socket, wsUrl, session } = window.SB;

  const POLL_MS = 5000;
  const KEEP_FINISHED_MS = 60000;
  const CHANNELS = ['webchat', 'sms', 'whatsapp', 'messenger'];
  const OPEN_STATES = ['queued', 'reserved', 'assigned', 'wrapping'];

  const B = {
    token: null,
    socket: null,
    stats: null,
    statsAt: 0,
    agents: new Map(),
    tasks: new Map(), // task id -> { task_id, conversation_id, channel, state, agent_id, since }
    poller: null,
    everConnected: false,
  };

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
    $('#admin-token').value = '';
    showSignin(message);
  }

  function start(token) {
    B.token = token;
    $('#signin').hidden = true;
    $('#app').hidden = false;
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
      refresh();
    } else if (status === 'closed' && B.everConnected) {
      banner.hidden = false;
      banner.textContent = 'Live updates lost. Reconnecting… figures still refresh every few seconds.';
    }
  }

  async function refresh() {
    if (!B.token) return;
    try {
      const [stats, agents] = await Promise.all([
        api('GET', '/v1/stats', B.token),
        api('GET', '/v1/agents', B.token),
      ]);
      B.stats = stats;
      B.statsAt = Date.now();
      B.agents = new Map(agents.map((a) => [a.id, a]));
      $('#updated').textContent = 'Updated ' + new Date().toLocaleTimeString();
      render();
    } catch (e) {
      if (e.status === 401) signOut('The admin token is no longer accepted.');
      else $('#updated').textContent = 'Update failed: ' + e.message;
    }
  }

  let soon = null;
  /** Task events change the queue figures: fetch them again, at most every 150 ms. */
  function refreshSoon() {
    if (soon) return;
    soon = setTimeout(() => {
      soon = null;
      refresh();
    }, 150);
  }

  function onEvent(msg) {
    if (msg.type === 'agent.state' && msg.agent) {
      const old = B.agents.get(msg.agent.id);
      B.agents.set(msg.agent.id, Object.assign({}, old || {}, msg.agent));
      renderAgents();
    } else if (msg.type === 'agent.removed') {
      B.agents.delete(msg.agent_id);
      renderAgents();
    } else if (msg.type === 'task.state') {
      refreshSoon();
      const old = B.tasks.get(msg.task_id);
      B.tasks.set(msg.task_id, {
        task_id: msg.task_id,
        conversation_id: msg.conversation_id,
        channel: msg.channel,
        state: msg.state,
        agent_id: msg.agent_id,
        since: old && old.state === msg.state ? old.since : Date.now(),
        first: old ? old.first : Date.now(),
      });
      renderTasks();
    }
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
    renderAgentTile();
    set('tasks-assigned', String(s.tasks.assigned));
    set('tasks-detail', s.tasks.wrapping + ' in wrap-up · ' + s.tasks.reserved + ' offered');
    set('tasks-completed', String(s.tasks.completed));
    set('tasks-finished', s.tasks.canceled + ' canceled since start');
    set('messages-in', String(s.messages.in));
    set('messages-detail', 'in · ' + s.messages.out + ' out');
    const counts = $('#state-counts');
    counts.replaceChildren(...OPEN_STATES.concat(['completed', 'canceled']).map((state) =>
      h('span', { class: 'pill ' + state, text: humanize(state) + ' ' + (s.tasks[state] || 0) })));
  }

  function tickWait() {
    const s = B.stats;
    if (!s) return;
    const wait = s.queue.length > 0 ? s.queue.oldest_wait_ms + (Date.now() - B.statsAt) : 0;
    set('oldest-wait', duration(wait));
    $('#tile-wait').classList.toggle('alert', wait > 60000);
  }

  /** Agents by activity: from the live agent list (the stream keeps it current). */
  function renderAgentTile() {
    const count = { available: 0, break: 0, offline: 0, connected: 0 };
    for (const a of B.agents.values()) {
      count[a.activity] = (count[a.activity] || 0) + 1;
      if (a.connected) count.connected += 1;
    }
    set('agents-available', String(count.available));
    set('agents-detail', count.break + ' on break · ' + count.offline + ' offline · ' + count.connected + ' connected');
  }

  function renderAgents() {
    renderAgentTile();
    const rows = Array.from(B.agents.values()).sort((a, b) => String(a.id).localeCompare(String(b.id)));
    set('agents-count', rows.length ? rows.filter((a) => a.connected).length + ' of ' + rows.length + ' connected' : '');
    const body = $('#agents');
    if (!rows.length) {
      body.replaceChildren(h('tr', { class: 'empty-row' }, h('td', { colspan: '3', text: 'No agents yet.' })));
      return;
    }
    body.replaceChildren(...rows.map((a) => {
      const loads = h('div', { class: 'loads' });
      for (const c of CHANNELS) {
        const cap = (a.capacity && a.capacity[c]) || 0;
        const load = (a.load && a.load[c]) || 0;
        if (!cap && !load) continue;
        loads.appendChild(h('span', {
          class: 'load small-channel' + (load >= cap ? ' full' : ''),
          title: channelName(c) + ': ' + load + ' of ' + cap,
        }, channelIcon(c), load + '/' + cap));
      }
      return h('tr', { dataset: { agent: a.id } },
        h('td', {}, h('span', { class: 'dot' + (a.connected ? ' on' : ''), title: a.connected ? 'Connected' : 'Not connected' }),
          h('strong', { text: a.name || a.id }), ' ', h('span', { class: 'muted', text: a.id })),
        h('td', {}, h('span', { class: 'pill ' + a.activity, text: humanize(a.activity) })),
        h('td', {}, loads));
    }));
  }

  function renderTasks() {
    const now = Date.now();
    for (const [id, t] of B.tasks) {
      if (!OPEN_STATES.includes(t.state) && now - t.since > KEEP_FINISHED_MS) B.tasks.delete(id);
    }
    const order = (t) => (OPEN_STATES.includes(t.state) ? OPEN_STATES.indexOf(t.state) : 9);
    const rows = Array.from(B.tasks.values()).sort((a, b) => order(a) - order(b) || a.first - b.first);
    const body = $('#tasks');
    if (!rows.length) {
      body.replaceChildren(h('tr', { class: 'empty-row' }, h('td', { colspan: '5', text: 'No task activity since this board opened.' })));
      return;
    }
    body.replaceChildren(...rows.map((t) => h('tr', {
      class: OPEN_STATES.includes(t.state) ? '' : 'fade', dataset: { task: t.task_id },
    },
    h('td', { class: 'small-channel' }, channelIcon(t.channel)),
    h('td', {}, h('span', { text: t.task_id }), ' ', h('span', { class: 'muted', text: t.conversation_id })),
    h('td', {}, h('span', { class: 'pill ' + t.state, text: humanize(t.state) })),
    h('td', { text: t.agent_id || '—' }),
    h('td', { class: 'num since', dataset: { since: String(t.since) }, text: duration(now - t.since) }))));
  }

  function tick() {
    tickWait();
    const now = Date.now();
    for (const el of document.querySelectorAll('#tasks .since')) {
      el.textContent = duration(now - Number(el.dataset.since));
    }
  }

  function init() {
    $('#signin-mark').appendChild(icon('chat'));
    $('#top-mark').appendChild(icon('chat'));
    $('#signin-form').addEventListener('submit', onSignin);
    $('#signout').addEventListener('click', () => signOut(null));
    setInterval(tick, 1000);
    renderAgents();
    renderTasks();
    const saved = session.get('switchboard.board');
    if (saved && saved.token) start(saved.token);
    else showSignin(null);
  }

  init();
})();

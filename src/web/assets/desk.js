// Switchboard agent desktop (/desk). Talks the agent protocol of
// docs/protocol.md: one WebSocket for events and commands, HTTP with the
// agent's bearer token for attachments, the disposition list and the canned
// responses.
'use strict';

(function () {
  const { h, $, icon, channelIcon, channelName, duration, clock, uid, humanize, api, upload,
    attachmentView, upsertMessage, toast, Socket, wsUrl, session, enterToSend, sentence, renderFileChips,
    loadEarlier, keepScrollPlace, onScrollToTop, firstSeq } = window.SB;

  const TYPING_SHOWN_MS = 5000;
  const TYPING_SEND_EVERY_MS = 3000;
  const NOTES_MAX = 4000;

  const S = {
    agentId: null,
    token: null,
    socket: null,
    agent: null,
    activity: 'offline',
    tasks: new Map(), // task id -> task record (see track())
    byConv: new Map(), // conversation id -> task id
    selected: null, // task id in view
    dispositions: [],
    refs: new Map(), // command ref -> { kind, ... }
    everConnected: false,
    lastTypingSent: 0,
    // The canned-response picker: open for which conversation, the responses
    // filled in for it, those the search shows, the highlighted one, and a
    // counter that lets a late answer for a closed picker be dropped.
    canned: { open: false, conv: null, items: [], shown: [], active: 0, seq: 0 },
  };

  // ---- Sign-in ------------------------------------------------------------

  function showSignin(error) {
    $('#app').hidden = true;
    $('#signin').hidden = false;
    const box = $('#signin-error');
    box.hidden = !error;
    box.textContent = error || '';
    $('#agent-id').value = S.agentId || $('#agent-id').value;
    (S.agentId ? $('#agent-token') : $('#agent-id')).focus();
  }

  async function checkCredentials(id, token) {
    return api('GET', '/v1/agents/' + encodeURIComponent(id), token);
  }

  async function onSignin(ev) {
    ev.preventDefault();
    const id = $('#agent-id').value.trim();
    const token = $('#agent-token').value.trim();
    if (!id || !token) {
      showSignin('Enter your agent id and token.');
      return;
    }
    const button = $('#signin-button');
    button.disabled = true;
    try {
      await checkCredentials(id, token);
    } catch (e) {
      button.disabled = false;
      showSignin(e.status === 401 || e.status === 404 ? 'That agent id and token do not match.' : e.message);
      return;
    }
    button.disabled = false;
    if ('Notification' in window && Notification.permission === 'default') {
      // Asked on the click, as browsers require.
      Notification.requestPermission().catch(() => {});
    }
    session.set('switchboard.desk', { id, token });
    start(id, token);
  }

  function signOut(message) {
    if (S.socket) S.socket.close();
    S.socket = null;
    session.set('switchboard.desk', null);
    S.tasks.clear();
    S.byConv.clear();
    S.selected = null;
    S.token = null;
    S.agent = null;
    S.activity = 'offline';
    $('#agent-token').value = '';
    showSignin(message);
  }

  function start(id, token) {
    S.agentId = id;
    S.token = token;
    S.everConnected = false;
    $('#signin').hidden = true;
    $('#app').hidden = false;
    $('#agent-id-label').textContent = id;
    $('#agent-name').textContent = id;
    renderAll();
    S.socket = new Socket(
      () => wsUrl('/v1/agents/' + encodeURIComponent(id) + '/ws?token=' + encodeURIComponent(token)),
      { onmessage: onEvent, onstatus: onStatus, shouldRetry, onfatal },
    );
  }

  // ---- Connection -----------------------------------------------------------

  function shouldRetry(ev) {
    if (ev.code === 1008 && /replaced/.test(ev.reason || '')) return false;
    if (ev.code === 1000 && /deleted/.test(ev.reason || '')) return false;
    return true;
  }

  function onfatal(ev) {
    if (/deleted/.test(ev.reason || '')) {
      signOut('This agent was deleted by an administrator.');
      return;
    }
    setBanner('This desk was opened in another window, so this one stopped. Reload the page to use it here.');
  }

  async function onStatus(status) {
    const conn = $('#conn');
    conn.dataset.state = status;
    if (status === 'open') {
      conn.textContent = 'Connected';
      setBanner(null);
      S.everConnected = true;
    } else if (status === 'connecting') {
      conn.textContent = S.everConnected ? 'Reconnecting…' : 'Connecting…';
    } else {
      conn.textContent = S.everConnected ? 'Reconnecting…' : 'Not connected';
      if (S.everConnected) {
        setBanner('Connection lost. Reconnecting… your chats are kept and come back when the connection does.');
      }
      // A refused socket gives no status: check the credentials once.
      if (S.token) {
        try {
          await checkCredentials(S.agentId, S.token);
        } catch (e) {
          if (e.status === 401 || e.status === 404) signOut('Your session is no longer valid. Sign in again.');
        }
      }
    }
  }

  function setBanner(text) {
    const b = $('#banner');
    b.hidden = !text;
    b.textContent = text || '';
  }

  function command(kind, body, extra) {
    const ref = uid(kind);
    S.refs.set(ref, Object.assign({ kind }, extra || {}));
    const sent = S.socket && S.socket.send(Object.assign({}, body, { ref }));
    if (!sent) {
      S.refs.delete(ref);
      return null;
    }
    return ref;
  }

  // ---- Task records ---------------------------------------------------------

  function track(task) {
    let t = S.tasks.get(task.id);
    if (!t) {
      t = {
        id: task.id,
        task,
        state: task.state,
        messages: [],
        unread: 0,
        expiresAt: null,
        typingUntil: 0,
        draft: '',
        files: [],
        wrap: { disposition: '', notes: '' },
        endedBy: null,
        notes: [],
        hasEarlier: false, // older messages than t.messages holds exist
        loadingEarlier: false,
      };
      S.tasks.set(task.id, t);
    }
    t.task = Object.assign({}, t.task, task);
    t.state = task.state || t.state;
    S.byConv.set(task.conversation_id, task.id);
    return t;
  }

  function forget(taskId) {
    const t = S.tasks.get(taskId);
    if (!t) return null;
    S.tasks.delete(taskId);
    if (S.byConv.get(t.task.conversation_id) === taskId) S.byConv.delete(t.task.conversation_id);
    if (S.selected === taskId) S.selected = null;
    return t;
  }

  function byConversation(conversationId) {
    const id = S.byConv.get(conversationId);
    return id ? S.tasks.get(id) : null;
  }

  function customerName(t) {
    const c = t.task.customer || {};
    return c.name || c.address || 'Customer';
  }

  function isOffer(t) {
    return t.state === 'reserved' || t.state === 'queued';
  }

  function lastCustomerText(t) {
    for (let i = t.messages.length - 1; i >= 0; i -= 1) {
      const m = t.messages[i];
      if (m.from === 'customer') {
        if (m.text) return m.text;
        if (m.attachments && m.attachments.length) return '📎 ' + (m.attachments[0].filename || 'file');
      }
    }
    return t.task.preview || '';
  }

  function firstOpenTask() {
    const list = sortedTasks().filter((t) => !isOffer(t));
    return list.length ? list[0].id : null;
  }

  function sortedTasks() {
    return Array.from(S.tasks.values()).sort((a, b) => {
      const ao = isOffer(a) ? 0 : 1;
      const bo = isOffer(b) ? 0 : 1;
      if (ao !== bo) return ao - bo;
      return String(a.task.created_at).localeCompare(String(b.task.created_at));
    });
  }

  // ---- Events from the broker -----------------------------------------------

  function onEvent(msg) {
    const handler = EVENTS[msg.type];
    if (handler) handler(msg);
  }

  const EVENTS = {
    hello(msg) {
      if (S.agent && S.activity !== 'offline' && msg.activity === 'offline') {
        toast('You were disconnected for longer than the grace period, so you are Offline now. ' +
          'Choose Available to take chats again.', 'error');
      }
      S.agent = msg.agent;
      $('#agent-name').textContent = msg.agent.name || msg.agent.id;
      setActivity(msg.activity);
      const live = new Set((msg.tasks || []).map((t) => t.id));
      for (const id of Array.from(S.tasks.keys())) {
        if (!live.has(id)) forget(id);
      }
      for (const task of msg.tasks || []) track(task);
      if (S.selected && !S.tasks.has(S.selected)) S.selected = null;
      renderAll();
    },

    'activity.changed'(msg) {
      setActivity(msg.activity);
      if (msg.activity === 'not_responding') {
        toast('Several chats were offered to you in a row without an answer, so you get no new ' +
          'offers for now. Choose Available to take chats again.', 'error');
      }
    },

    'task.offered'(msg) {
      const t = track(msg.task);
      t.state = 'reserved';
      t.expiresAt = Date.parse(msg.expires_at) || null;
      t.offerTransfer = msg.transfer || null;
      renderQueue();
      notify('New chat from ' + customerName(t), msg.task.preview || channelName(msg.task.channel), t.id);
    },

    'task.rescinded'(msg) {
      const t = forget(msg.task_id);
      if (!t) return;
      if (!isOffer(t) && msg.reason === 'reassigned') {
        toast('The chat with ' + customerName(t) + ' was handed back to the queue.', 'error');
      } else if (isOffer(t) && msg.reason === 'customer_left') {
        toast(customerName(t) + ' left before the chat started.');
      }
      renderAll();
    },

    'task.assigned'(msg) {
      const t = track(msg.task);
      t.expiresAt = null;
      t.offerTransfer = null;
      // A reconnect (a reload) says whether our warm transfer still waits
      // for its target: then the chat shows Cancel again.
      t.transferPending = msg.pending_transfer ? { to: msg.pending_transfer.to } : null;
      // The newest of the history: replace, keeping local messages still
      // unsent and the earlier pages already read.
      const history = msg.history || [];
      const first = history.length ? history[0].seq : Infinity;
      const earlier = t.messages.filter((m) => !m.pending && m.seq < first);
      const unsent = t.messages.filter((m) => m.pending && !m.failed);
      t.messages = [];
      for (const m of earlier.concat(history, unsent)) upsertMessage(t.messages, m);
      const oldest = firstSeq(t.messages);
      t.hasEarlier = earlier.length ? oldest > 1 : !!msg.history_has_earlier;
      const pending = msg.ref ? S.refs.get(msg.ref) : null;
      if (msg.ref) S.refs.delete(msg.ref);
      if (pending && pending.kind === 'outbound') closeOutbound();
      if ((pending && (pending.kind === 'accept' || pending.kind === 'outbound')) || !S.selected) {
        select(t.id);
      } else {
        renderAll();
      }
    },

    message(msg) {
      const t = byConversation(msg.conversation_id);
      if (!t) return;
      if (msg.ref) S.refs.delete(msg.ref);
      const added = upsertMessage(t.messages, msg.message);
      if (msg.message.from === 'customer') {
        t.task.preview = lastCustomerText(t);
        t.typingUntil = 0;
        const inView = S.selected === t.id && !document.hidden;
        if (added && !inView) {
          t.unread += 1;
          notify(customerName(t), t.task.preview, t.id);
        }
      }
      renderQueue();
      if (S.selected === t.id) renderMessages(true);
    },

    'message.status'(msg) {
      const t = byConversation(msg.conversation_id);
      if (!t) return;
      const m = t.messages.find((x) => x.id === msg.message_id);
      if (!m) return;
      m.status = msg.status;
      m.error = msg.error || null;
      if (msg.status === 'failed') toast('A message to ' + customerName(t) + ' failed: ' + (msg.error || 'delivery failed'), 'error');
      if (S.selected === t.id) renderMessages(false);
    },

    typing(msg) {
      const t = byConversation(msg.conversation_id);
      if (!t) return;
      t.typingUntil = Date.now() + TYPING_SHOWN_MS;
      renderTyping();
    },

    'conversation.ended'(msg) {
      const t = byConversation(msg.conversation_id);
      if (!t) return;
      const pending = msg.ref ? S.refs.get(msg.ref) : null;
      if (msg.ref) S.refs.delete(msg.ref);
      t.state = 'wrapping';
      t.typingUntil = 0;
      if (!t.endedBy) {
        t.endedBy = pending ? 'agent' : 'customer';
        if (!pending && !msg.ref) {
          t.notes.push({ text: customerName(t) + ' ended the chat', kind: 'ended' });
          if (S.selected !== t.id) t.unread += 1;
          notify(customerName(t) + ' ended the chat', 'Wrap up to free the slot.', t.id);
        }
      }
      renderAll();
      if (S.selected === t.id && pending) $('#disposition').focus();
    },

    'task.completed'(msg) {
      if (msg.ref) S.refs.delete(msg.ref);
      const t = forget(msg.task_id);
      if (t) toast('Chat with ' + customerName(t) + ' completed: ' + humanize(msg.disposition || ''));
      if (!S.selected) S.selected = firstOpenTask();
      renderAll();
    },

    ok(msg) {
      const pending = msg.ref ? S.refs.get(msg.ref) : null;
      if (msg.ref) S.refs.delete(msg.ref);
      if (pending && pending.kind === 'transfer') {
        // A warm transfer is on offer: we keep the chat until they accept.
        const t = S.tasks.get(pending.taskId);
        if (t) t.transferPending = { to: pending.to };
        closeDialog('#transfer-dialog');
        renderConversation();
      }
    },

    'task.transferred'(msg) {
      const pending = msg.ref ? S.refs.get(msg.ref) : null;
      if (msg.ref) S.refs.delete(msg.ref);
      if (pending) closeDialog('#transfer-dialog');
      const t = forget(msg.task_id);
      if (t) toast('Chat with ' + customerName(t) + ' transferred to ' + targetName(msg.to) + '.');
      if (!S.selected) S.selected = firstOpenTask();
      renderAll();
    },

    'transfer.failed'(msg) {
      const t = S.tasks.get(msg.task_id);
      if (!t) return;
      const to = t.transferPending ? targetName(t.transferPending.to) : 'the other agent';
      t.transferPending = null;
      const why = {
        rejected: to + ' declined it',
        timeout: to + ' did not answer in time',
        canceled: 'you canceled it',
        ended: 'the chat ended',
        unavailable: to + ' went away',
      }[msg.reason] || msg.reason;
      toast('Transfer of the chat with ' + customerName(t) + ' did not happen: ' + why + '. It stays with you.',
        msg.reason === 'canceled' ? undefined : 'error');
      renderConversation();
    },

    'task.parked'(msg) {
      const pending = msg.ref ? S.refs.get(msg.ref) : null;
      if (msg.ref) S.refs.delete(msg.ref);
      if (pending) closeDialog('#park-dialog');
      const t = forget(msg.task_id);
      if (t) {
        toast('Chat with ' + customerName(t) + ' parked' +
          (msg.until ? ' until ' + clock(msg.until) : ' until the customer writes') + '.');
      }
      if (!S.selected) S.selected = firstOpenTask();
      renderAll();
    },

    error(msg) {
      const pending = msg.ref ? S.refs.get(msg.ref) : null;
      if (msg.ref) S.refs.delete(msg.ref);
      const text = msg.message || msg.code;
      if (!pending) {
        toast(text, 'error');
        return;
      }
      switch (pending.kind) {
        case 'send': {
          const t = byConversation(pending.conversationId);
          if (t) {
            const m = t.messages.find((x) => x.pending && x.client_msg_id === pending.clientMsgId);
            if (m) {
              m.failed = true;
              m.error = text;
            }
            if (S.selected === t.id) {
              renderMessages(false);
              showComposerError(refusal(t.task.channel, msg.code, text));
              const box = $('#reply');
              if (!box.value && pending.text) box.value = pending.text;
            } else {
              toast('Not sent to ' + customerName(t) + ': ' + text, 'error');
            }
          }
          break;
        }
        case 'complete':
          showWrapupError(msg.code === 'invalid_disposition' ? 'Choose one of the listed dispositions. ' + text : text);
          $('#complete').disabled = false;
          break;
        case 'outbound':
          showOutboundError(refusal($('#ob-channel').value, msg.code, text));
          break;
        case 'accept': {
          toast('Could not accept: ' + text, 'error');
          const t = S.tasks.get(pending.taskId);
          if (t && isOffer(t)) {
            // The offer is gone (expired or withdrawn): drop it; otherwise let it be tried again.
            if (msg.code === 'invalid_state' || msg.code === 'unknown_task') forget(t.id);
            else t.accepting = false;
            renderAll();
          }
          break;
        }
        case 'end': {
          toast('Could not end the chat: ' + text, 'error');
          const t = S.tasks.get(pending.taskId);
          if (t) t.ending = false;
          renderConversation();
          break;
        }
        case 'activity':
          toast('Activity not changed: ' + text, 'error');
          setActivity(S.activity);
          break;
        case 'transfer':
          showDialogError('#tr-error', '#tr-send', text);
          if (!$('#transfer-dialog').open) toast('Not transferred: ' + text, 'error');
          break;
        case 'park':
          showDialogError('#park-error', '#park-send', text);
          if (!$('#park-dialog').open) toast('Not parked: ' + text, 'error');
          break;
        case 'transfer.cancel':
          toast('Transfer not canceled: ' + text, 'error');
          break;
        default:
          toast(text, 'error');
      }
    },
  };

  /** A channel's refusal, said plainly. */
  function refusal(channel, code, message) {
    const name = channelName(channel);
    const text = sentence(message);
    switch (code) {
      case 'channel_disabled':
        return name + ' is not enabled on this broker. ' + text;
      case 'attachment_not_supported':
        return name + ' does not accept this file. ' + text;
      case 'attachment_too_large':
        return 'This file is too large for ' + name + '. ' + text;
      case 'text_too_long':
        return 'The message is too long for ' + name + '. ' + text;
      case 'outside_messaging_window':
        return name + ' allows a free-form message only within the messaging window. ' + text;
      default:
        return 'Not sent: ' + text;
    }
  }

  // ---- Notifications ------------------------------------------------------

  function notify(title, body, taskId) {
    updateTitle();
    if (!('Notification' in window) || Notification.permission !== 'granted') return;
    if (!document.hidden && S.selected === taskId) return;
    try {
      const n = new Notification(title, { body: body || '', tag: 'switchboard-' + taskId });
      n.onclick = () => {
        window.focus();
        if (S.tasks.has(taskId) && !isOffer(S.tasks.get(taskId))) select(taskId);
        n.close();
      };
    } catch (e) {
      // Some browsers only allow notifications from a service worker.
    }
  }

  function updateTitle() {
    let n = 0;
    for (const t of S.tasks.values()) n += isOffer(t) ? 1 : t.unread;
    document.title = (n ? '(' + n + ') ' : '') + 'Switchboard Desk';
  }

  // ---- Activity -------------------------------------------------------------

  function setActivity(activity) {
    S.activity = activity;
    const input = $('#act-' + activity);
    if (input) {
      input.checked = true;
    } else {
      // not_responding: set by the broker, not a choice; none is selected
      // until the agent picks one.
      for (const i of document.querySelectorAll('#activity input')) i.checked = false;
    }
  }

  function onActivity(ev) {
    const value = ev.target.value;
    if (!command('activity', { type: 'activity', activity: value })) {
      toast('Not connected: activity not changed.', 'error');
      setActivity(S.activity);
      return;
    }
    S.activity = value;
  }

  // ---- Rendering: queue -----------------------------------------------------

  function renderAll() {
    renderQueue();
    renderConversation();
  }

  function renderQueue() {
    const list = $('#queue');
    const focusKey = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.key : null;
    list.replaceChildren(...sortedTasks().map(queueItem));
    $('#queue-empty').hidden = S.tasks.size > 0;
    $('#queue-count').textContent = S.tasks.size ? '(' + S.tasks.size + ')' : '';
    if (focusKey) {
      const again = list.querySelector('[data-key="' + CSS.escape(focusKey) + '"]');
      if (again) again.focus();
    }
    tick();
    updateTitle();
  }

  function queueItem(t) {
    const name = customerName(t);
    const offer = isOffer(t);
    const selected = S.selected === t.id;
    const li = h('li', {
      class: 'task' + (offer ? ' offer' : ' selectable') + (selected ? ' selected' : ''),
      dataset: { task: t.id },
      'aria-current': selected ? 'true' : null,
    });
    li.appendChild(channelIcon(t.task.channel));
    const stateText = offer ? 'Offer' : t.state === 'wrapping' ? 'Wrap up' : '';
    li.appendChild(h('div', { class: 'line1' },
      h('span', { class: 'customer', text: name }),
      stateText ? h('span', { class: 'state ' + (offer ? 'offer' : t.state), text: stateText }) : null));
    li.appendChild(h('span', { class: 'wait', dataset: { created: t.task.created_at, expires: t.expiresAt || '' } }));
    li.appendChild(h('div', { class: 'preview', text: t.task.preview || lastCustomerText(t) || ' ' }));
    if (offer && t.offerTransfer) {
      const tr = t.offerTransfer;
      li.appendChild(h('div', {
        class: 'transfer',
        text: (tr.mode === 'warm' ? 'Warm transfer' : 'Transfer') + ' from ' + tr.from + (tr.note ? ': ' + tr.note : ''),
      }));
    }
    if (offer) {
      li.appendChild(h('div', { class: 'offer-actions' },
        h('button', {
          type: 'button', class: 'reject', 'aria-label': 'Reject chat from ' + name, title: 'Reject',
          dataset: { key: 'reject-' + t.id }, onclick: () => reject(t.id),
        }, icon('close')),
        h('button', {
          type: 'button', class: 'accept', 'aria-label': 'Accept chat from ' + name, title: 'Accept',
          dataset: { key: 'accept-' + t.id }, onclick: () => accept(t.id), disabled: !!t.accepting,
        }, icon('check'))));
    } else if (t.unread > 0) {
      li.appendChild(h('span', {
        class: 'unread', 'aria-label': t.unread + ' unread', text: String(t.unread),
      }));
    }
    if (!offer) {
      li.appendChild(h('button', {
        type: 'button', class: 'open-button',
        'aria-label': 'Open conversation with ' + name + (t.unread ? ', ' + t.unread + ' unread' : ''),
        dataset: { key: 'open-' + t.id },
        onclick: () => select(t.id),
      }));
    }
    return li;
  }

  /** Every second: waiting times, offer countdowns, typing indicator. */
  function tick() {
    const now = Date.now();
    for (const el of document.querySelectorAll('#queue .wait')) {
      const created = Date.parse(el.dataset.created);
      const expires = Number(el.dataset.expires);
      let text = Number.isNaN(created) ? '' : duration(now - created);
      if (expires) text += ' · ' + Math.max(0, Math.ceil((expires - now) / 1000)) + 's left';
      el.textContent = text;
      el.title = Number.isNaN(created) ? '' : 'Waiting since ' + clock(el.dataset.created);
    }
    // An offer past its expiry that the broker has not withdrawn yet (lost
    // event, sleeping laptop) is dropped here; the broker re-queues it anyway.
    let dropped = false;
    for (const t of Array.from(S.tasks.values())) {
      if (isOffer(t) && t.expiresAt && now > t.expiresAt + 3000) {
        forget(t.id);
        dropped = true;
      }
    }
    if (dropped) renderQueue();
    renderTyping();
  }

  // ---- Commands from the queue --------------------------------------------

  function accept(taskId) {
    const t = S.tasks.get(taskId);
    if (!t || t.accepting) return;
    const ref = command('accept', { type: 'accept', task_id: taskId }, { taskId });
    if (!ref) {
      toast('Not connected: cannot accept right now.', 'error');
      return;
    }
    t.accepting = true;
    renderQueue();
  }

  function reject(taskId) {
    const ref = command('reject', { type: 'reject', task_id: taskId }, { taskId });
    if (!ref) {
      toast('Not connected: cannot reject right now.', 'error');
      return;
    }
    forget(taskId);
    renderQueue();
  }

  function select(taskId) {
    const prev = S.selected ? S.tasks.get(S.selected) : null;
    if (S.canned.open) closeCanned(false);
    if (prev && prev.id !== taskId) saveDraft(prev);
    S.selected = taskId;
    const t = S.tasks.get(taskId);
    if (t) t.unread = 0;
    renderAll();
    if (t) {
      const box = t.state === 'wrapping' ? $('#disposition') : $('#reply');
      box.focus();
    }
  }

  function saveDraft(t) {
    t.draft = $('#reply').value;
    t.wrap.notes = $('#notes').value;
    t.wrap.disposition = $('#disposition').value;
  }

  // ---- Rendering: conversation ------------------------------------------

  function renderConversation() {
    const t = S.selected ? S.tasks.get(S.selected) : null;
    $('#conv-empty').hidden = !!t;
    $('#conv').hidden = !t;
    if (!t) return;
    const name = customerName(t);
    $('#conv-channel').replaceChildren(channelIcon(t.task.channel));
    $('#conv-name').textContent = name;
    const addr = (t.task.customer && t.task.customer.address) || '';
    $('#conv-sub').textContent = channelName(t.task.channel) + (addr && addr !== name ? ' · ' + addr : '') +
      (t.task.queue ? ' · queue ' + t.task.queue : '') + ' · started ' + clock(t.task.created_at);
    const pill = $('#conv-state');
    pill.className = 'pill ' + t.state;
    pill.textContent = t.state === 'wrapping' ? 'Wrap Up' : humanize(t.state);
    const wrapping = t.state === 'wrapping';
    if (wrapping && S.canned.open) closeCanned(false);
    const consulting = !!t.transferPending;
    $('#transfer-open').hidden = wrapping || consulting;
    $('#park-open').hidden = wrapping || consulting;
    $('#transfer-cancel').hidden = wrapping || !consulting;
    const status = $('#transfer-status');
    status.hidden = wrapping || !consulting;
    status.textContent = consulting
      ? 'Waiting for ' + targetName(t.transferPending.to) + ' to accept. The chat stays with you until then.' : '';
    renderChain(t);
    $('#end-chat').hidden = wrapping;
    $('#end-chat').disabled = !!t.ending;
    $('#composer').hidden = wrapping;
    $('#wrapup').hidden = !wrapping;
    if (!wrapping) {
      const box = $('#reply');
      if (box.dataset.task !== t.id) {
        box.value = t.draft || '';
        box.dataset.task = t.id;
        growReply();
        hideComposerError();
      }
      renderFileChips(t);
    } else {
      const form = $('#wrapup');
      if (form.dataset.task !== t.id) {
        form.dataset.task = t.id;
        fillDispositions(t.wrap.disposition);
        $('#notes').value = t.wrap.notes || '';
        updateCounter();
        showWrapupError(null);
        $('#complete').disabled = false;
      }
    }
    renderMessages(true);
    renderTyping();
  }

  function renderMessages(scrollIfNear) {
    const t = S.selected ? S.tasks.get(S.selected) : null;
    if (!t) return;
    const box = $('#messages');
    const nearBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80 || box.dataset.task !== t.id;
    const nodes = t.messages.map((m) => messageView(m, t));
    if (t.hasEarlier) {
      nodes.unshift(h('button', {
        type: 'button',
        class: 'earlier',
        disabled: t.loadingEarlier,
        text: t.loadingEarlier ? 'Loading earlier messages…' : 'Show earlier messages',
        onclick: () => loadEarlierOf(t),
      }));
    }
    for (const note of t.notes) nodes.push(h('div', { class: 'event-note ' + (note.kind || ''), text: note.text }));
    if (t.state === 'wrapping' && !t.notes.length) {
      nodes.push(h('div', { class: 'event-note ended', text: 'Chat ended' }));
    }
    box.replaceChildren(...nodes);
    if ((scrollIfNear && nearBottom) || box.dataset.task !== t.id) box.scrollTop = box.scrollHeight;
    box.dataset.task = t.id;
    // Too few to scroll, yet more exist: fetch them now, as a scroll would.
    if (t.hasEarlier && !t.loadingEarlier && box.scrollHeight <= box.clientHeight) loadEarlierOf(t);
    // Images load after layout: keep the newest in view.
    for (const img of box.querySelectorAll('img')) {
      img.addEventListener('load', () => {
        if (nearBottom) box.scrollTop = box.scrollHeight;
      }, { once: true });
    }
  }

  /** Read the page before the oldest message shown, and show it in place. */
  async function loadEarlierOf(t) {
    const before = firstSeq(t.messages);
    if (!t.hasEarlier || t.loadingEarlier || before === null) return;
    t.loadingEarlier = true;
    if (S.selected === t.id) renderMessages(false);
    try {
      const page = await loadEarlier(t.task.conversation_id, before, S.token);
      for (const m of page.messages || []) upsertMessage(t.messages, m);
      t.hasEarlier = !!page.has_more;
    } catch (e) {
      toast('Earlier messages could not be loaded: ' + e.message, 'error');
    }
    t.loadingEarlier = false;
    if (S.selected === t.id) keepScrollPlace($('#messages'), () => renderMessages(false));
  }

  function messageView(m, t) {
    const from = m.from || 'system';
    const cls = 'msg ' + from + (m.pending ? ' pending' : '') + (m.failed ? ' failed' : '');
    const bubble = h('div', { class: 'bubble' });
    if (m.text) bubble.appendChild(h('span', { class: 'text', text: m.text }));
    for (const a of m.attachments || []) bubble.appendChild(attachmentView(a, S.token));
    const who = from === 'customer' ? customerName(t)
      : from === 'agent' ? (m.agent_id && m.agent_id !== S.agentId ? m.agent_id : 'You') : 'System';
    const meta = h('div', { class: 'meta' }, h('span', { text: who }),
      h('span', { text: m.created_at ? clock(m.created_at) : '' }));
    if (m.failed) {
      meta.appendChild(h('span', { class: 'status-failed', text: 'Not sent' + (m.error ? ': ' + m.error : '') }));
    } else if (m.pending) {
      meta.appendChild(h('span', { text: 'Sending…' }));
    } else if (from === 'agent' && m.status && m.status !== 'accepted') {
      meta.appendChild(h('span', {
        class: m.status === 'failed' ? 'status-failed' : '',
        text: humanize(m.status) + (m.error ? ': ' + m.error : ''),
      }));
    }
    return h('div', { class: cls, dataset: { seq: m.seq || '' } }, bubble, meta);
  }

  function renderTyping() {
    const t = S.selected ? S.tasks.get(S.selected) : null;
    const el = $('#typing');
    const on = t && t.typingUntil > Date.now();
    const text = on ? customerName(t) + ' is typing' : '';
    if (el.dataset.text !== text) {
      el.replaceChildren(on ? h('span', {}, text, h('span', { class: 'dots' })) : '');
      el.dataset.text = text;
    }
  }

  // ---- Composer -----------------------------------------------------------

  let growReply = () => {};

  async function onFiles(ev) {
    const t = S.selected ? S.tasks.get(S.selected) : null;
    const files = Array.from(ev.target.files || []);
    ev.target.value = '';
    if (!t) return;
    hideComposerError();
    await Promise.all(files.map(async (file) => {
      const entry = { name: file.name, meta: null };
      t.files.push(entry);
      if (S.selected === t.id) renderFileChips(t);
      try {
        entry.meta = await upload(file, S.token);
      } catch (e) {
        t.files = t.files.filter((x) => x !== entry);
        const msg = file.name + ' cannot be sent. ' + refusal(t.task.channel, e.code, e.message);
        if (S.selected === t.id) showComposerError(msg);
        else toast(msg, 'error');
      }
      if (S.selected === t.id) renderFileChips(t);
    }));
  }

  function onSend(ev) {
    if (ev) ev.preventDefault();
    const t = S.selected ? S.tasks.get(S.selected) : null;
    if (!t || t.state === 'wrapping') return;
    const box = $('#reply');
    const text = box.value.trim();
    if (t.files.some((f) => !f.meta)) return;
    const attachments = t.files.map((f) => f.meta);
    if (!text && !attachments.length) return;
    hideComposerError();
    const clientMsgId = uid('a');
    const body = {
      type: 'send',
      conversation_id: t.task.conversation_id,
      text,
      attachments: attachments.map((a) => a.id),
      client_msg_id: clientMsgId,
    };
    const ref = command('send', body, { conversationId: t.task.conversation_id, clientMsgId, text: box.value });
    if (!ref) {
      showComposerError('Not connected: the message was not sent. It is still in the box; send again when the connection is back.');
      return;
    }
    upsertMessage(t.messages, {
      pending: true, sentAt: Date.now(), client_msg_id: clientMsgId, from: 'agent', text, attachments,
      agent_id: S.agentId,
    });
    box.value = '';
    t.draft = '';
    t.files = [];
    growReply();
    renderFileChips(t);
    renderMessages(true);
    $('#messages').scrollTop = $('#messages').scrollHeight;
  }

  function onReplyInput() {
    hideComposerError();
    const t = S.selected ? S.tasks.get(S.selected) : null;
    if (!t || !S.socket) return;
    const now = Date.now();
    if (now - S.lastTypingSent > TYPING_SEND_EVERY_MS && $('#reply').value.trim()) {
      S.lastTypingSent = now;
      S.socket.send({ type: 'typing', conversation_id: t.task.conversation_id });
    }
  }

  function showComposerError(text) {
    const box = $('#composer-error');
    box.textContent = text;
    box.hidden = false;
  }

  function hideComposerError() {
    $('#composer-error').hidden = true;
  }

  // ---- Canned responses -------------------------------------------------------
  // `/` in an empty reply box opens a searchable list of the canned responses
  // usable in this conversation. The broker fills their placeholders in for it
  // (GET /v1/canned-responses?conversation_id=), so the text put into the box
  // is exactly what a send by id would send; the agent edits it, then sends it
  // as any reply. Keyboard: type to search, arrows to choose, Enter to insert,
  // Escape to close (focus goes back to the reply box either way).

  function onReplyKey(ev) {
    if (ev.key !== '/' || ev.ctrlKey || ev.metaKey || ev.altKey || ev.isComposing) return;
    if ($('#reply').value !== '') return;
    const t = S.selected ? S.tasks.get(S.selected) : null;
    if (!t || t.state === 'wrapping') return;
    ev.preventDefault();
    openCanned(t);
  }

  async function openCanned(t) {
    const C = S.canned;
    C.seq += 1;
    const seq = C.seq;
    Object.assign(C, { open: true, conv: t.task.conversation_id, items: [], shown: [], active: 0 });
    $('#canned').hidden = false;
    const search = $('#canned-search');
    search.value = '';
    renderCanned('Loading canned responses…');
    search.focus();
    let list;
    try {
      list = await api('GET', '/v1/canned-responses?conversation_id=' + encodeURIComponent(C.conv), S.token);
    } catch (e) {
      if (C.open && C.seq === seq) renderCanned('Canned responses could not be loaded: ' + e.message);
      return;
    }
    if (!C.open || C.seq !== seq) return;
    C.items = Array.isArray(list) ? list : [];
    filterCanned();
  }

  /** Show the responses whose title or text holds the search words. */
  function filterCanned() {
    const C = S.canned;
    const words = $('#canned-search').value.toLowerCase().split(/\s+/).filter(Boolean);
    C.shown = C.items.filter((r) => {
      const hay = (r.title + ' ' + (r.filled || r.text)).toLowerCase();
      return words.every((w) => hay.includes(w));
    });
    C.active = 0;
    let status;
    if (!C.items.length) status = 'No canned responses for this conversation.';
    else if (!C.shown.length) status = 'No canned response matches.';
    else status = C.shown.length + (C.shown.length === 1 ? ' response' : ' responses');
    renderCanned(status);
  }

  function renderCanned(status) {
    const C = S.canned;
    const list = $('#canned-list');
    const search = $('#canned-search');
    list.replaceChildren(...C.shown.map((r, i) => h('li', {
      id: 'canned-opt-' + i,
      role: 'option',
      'aria-selected': i === C.active ? 'true' : 'false',
      dataset: { id: r.id },
      // Keep the focus in the search box; the click inserts.
      onmousedown: (ev) => ev.preventDefault(),
      onclick: () => insertCanned(i),
    }, h('span', { class: 'canned-title', text: r.title }), h('span', { class: 'canned-text', text: r.filled || r.text }))));
    list.hidden = C.shown.length === 0;
    search.setAttribute('aria-expanded', String(!list.hidden));
    if (C.shown.length) {
      search.setAttribute('aria-activedescendant', 'canned-opt-' + C.active);
      const active = list.children[C.active];
      if (active) active.scrollIntoView({ block: 'nearest' });
    } else {
      search.removeAttribute('aria-activedescendant');
    }
    if (status !== undefined) $('#canned-status').textContent = status;
  }

  function onCannedKey(ev) {
    const C = S.canned;
    if (ev.key === 'Escape') {
      ev.preventDefault();
      closeCanned(true);
    } else if (ev.key === 'ArrowDown' || ev.key === 'ArrowUp') {
      ev.preventDefault();
      if (!C.shown.length) return;
      const step = ev.key === 'ArrowDown' ? 1 : -1;
      C.active = (C.active + step + C.shown.length) % C.shown.length;
      renderCanned();
    } else if (ev.key === 'Enter' && !ev.isComposing) {
      ev.preventDefault();
      if (C.shown.length) insertCanned(C.active);
    }
  }

  /** Put the chosen response, filled in, into the reply box for editing. */
  function insertCanned(i) {
    const r = S.canned.shown[i];
    if (!r) return;
    const box = $('#reply');
    box.value = r.filled || r.text;
    closeCanned(true);
    box.setSelectionRange(box.value.length, box.value.length);
    growReply();
  }

  function closeCanned(refocus) {
    const C = S.canned;
    C.seq += 1;
    Object.assign(C, { open: false, conv: null, items: [], shown: [], active: 0 });
    $('#canned').hidden = true;
    $('#canned-list').replaceChildren();
    $('#canned-status').textContent = '';
    if (refocus) $('#reply').focus();
  }

  // ---- Transfer and park ---------------------------------------------------

  /** "queue billing" / "bob", from a transfer's `to`. */
  function targetName(to) {
    if (!to) return '';
    return to.queue ? 'queue ' + to.queue : to.agent;
  }

  function renderChain(t) {
    const list = $('#transfer-chain');
    const chain = (t.task && t.task.transfers) || [];
    list.hidden = chain.length === 0;
    list.replaceChildren(...chain.map((tr) => h('li', {},
      (tr.mode === 'warm' ? 'Warm transfer' : 'Transferred') + ' by ' + tr.from + ' to ' + targetName(tr.to) +
        ' at ' + clock(tr.at),
      tr.note ? h('span', { class: 'note', text: ': ' + tr.note }) : null)));
  }

  function closeDialog(sel) {
    const d = $(sel);
    if (d.open) d.close();
  }

  function showDialogError(boxSel, buttonSel, text) {
    const box = $(boxSel);
    box.hidden = !text;
    box.textContent = text || '';
    $(buttonSel).disabled = false;
  }

  function onTransferKind() {
    const agent = $('#tr-to-agent').checked;
    $('#tr-target-label').textContent = agent ? 'Agent id' : 'Queue id';
  }

  function openTransfer() {
    const t = S.selected ? S.tasks.get(S.selected) : null;
    if (!t) return;
    showDialogError('#tr-error', '#tr-send', null);
    $('#tr-target').value = '';
    $('#tr-note').value = '';
    onTransferKind();
    $('#transfer-dialog').showModal();
    $('#tr-target').focus();
  }

  function onTransfer(ev) {
    ev.preventDefault();
    const t = S.selected ? S.tasks.get(S.selected) : null;
    if (!t) return;
    const target = $('#tr-target').value.trim();
    if (!target) {
      showDialogError('#tr-error', '#tr-send', 'Name the queue or agent to transfer to.');
      $('#tr-target').focus();
      return;
    }
    const mode = $('#tr-warm').checked ? 'warm' : 'cold';
    const to = $('#tr-to-agent').checked ? { agent: target } : { queue: target };
    const ref = command('transfer', {
      type: 'transfer', task_id: t.id, to, mode, note: $('#tr-note').value.trim(),
    }, { taskId: t.id, to });
    if (!ref) {
      showDialogError('#tr-error', '#tr-send', 'Not connected: try again when the connection is back.');
      return;
    }
    showDialogError('#tr-error', '#tr-send', null);
    $('#tr-send').disabled = true;
  }

  function onCancelTransfer() {
    const t = S.selected ? S.tasks.get(S.selected) : null;
    if (!t) return;
    if (!command('transfer.cancel', { type: 'transfer.cancel', task_id: t.id }, { taskId: t.id })) {
      toast('Not connected: the transfer was not canceled.', 'error');
    }
  }

  function openPark() {
    const t = S.selected ? S.tasks.get(S.selected) : null;
    if (!t) return;
    showDialogError('#park-error', '#park-send', null);
    $('#park-until').value = '';
    $('#park-dialog').showModal();
    $('#park-until').focus();
  }

  function onPark(ev) {
    ev.preventDefault();
    const t = S.selected ? S.tasks.get(S.selected) : null;
    if (!t) return;
    const body = { type: 'park', task_id: t.id };
    const local = $('#park-until').value;
    if (local) {
      const at = new Date(local);
      if (Number.isNaN(at.getTime()) || at.getTime() <= Date.now()) {
        showDialogError('#park-error', '#park-send', 'Choose a time in the future, or leave it empty.');
        return;
      }
      body.until = at.toISOString();
    }
    saveDraft(t);
    if (!command('park', body, { taskId: t.id })) {
      showDialogError('#park-error', '#park-send', 'Not connected: try again when the connection is back.');
      return;
    }
    showDialogError('#park-error', '#park-send', null);
    $('#park-send').disabled = true;
  }

  // ---- End chat and wrap-up -------------------------------------------------

  function onEnd() {
    const t = S.selected ? S.tasks.get(S.selected) : null;
    if (!t) return;
    if (t.ending) return;
    saveDraft(t);
    if (!command('end', { type: 'end', conversation_id: t.task.conversation_id }, { taskId: t.id })) {
      toast('Not connected: the chat was not ended.', 'error');
      return;
    }
    t.ending = true;
    $('#end-chat').disabled = true;
  }

  async function loadDispositions() {
    try {
      const list = await api('GET', '/v1/dispositions');
      if (Array.isArray(list)) S.dispositions = list;
    } catch (e) {
      toast('Could not load dispositions: ' + e.message, 'error');
    }
  }

  function fillDispositions(current) {
    const select = $('#disposition');
    const options = [h('option', { value: '', text: 'Choose a disposition…' })];
    for (const code of S.dispositions) options.push(h('option', { value: code, text: humanize(code) }));
    select.replaceChildren(...options);
    select.value = S.dispositions.includes(current) ? current : '';
  }

  function updateCounter() {
    $('#notes-counter').textContent = $('#notes').value.length + ' / ' + NOTES_MAX;
  }

  function showWrapupError(text) {
    const box = $('#wrapup-error');
    box.hidden = !text;
    box.textContent = text || '';
  }

  function onComplete(ev) {
    ev.preventDefault();
    const t = S.selected ? S.tasks.get(S.selected) : null;
    if (!t) return;
    const disposition = $('#disposition').value;
    if (!disposition) {
      showWrapupError('Choose a disposition first.');
      $('#disposition').focus();
      return;
    }
    saveDraft(t);
    showWrapupError(null);
    const ref = command('complete', {
      type: 'complete', task_id: t.id, disposition, notes: $('#notes').value,
    }, { taskId: t.id });
    if (!ref) {
      showWrapupError('Not connected: try again when the connection is back.');
      return;
    }
    $('#complete').disabled = true;
  }

  // ---- Outbound -------------------------------------------------------------

  const TO_HINTS = {
    webchat: 'webchat session id (wc_…)',
    sms: 'phone number, e.g. +15551230000',
    whatsapp: 'WhatsApp number, e.g. 15551230000',
    messenger: 'Messenger page-scoped id',
  };

  function openOutbound() {
    showOutboundError(null);
    $('#ob-send').disabled = false;
    updateToHint();
    $('#outbound-dialog').showModal();
    $('#ob-to').focus();
  }

  function closeOutbound() {
    const d = $('#outbound-dialog');
    if (d.open) d.close();
    $('#ob-text').value = '';
    $('#ob-to').value = '';
  }

  function updateToHint() {
    $('#ob-to-hint').textContent = '(' + TO_HINTS[$('#ob-channel').value] + ')';
  }

  function showOutboundError(text) {
    const box = $('#ob-error');
    box.hidden = !text;
    box.textContent = text || '';
    $('#ob-send').disabled = false;
  }

  function onOutbound(ev) {
    ev.preventDefault();
    const channel = $('#ob-channel').value;
    const to = $('#ob-to').value.trim();
    const text = $('#ob-text').value.trim();
    if (!to || !text) {
      showOutboundError('Fill in the address and the first message.');
      return;
    }
    const ref = command('outbound', { type: 'outbound', channel, to, text, client_msg_id: uid('o') });
    if (!ref) {
      showOutboundError('Not connected: try again when the connection is back.');
      return;
    }
    showOutboundError(null);
    $('#ob-send').disabled = true;
  }

  // ---- Start-up -------------------------------------------------------------

  function init() {
    $('#signin-mark').appendChild(icon('chat'));
    $('#top-mark').appendChild(icon('chat'));
    $('#empty-icon').appendChild(icon('chat'));
    $('#attach').appendChild(icon('clip'));
    $('#end-chat').prepend(icon('end'));
    $('#new-outbound').prepend(icon('plus'));

    $('#signin-form').addEventListener('submit', onSignin);
    $('#signout').addEventListener('click', () => signOut(null));
    $('#activity').addEventListener('change', onActivity);
    $('#composer').addEventListener('submit', onSend);
    growReply = enterToSend($('#reply'), () => onSend(null));
    $('#reply').addEventListener('input', onReplyInput);
    $('#reply').addEventListener('keydown', onReplyKey);
    $('#canned-search').addEventListener('input', filterCanned);
    $('#canned-search').addEventListener('keydown', onCannedKey);
    // Tabbing or clicking away closes the picker.
    $('#canned').addEventListener('focusout', (ev) => {
      if (S.canned.open && !$('#canned').contains(ev.relatedTarget)) closeCanned(false);
    });
    $('#disposition').addEventListener('change', () => showWrapupError(null));
    $('#attach').addEventListener('click', () => $('#file-input').click());
    $('#file-input').addEventListener('change', onFiles);
    $('#end-chat').addEventListener('click', onEnd);
    $('#wrapup').addEventListener('submit', onComplete);
    $('#notes').addEventListener('input', updateCounter);
    $('#new-outbound').addEventListener('click', openOutbound);
    $('#transfer-open').addEventListener('click', openTransfer);
    $('#transfer-cancel').addEventListener('click', onCancelTransfer);
    $('#tr-close').addEventListener('click', () => closeDialog('#transfer-dialog'));
    $('#tr-to-queue').addEventListener('change', onTransferKind);
    $('#tr-to-agent').addEventListener('change', onTransferKind);
    $('#transfer-form').addEventListener('submit', onTransfer);
    $('#park-open').addEventListener('click', openPark);
    $('#park-close').addEventListener('click', () => closeDialog('#park-dialog'));
    $('#park-form').addEventListener('submit', onPark);
    $('#ob-cancel').addEventListener('click', closeOutbound);
    $('#ob-channel').addEventListener('change', updateToHint);
    $('#outbound-form').addEventListener('submit', onOutbound);
    onScrollToTop($('#messages'), () => {
      const t = S.selected ? S.tasks.get(S.selected) : null;
      if (t) loadEarlierOf(t);
    });
    window.addEventListener('online', () => S.socket && S.socket.kick());
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden && S.selected && S.tasks.has(S.selected)) {
        S.tasks.get(S.selected).unread = 0;
        renderQueue();
      }
    });
    setInterval(tick, 1000);
    loadDispositions();

    const saved = session.get('switchboard.desk');
    const params = new URLSearchParams(location.search);
    if (params.get('agent')) $('#agent-id').value = params.get('agent');
    if (saved && saved.id && saved.token) {
      start(saved.id, saved.token);
    } else {
      showSignin(null);
    }
  }

  init();
})();

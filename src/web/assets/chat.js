// Switchboard webchat (/chat), standalone or framed by /chat/widget.js.
// Talks the customer protocol of docs/protocol.md: POST /v1/webchat/sessions
// once, then one WebSocket; the session token is kept in localStorage so a
// reload shows the history again.
'use strict';

(function () {
  const { h, $, icon, uid, upload, attachmentView, upsertMessage, Socket, wsUrl, store, enterToSend,
    clock, sentence, renderFileChips, loadEarlier, keepScrollPlace, onScrollToTop, firstSeq } = window.SB;

  const KEY = 'switchboard.webchat';
  const TYPING_SHOWN_MS = 5000;
  const TYPING_SEND_EVERY_MS = 3000;
  const params = new URLSearchParams(location.search);
  const embed = params.has('embed');
  // A pre-chat context signed by the site's backend (widget.js passes it on).
  const context = params.get('context');
  const contextSignature = params.get('context_signature');
  // The queue this page's chats wait in (`?queue=`, set by the widget's
  // data-queue); the broker's `default` when absent.
  const queue = params.get('queue') || null;

  const C = {
    saved: null, // { token, session_id, name, ended, cleared }
    socket: null,
    conversationId: null,
    messages: [],
    hasEarlier: false, // older messages than C.messages holds exist
    loadingEarlier: false,
    notes: [], // { text, afterSeq } shown between messages
    agentName: null,
    ended: false,
    fresh: false, // "start a new conversation" clicked: old history hidden
    typingUntil: 0,
    files: [],
    refs: new Map(),
    outbox: [], // messages written while the socket was down, sent on (re)connect
    lastTypingSent: 0,
    panelOpen: !embed,
    unread: 0,
    everOpen: false,
  };

  function save() {
    store.set(KEY, C.saved);
  }

  // ---- Start ------------------------------------------------------------------

  function showNameForm(error) {
    $('#chat').hidden = true;
    $('#leave').hidden = true;
    $('#name-form').hidden = false;
    const box = $('#name-error');
    box.hidden = !error;
    box.textContent = error || '';
    $('#name').focus();
  }

  async function onStart(ev) {
    ev.preventDefault();
    const name = $('#name').value.trim();
    if (!name) {
      showNameForm('Please tell us your name.');
      return;
    }
    $('#start').disabled = true;
    try {
      const body = { name };
      if (queue) body.queue = queue;
      if (context && contextSignature) {
        body.context = context;
        body.context_signature = contextSignature;
      }
      const r = await SB.api('POST', '/v1/webchat/sessions', null, body);
      C.saved = { token: r.token, session_id: r.session_id, name, ended: null, cleared: null };
      save();
      connect();
      $('#text').focus();
    } catch (e) {
      showNameForm('We could not start the chat: ' + e.message);
    } finally {
      $('#start').disabled = false;
    }
  }

  function connect() {
    $('#name-form').hidden = true;
    $('#chat').hidden = false;
    render();
    C.socket = new Socket(
      () => wsUrl('/v1/webchat/ws?token=' + encodeURIComponent(C.saved.token)),
      { onmessage: onEvent, onstatus: onStatus },
    );
  }

  async function onStatus(status) {
    if (status === 'open') {
      C.everOpen = true;
      setBanner(null);
      for (const payload of C.outbox.splice(0)) {
        if (!C.socket || !C.socket.send(payload)) C.outbox.push(payload);
      }
    } else if (status === 'closed') {
      if (C.everOpen) setBanner('Connection lost. Reconnecting…');
      // Is the session still known to the broker? (It forgets on restart.)
      try {
        await SB.api('GET', '/v1/webchat/session', C.saved.token);
      } catch (e) {
        if (e.status === 401) {
          C.socket.close();
          C.socket = null;
          C.saved = null;
          save();
          resetConversation(null);
          showNameForm('Your previous chat is no longer available. Start a new one.');
        }
      }
    }
  }

  function setBanner(text) {
    const b = $('#banner');
    b.hidden = !text;
    b.textContent = text || '';
  }

  function resetConversation(id) {
    C.conversationId = id;
    C.hasEarlier = false;
    C.messages = C.messages.filter((m) => m.pending && !m.failed);
    C.notes = [];
    C.agentName = null;
    C.ended = false;
    C.typingUntil = 0;
  }

  /** A live event names a conversation: a new one means the old one is over. */
  function follow(conversationId) {
    if (!conversationId || conversationId === C.conversationId) return;
    resetConversation(conversationId);
    C.fresh = false;
    C.saved.cleared = null;
    C.saved.ended = null;
    save();
  }

  // ---- Events -----------------------------------------------------------------

  function onEvent(msg) {
    const handler = EVENTS[msg.type];
    if (handler) handler(msg);
  }

  const EVENTS = {
    history(msg) {
      const pending = C.messages.filter((m) => m.pending && !m.failed);
      const replay = msg.messages || [];
      // Earlier pages already read of the same conversation stay.
      const first = replay.length ? replay[0].seq : Infinity;
      const earlier = msg.conversation_id === C.conversationId
        ? C.messages.filter((m) => !m.pending && m.seq < first) : [];
      C.conversationId = msg.conversation_id;
      C.messages = [];
      C.notes = [];
      for (const m of earlier.concat(replay, pending)) upsertMessage(C.messages, m);
      C.hasEarlier = earlier.length ? firstSeq(C.messages) > 1 : !!msg.has_earlier;
      const id = msg.conversation_id;
      C.ended = !!id && (msg.ended === true || C.saved.ended === id);
      C.fresh = !!id && C.saved.cleared === id;
      render();
    },

    ack(msg) {
      follow(msg.conversation_id);
      const m = C.messages.find((x) => x.pending && x.client_msg_id === msg.client_msg_id);
      if (m) {
        m.acked = true;
        m.seq = msg.seq;
      }
      if (msg.ref) C.refs.delete(msg.ref);
      renderMessages();
    },

    message(msg) {
      follow(msg.conversation_id);
      upsertMessage(C.messages, msg.message);
      if (msg.message.from === 'agent') {
        C.typingUntil = 0;
        if (!C.panelOpen || document.hidden) {
          C.unread += 1;
          tellParent({ type: 'switchboard:unread', count: C.unread });
          if (!embed) document.title = '(' + C.unread + ') Chat with us';
        }
      }
      render();
    },

    'agent.joined'(msg) {
      follow(msg.conversation_id);
      const name = (msg.agent && msg.agent.name) || 'An agent';
      if (C.agentName !== name) {
        C.agentName = name;
        C.notes.push({ text: name + ' joined the chat', afterSeq: lastSeq() });
      }
      render();
    },

    typing(msg) {
      if (msg.conversation_id && msg.conversation_id !== C.conversationId) return;
      C.typingUntil = Date.now() + TYPING_SHOWN_MS;
      renderTyping();
    },

    'conversation.ended'(msg) {
      if (msg.conversation_id && msg.conversation_id !== C.conversationId) return;
      C.ended = true;
      C.typingUntil = 0;
      C.saved.ended = C.conversationId;
      save();
      render();
      $('#restart').focus();
    },

    error(msg) {
      const pending = msg.ref ? C.refs.get(msg.ref) : null;
      if (msg.ref) C.refs.delete(msg.ref);
      if (pending && pending.kind === 'message') {
        const m = C.messages.find((x) => x.pending && x.client_msg_id === pending.clientMsgId);
        if (m) {
          m.failed = true;
          m.error = msg.message;
        }
        const box = $('#text');
        if (!box.value && pending.text) box.value = pending.text;
        renderMessages();
      }
      showComposerError(sentence(msg.message || msg.code));
    },
  };

  function lastSeq() {
    let seq = 0;
    for (const m of C.messages) if (!m.pending && m.seq > seq) seq = m.seq;
    return seq;
  }

  // ---- Rendering ----------------------------------------------------------------

  function render() {
    const open = !!C.conversationId && !C.ended && !C.fresh;
    $('#leave').hidden = !open;
    $('#ended').hidden = !(C.ended && !C.fresh);
    $('#composer').hidden = C.ended && !C.fresh;
    const sub = $('#chat-sub');
    if (C.ended && !C.fresh) sub.textContent = 'Conversation ended';
    else if (C.agentName && !C.fresh) sub.textContent = 'You are chatting with ' + C.agentName;
    else if (C.conversationId && !C.fresh) sub.textContent = 'Waiting for an agent…';
    else sub.textContent = 'We usually answer within a few minutes';
    renderMessages();
    renderTyping();
    renderFileChips(C);
  }

  function renderMessages() {
    const box = $('#messages');
    const nearBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
    const shown = C.fresh ? C.messages.filter((m) => m.pending) : C.messages;
    const nodes = [];
    if (!shown.length) {
      nodes.push(h('div', { class: 'chat-welcome' },
        h('strong', { text: 'Hi ' + ((C.saved && C.saved.name) || 'there') + '!' }),
        h('span', { text: 'Write your question below. An agent will join as soon as one is free.' })));
    }
    const notes = C.fresh ? [] : C.notes.slice();
    if (C.hasEarlier && !C.fresh) {
      nodes.push(h('button', {
        type: 'button',
        class: 'earlier',
        disabled: C.loadingEarlier,
        text: C.loadingEarlier ? 'Loading earlier messages…' : 'Show earlier messages',
        onclick: loadEarlierMessages,
      }));
    }
    for (const m of shown) {
      while (notes.length && !m.pending && notes[0].afterSeq < m.seq) {
        nodes.push(h('div', { class: 'event-note', text: notes.shift().text }));
      }
      nodes.push(messageView(m));
    }
    for (const n of notes) nodes.push(h('div', { class: 'event-note', text: n.text }));
    if (C.ended && !C.fresh) nodes.push(h('div', { class: 'event-note ended', text: 'Conversation ended' }));
    box.replaceChildren(...nodes);
    if (nearBottom || box.dataset.first !== '1') box.scrollTop = box.scrollHeight;
    box.dataset.first = '1';
    // Too few to scroll, yet more exist: fetch them now, as a scroll would.
    if (C.hasEarlier && !C.loadingEarlier && !C.fresh && box.scrollHeight <= box.clientHeight) {
      loadEarlierMessages();
    }
    for (const img of box.querySelectorAll('img')) {
      img.addEventListener('load', () => {
        box.scrollTop = box.scrollHeight;
      }, { once: true });
    }
  }

  /** Read the page before the oldest message shown, and show it in place. */
  async function loadEarlierMessages() {
    const before = firstSeq(C.messages);
    const id = C.conversationId;
    if (!C.hasEarlier || C.loadingEarlier || C.fresh || before === null || !id) return;
    C.loadingEarlier = true;
    renderMessages();
    try {
      const page = await loadEarlier(id, before, C.saved.token);
      if (C.conversationId === id) {
        for (const m of page.messages || []) upsertMessage(C.messages, m);
        C.hasEarlier = !!page.has_more;
      }
    } catch (e) {
      showComposerError('Earlier messages could not be loaded: ' + e.message);
    }
    C.loadingEarlier = false;
    keepScrollPlace($('#messages'), renderMessages);
  }

  function messageView(m) {
    const from = m.from || 'system';
    const cls = 'msg ' + from + (m.pending && !m.acked ? ' pending' : '') + (m.failed ? ' failed' : '');
    const bubble = h('div', { class: 'bubble' });
    if (m.text) bubble.appendChild(h('span', { class: 'text', text: m.text }));
    for (const a of m.attachments || []) bubble.appendChild(attachmentView(a, C.saved.token));
    const who = from === 'customer' ? 'You' : from === 'agent' ? (C.agentName || 'Agent') : '';
    const meta = h('div', { class: 'meta' }, who ? h('span', { text: who }) : null,
      h('span', { text: m.created_at ? clock(m.created_at) : '' }));
    if (m.failed) meta.appendChild(h('span', { class: 'status-failed', text: 'Not sent' + (m.error ? ': ' + m.error : '') }));
    else if (m.pending && !m.acked) meta.appendChild(h('span', { text: 'Sending…' }));
    return h('div', { class: cls }, bubble, meta);
  }

  function renderTyping() {
    const el = $('#typing');
    const on = C.typingUntil > Date.now() && !C.ended;
    const text = on ? (C.agentName || 'The agent') + ' is typing' : '';
    if (el.dataset.text !== text) {
      el.replaceChildren(on ? h('span', {}, text, h('span', { class: 'dots' })) : '');
      el.dataset.text = text;
    }
  }

  function showComposerError(text) {
    const box = $('#composer-error');
    box.hidden = !text;
    box.textContent = text || '';
  }

  // ---- Sending ------------------------------------------------------------------

  function onSend(ev) {
    if (ev) ev.preventDefault();
    const box = $('#text');
    const text = box.value.trim();
    if (C.files.some((f) => !f.meta)) return;
    const attachments = C.files.map((f) => f.meta);
    if (!text && !attachments.length) return;
    showComposerError(null);
    const clientMsgId = uid('c');
    const ref = uid('m');
    const payload = {
      type: 'message', text, attachments: attachments.map((a) => a.id), client_msg_id: clientMsgId, ref,
    };
    // Not connected yet (or reconnecting): keep it and send it once the socket
    // is open; it shows as "Sending…" meanwhile.
    if (!(C.socket && C.socket.send(payload))) C.outbox.push(payload);
    C.refs.set(ref, { kind: 'message', clientMsgId, text: box.value });
    upsertMessage(C.messages, {
      pending: true, sentAt: Date.now(), client_msg_id: clientMsgId, from: 'customer', text, attachments,
    });
    box.value = '';
    C.files = [];
    growText();
    render();
    $('#messages').scrollTop = $('#messages').scrollHeight;
  }

  async function onFiles(ev) {
    const files = Array.from(ev.target.files || []);
    ev.target.value = '';
    showComposerError(null);
    await Promise.all(files.map(async (file) => {
      const entry = { name: file.name, meta: null };
      C.files.push(entry);
      renderFileChips(C);
      try {
        entry.meta = await upload(file, C.saved.token);
      } catch (e) {
        C.files = C.files.filter((x) => x !== entry);
        showComposerError(file.name + ' cannot be sent. ' + sentence(e.message));
      }
      renderFileChips(C);
    }));
  }

  function onInput() {
    showComposerError(null);
    const now = Date.now();
    if (C.socket && C.conversationId && !C.ended && !C.fresh &&
        now - C.lastTypingSent > TYPING_SEND_EVERY_MS && $('#text').value.trim()) {
      C.lastTypingSent = now;
      C.socket.send({ type: 'typing' });
    }
  }

  function onRestart() {
    C.fresh = true;
    C.saved.cleared = C.conversationId;
    save();
    render();
    $('#text').focus();
  }

  function onLeave() {
    if (!C.socket || !C.socket.send({ type: 'leave', ref: uid('l') })) {
      showComposerError('Not connected right now; try again in a moment.');
    }
  }

  // ---- Embedding ----------------------------------------------------------------

  function tellParent(message) {
    if (embed && window.parent !== window) window.parent.postMessage(message, '*');
  }

  function onParentMessage(ev) {
    if (ev.source !== window.parent || !ev.data || typeof ev.data.type !== 'string') return;
    if (ev.data.type === 'switchboard:open') {
      C.panelOpen = true;
      C.unread = 0;
      tellParent({ type: 'switchboard:unread', count: 0 });
      const target = $('#chat').hidden ? $('#name') : $('#text');
      if (!target.closest('[hidden]')) target.focus();
    } else if (ev.data.type === 'switchboard:closed') {
      C.panelOpen = false;
    }
  }

  let growText = () => {};

  function init() {
    $('#chat-mark').appendChild(icon('chat'));
    $('#attach').appendChild(icon('clip'));
    $('#close').appendChild(icon('close'));
    if (embed) {
      document.body.classList.add('embed');
      $('#close').hidden = false;
      $('#close').addEventListener('click', () => tellParent({ type: 'switchboard:close' }));
      window.addEventListener('message', onParentMessage);
      document.addEventListener('keydown', (ev) => {
        if (ev.key === 'Escape') tellParent({ type: 'switchboard:close' });
      });
    }
    $('#name-form').addEventListener('submit', onStart);
    $('#composer').addEventListener('submit', onSend);
    growText = enterToSend($('#text'), () => onSend(null));
    $('#text').addEventListener('input', onInput);
    $('#attach').addEventListener('click', () => $('#file-input').click());
    $('#file-input').addEventListener('change', onFiles);
    $('#restart').addEventListener('click', onRestart);
    $('#leave').addEventListener('click', onLeave);
    onScrollToTop($('#messages'), loadEarlierMessages);
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden && !embed) {
        C.unread = 0;
        document.title = 'Chat with us';
      }
    });
    window.addEventListener('online', () => C.socket && C.socket.kick());
    setInterval(renderTyping, 1000);

    C.saved = store.get(KEY);
    if (C.saved && C.saved.token) connect();
    else showNameForm(null);
  }

  init();
})();

// Switchboard web pages: helpers shared by the desk, the webchat and the board.
// Plain browser JavaScript, no build step. Exposes one global: `SB`.
'use strict';

(function () {
  const SVG_NS = 'http://www.w3.org/2000/svg';

  // Icon paths (24x24 viewBox, stroked). Constant strings, never user data.
  const ICONS = {
    webchat: '<path d="M4 5h16v11H9l-5 4z"/><path d="M8 9.5h8M8 12.5h5"/>',
    sms: '<rect x="6" y="2.5" width="12" height="19" rx="2.5"/><path d="M10 18.5h4"/><path d="M9 7.5h6M9 10.5h4"/>',
    whatsapp: '<path d="M4 20l1.3-4A8 8 0 1 1 8 18.7z"/><path d="M9.2 8.6c.2-.6.6-.8 1-.7l.9 1.9-.7.8c.5 1.1 1.4 2 2.5 2.5l.8-.7 1.9.9c.1.4-.1.8-.7 1-2.9.6-6.2-2.7-5.7-5.7z"/>',
    messenger: '<path d="M12 3c-5 0-9 3.7-9 8.3 0 2.6 1.3 4.9 3.3 6.4V21l3-1.7c.9.3 1.8.4 2.7.4 5 0 9-3.7 9-8.4S17 3 12 3z"/><path d="M7.5 13.5l3-3.2 2.2 2 3.8-2.3-3 3.3-2.2-2z"/>',
    check: '<path d="M5 12.5l4.5 4.5L19 7.5"/>',
    close: '<path d="M6 6l12 12M18 6L6 18"/>',
    send: '<path d="M4 12l16-8-6 16-2.5-6.5z"/><path d="M11.5 13.5L20 4"/>',
    clip: '<path d="M20 11.5l-8.2 8.2a5 5 0 0 1-7.1-7.1l8.5-8.5a3.4 3.4 0 0 1 4.8 4.8l-8.4 8.4a1.7 1.7 0 0 1-2.4-2.4l7.6-7.6"/>',
    file: '<path d="M14 3H6.5A1.5 1.5 0 0 0 5 4.5v15A1.5 1.5 0 0 0 6.5 21h11a1.5 1.5 0 0 0 1.5-1.5V8z"/><path d="M14 3v5h5"/>',
    plus: '<path d="M12 5v14M5 12h14"/>',
    chat: '<path d="M4 5h16v11H9l-5 4z"/>',
    end: '<path d="M15 4h4v16h-4"/><path d="M10 16l-4-4 4-4M6 12h9"/>',
    bell: '<path d="M6 16V11a6 6 0 0 1 12 0v5l1.5 2h-15z"/><path d="M10 20.5a2 2 0 0 0 4 0"/>',
  };

  const CHANNEL_NAMES = {
    webchat: 'Webchat',
    sms: 'SMS',
    whatsapp: 'WhatsApp',
    messenger: 'Messenger',
  };

  /** An inline SVG icon. `label` makes it an image with that name; else it is decorative. */
  function icon(name, label) {
    const svg = document.createElementNS(SVG_NS, 'svg');
    svg.setAttribute('viewBox', '0 0 24 24');
    svg.setAttribute('class', 'icon icon-' + name);
    svg.setAttribute('fill', 'none');
    svg.setAttribute('stroke', 'currentColor');
    svg.setAttribute('stroke-width', '1.8');
    svg.setAttribute('stroke-linecap', 'round');
    svg.setAttribute('stroke-linejoin', 'round');
    if (label) {
      svg.setAttribute('role', 'img');
      svg.setAttribute('aria-label', label);
      const title = document.createElementNS(SVG_NS, 'title');
      title.textContent = label;
      svg.appendChild(title);
    } else {
      svg.setAttribute('aria-hidden', 'true');
      svg.setAttribute('focusable', 'false');
    }
    const g = document.createElementNS(SVG_NS, 'g');
    g.innerHTML = ICONS[name] || ICONS.chat;
    svg.appendChild(g);
    return svg;
  }

  /** A channel badge: the channel's icon, named for screen readers. */
  function channelIcon(channel) {
    const span = h('span', { class: 'channel channel-' + channel, title: channelName(channel) });
    span.appendChild(icon(channel in ICONS ? channel : 'chat', channelName(channel)));
    return span;
  }

  function channelName(channel) {
    return CHANNEL_NAMES[channel] || channel;
  }

  /**
   * Create an element. `attrs`: attributes, plus `on*` functions as listeners,
   * `class`, `dataset` (object) and `text`. Children: nodes or strings (text).
   */
  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith('on') && typeof value === 'function') {
        node.addEventListener(key.slice(2), value);
      } else if (key === 'dataset') {
        Object.assign(node.dataset, value);
      } else if (key === 'text') {
        node.textContent = value;
      } else if (value === true) {
        node.setAttribute(key, '');
      } else {
        node.setAttribute(key, String(value));
      }
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.appendChild(typeof child === 'string' ? document.createTextNode(child) : child);
    }
    return node;
  }

  function $(selector, root) {
    return (root || document).querySelector(selector);
  }

  /** "42s", "3m 05s", "1h 02m". */
  function duration(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return s + 's';
    const m = Math.floor(s / 60);
    if (m < 60) return m + 'm ' + String(s % 60).padStart(2, '0') + 's';
    return Math.floor(m / 60) + 'h ' + String(m % 60).padStart(2, '0') + 'm';
  }

  /** Local clock time, "14:05". */
  function clock(iso) {
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return '';
    return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  }

  function bytes(n) {
    if (n < 1024) return n + ' B';
    if (n < 1024 * 1024) return (n / 1024).toFixed(n < 10240 ? 1 : 0) + ' KB';
    return (n / (1024 * 1024)).toFixed(1) + ' MB';
  }

  /** A server message as a sentence: capital first letter, sizes readable, full stop. */
  function sentence(text) {
    let s = String(text || '').trim().replace(/\b(\d{4,}) bytes\b/g, (_, n) => bytes(Number(n)));
    if (!s) return s;
    s = s.charAt(0).toUpperCase() + s.slice(1);
    return /[.!?]$/.test(s) ? s : s + '.';
  }

  let counter = 0;
  /** A unique id for client_msg_id / ref. */
  function uid(prefix) {
    counter += 1;
    return prefix + '-' + Date.now().toString(36) + '-' + counter.toString(36) +
      Math.random().toString(36).slice(2, 6);
  }

  /** "follow_up" → "Follow up". */
  function humanize(code) {
    const s = String(code).replace(/_/g, ' ');
    return s.charAt(0).toUpperCase() + s.slice(1);
  }

  /** An error carrying the server's code and message. */
  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  /** Call the HTTP API with a bearer token; JSON in and out. Throws ApiError. */
  async function api(method, path, token, body, contentType) {
    return (await request(method, path, token, body, contentType)).json;
  }

  /** `api`, also handing back the response's headers: `{json, headers}`. */
  async function request(method, path, token, body, contentType) {
    const headers = {};
    if (token) headers.Authorization = 'Bearer ' + token;
    let payload;
    if (body instanceof Blob || body instanceof ArrayBuffer) {
      payload = body;
      headers['Content-Type'] = contentType || 'application/octet-stream';
    } else if (body !== undefined) {
      payload = JSON.stringify(body);
      headers['Content-Type'] = 'application/json';
    }
    let resp;
    try {
      resp = await fetch(path, { method, headers, body: payload, cache: 'no-store' });
    } catch (e) {
      throw new ApiError(0, 'network', 'The server cannot be reached. Check the connection and try again.');
    }
    const text = await resp.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch (e) {
      json = null;
    }
    if (!resp.ok) {
      const err = json && json.error ? json.error : {};
      throw new ApiError(resp.status, err.code || 'http_' + resp.status,
        err.message || ('The server answered ' + resp.status + '.'));
    }
    return { json, headers: resp.headers };
  }

  // ---- Earlier messages ------------------------------------------------------
  // A (re)connect replays only the newest messages (`has_earlier` /
  // `history_has_earlier` say more exist); the rest is read a page at a time,
  // newest first, with `before_seq`, when the reader scrolls to the top.

  const EARLIER_PAGE = 50;

  /** The page of messages just before `beforeSeq`: `{messages, has_more}`. */
  function loadEarlier(conversationId, beforeSeq, token) {
    const path = '/v1/conversations/' + encodeURIComponent(conversationId) +
      '/messages?before_seq=' + encodeURIComponent(beforeSeq) + '&limit=' + EARLIER_PAGE;
    return api('GET', path, token);
  }

  /** Run `change` (which re-renders `box`) keeping what the reader sees in place. */
  function keepScrollPlace(box, change) {
    const fromBottom = box.scrollHeight - box.scrollTop;
    change();
    box.scrollTop = box.scrollHeight - fromBottom;
  }

  /**
   * Call `more()` when `box` is scrolled to (near) its top, or when it does
   * not fill its space so it cannot be scrolled at all; `more` decides
   * whether there is anything to load.
   */
  function onScrollToTop(box, more) {
    box.addEventListener('scroll', () => {
      if (box.scrollTop < 40) more();
    }, { passive: true });
  }

  /** The oldest delivered `seq` of a message list, or null. */
  function firstSeq(list) {
    let seq = null;
    for (const m of list) if (!m.pending && m.seq !== undefined && (seq === null || m.seq < seq)) seq = m.seq;
    return seq;
  }

  /** Upload a File as an attachment; resolves to its metadata. */
  function upload(file, token) {
    const path = '/v1/attachments?filename=' + encodeURIComponent(file.name || 'file');
    return api('POST', path, token, file, file.type || 'application/octet-stream');
  }

  // Attachments need the bearer header, so they are fetched and shown through
  // blob: URLs, cached per attachment id for the page's life. The address is
  // always built from the id on this origin, so the token never goes elsewhere.
  const blobCache = new Map();
  function attachmentUrl(meta, token) {
    if (!blobCache.has(meta.id)) {
      const p = fetch('/v1/attachments/' + encodeURIComponent(meta.id), {
        headers: { Authorization: 'Bearer ' + token },
      }).then(async (resp) => {
        if (!resp.ok) throw new ApiError(resp.status, 'download', 'Download failed (' + resp.status + ').');
        return URL.createObjectURL(await resp.blob());
      });
      p.catch(() => blobCache.delete(meta.id));
      blobCache.set(meta.id, p);
    }
    return blobCache.get(meta.id);
  }

  function isImage(meta) {
    return /^image\/(png|jpe?g|gif|webp|bmp|avif)$/i.test(meta.content_type || '');
  }

  /** Render one attachment: a thumbnail for images, a file link otherwise. */
  function attachmentView(meta, token) {
    if (meta.error || !meta.id) {
      return h('div', { class: 'attachment attachment-error' }, icon('file'),
        h('span', { text: (meta.filename || 'file') + ': ' + (meta.error || 'not available') }));
    }
    const name = meta.filename || 'file';
    if (isImage(meta)) {
      const img = h('img', { class: 'thumb', alt: name, loading: 'lazy' });
      const link = h('a', { class: 'attachment attachment-image', href: '#', title: 'Open ' + name }, img);
      attachmentUrl(meta, token).then((url) => {
        img.src = url;
        link.href = url;
        link.target = '_blank';
        link.rel = 'noopener';
      }).catch((e) => {
        link.replaceWith(h('div', { class: 'attachment attachment-error' }, icon('file'),
          h('span', { text: name + ': ' + e.message })));
      });
      return link;
    }
    const link = h('a', { class: 'attachment attachment-file', href: '#', download: name },
      icon('file'), h('span', { class: 'file-name', text: name }),
      h('span', { class: 'file-size', text: bytes(meta.size || 0) }));
    link.addEventListener('click', async (ev) => {
      if (link.dataset.ready) return;
      ev.preventDefault();
      try {
        link.href = await attachmentUrl(meta, token);
        link.dataset.ready = '1';
        link.click();
      } catch (e) {
        toast(name + ': ' + e.message, 'error');
      }
    });
    return link;
  }

  /** Message list order: by seq, pending (no seq yet) last in send order. */
  function upsertMessage(list, msg) {
    if (msg.client_msg_id) {
      const i = list.findIndex((m) => m.pending && m.client_msg_id === msg.client_msg_id);
      if (i >= 0) list.splice(i, 1);
    }
    if (msg.seq !== undefined && list.some((m) => m.seq === msg.seq && !m.pending)) {
      const i = list.findIndex((m) => m.seq === msg.seq && !m.pending);
      list[i] = msg;
      return false;
    }
    list.push(msg);
    list.sort((a, b) => {
      if (a.pending !== b.pending) return a.pending ? 1 : -1;
      if (a.pending) return a.sentAt - b.sentAt;
      return a.seq - b.seq;
    });
    return true;
  }

  /** A short notice in the corner; errors stay longer. */
  function toast(text, kind) {
    let host = $('#toasts');
    if (!host) {
      host = h('div', { id: 'toasts', class: 'toasts', role: 'status', 'aria-live': 'polite' });
      document.body.appendChild(host);
    }
    const item = h('div', { class: 'toast toast-' + (kind || 'info') }, h('span', { text }));
    const close = h('button', { type: 'button', class: 'icon-button', 'aria-label': 'Dismiss' }, icon('close'));
    close.addEventListener('click', () => item.remove());
    item.appendChild(close);
    host.appendChild(item);
    setTimeout(() => item.remove(), kind === 'error' ? 9000 : 5000);
  }

  /**
   * A WebSocket that reconnects by itself with backoff: the wait doubles
   * from 0.5 s to at most 10 s, and each wait is drawn at random between
   * half of it and all of it, so that thousands of pages cut off at once
   * (a network blip, a broker restart) do not all come back in the same
   * instant.
   * `url()` is asked on every attempt. Handlers: onopen, onmessage(obj),
   * onstatus('connecting'|'open'|'closed'), onfatal(event) for a close that
   * should not be retried (the `shouldRetry(event)` hook decides).
   */
  class Socket {
    constructor(url, handlers) {
      this.url = url;
      this.handlers = handlers;
      this.ws = null;
      this.delay = 500;
      this.stopped = false;
      this.timer = null;
      this.connect();
    }

    connect() {
      if (this.stopped) return;
      this.status('connecting');
      let ws;
      try {
        ws = new WebSocket(this.url());
      } catch (e) {
        this.retry();
        return;
      }
      this.ws = ws;
      ws.onopen = () => {
        this.delay = 500;
        this.status('open');
        if (this.handlers.onopen) this.handlers.onopen();
      };
      ws.onmessage = (ev) => {
        let msg;
        try {
          msg = JSON.parse(ev.data);
        } catch (e) {
          return;
        }
        this.handlers.onmessage(msg);
      };
      ws.onclose = (ev) => {
        if (this.ws !== ws) return;
        this.ws = null;
        if (this.stopped) return;
        if (this.handlers.shouldRetry && !this.handlers.shouldRetry(ev)) {
          this.status('closed');
          if (this.handlers.onfatal) this.handlers.onfatal(ev);
          return;
        }
        this.retry();
      };
    }

    retry() {
      this.status('closed');
      clearTimeout(this.timer);
      const wait = this.delay / 2 + Math.random() * (this.delay / 2);
      this.timer = setTimeout(() => this.connect(), wait);
      this.delay = Math.min(this.delay * 2, 10000);
    }

    status(s) {
      if (this.handlers.onstatus) this.handlers.onstatus(s);
    }

    /** Send a command; false when not connected. */
    send(obj) {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
      this.ws.send(JSON.stringify(obj));
      return true;
    }

    get open() {
      return !!this.ws && this.ws.readyState === WebSocket.OPEN;
    }

    /** Reconnect now (e.g. when the browser says it is online again). */
    kick() {
      if (this.stopped || this.open) return;
      clearTimeout(this.timer);
      this.delay = 500;
      if (this.ws) {
        this.ws.onclose = null;
        this.ws.close();
        this.ws = null;
      }
      this.connect();
    }

    close() {
      this.stopped = true;
      clearTimeout(this.timer);
      if (this.ws) this.ws.close(1000, 'bye');
      this.ws = null;
    }
  }

  function wsUrl(path) {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return proto + '//' + location.host + path;
  }

  /** Local storage that survives a browser refusing it (private modes). */
  const store = {
    get(key) {
      try {
        const v = localStorage.getItem(key);
        return v ? JSON.parse(v) : null;
      } catch (e) {
        return null;
      }
    },
    set(key, value) {
      try {
        if (value === null || value === undefined) localStorage.removeItem(key);
        else localStorage.setItem(key, JSON.stringify(value));
      } catch (e) {
        // Storage refused: the page works, it just forgets on reload.
      }
    },
  };

  const session = {
    get(key) {
      try {
        const v = sessionStorage.getItem(key);
        return v ? JSON.parse(v) : null;
      } catch (e) {
        return null;
      }
    },
    set(key, value) {
      try {
        if (value === null || value === undefined) sessionStorage.removeItem(key);
        else sessionStorage.setItem(key, JSON.stringify(value));
      } catch (e) {
        // As above.
      }
    },
  };

  /**
   * Composer keys: Enter sends, Shift+Enter (or while composing with an IME)
   * inserts a new line.
   */
  function enterToSend(textarea, send) {
    textarea.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing && !ev.altKey && !ev.ctrlKey && !ev.metaKey) {
        ev.preventDefault();
        send();
      }
    });
    // Grow with the text, up to the CSS max-height.
    const grow = () => {
      textarea.style.height = 'auto';
      textarea.style.height = Math.min(textarea.scrollHeight + 2, 180) + 'px';
    };
    textarea.addEventListener('input', grow);
    return grow;
  }

  /**
   * The composer's pending files: a chip per file, "uploading…" until its
   * upload is done, then a remove button. `holder.files` is the list; Send is
   * disabled while any upload runs.
   */
  function renderFileChips(holder) {
    $('#pending-files').replaceChildren(...holder.files.map((f) => {
      const chip = h('span', { class: 'chip' + (f.meta ? '' : ' uploading') },
        icon('file'), h('span', { text: f.name + (f.meta ? '' : ' (uploading…)') }));
      if (f.meta) {
        chip.appendChild(h('button', {
          type: 'button', class: 'icon-button', 'aria-label': 'Remove ' + f.name,
          onclick: () => {
            holder.files = holder.files.filter((x) => x !== f);
            renderFileChips(holder);
          },
        }, icon('close')));
      }
      return chip;
    }));
    $('#send').disabled = holder.files.some((f) => !f.meta);
  }

  window.SB = {
    renderFileChips, icon, channelIcon, channelName, h, $, duration, clock, bytes, uid, humanize,
    api, request, upload, attachmentUrl, attachmentView, isImage, upsertMessage, toast, sentence,
    Socket, wsUrl, store, session, enterToSend, ApiError, CHANNEL_NAMES,
    loadEarlier, keepScrollPlace, onScrollToTop, firstSeq,
  };
})();

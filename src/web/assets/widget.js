// Switchboard webchat widget. Put one tag on any page:
//   <script src="https://your-broker/chat/widget.js" async></script>
// It adds a floating chat button (in a shadow root, so the page's CSS and the
// widget's never mix) that opens the broker's /chat page in a framed panel.
// Optional attributes on the tag: data-title="Support" (button label),
// data-color="#2d5fb8" (button colour), data-open="true" (start open),
// data-context='…' and data-context-signature="…" (a pre-chat context your
// backend signed, passed on to the broker unchanged: docs/security.md).
// data-queue="billing" (the queue its chats wait in; default: `default`).
(function () {
  'use strict';
  var script = document.currentScript;
  if (!script || window.__switchboardWidget) return;
  window.__switchboardWidget = true;

  var origin = new URL(script.src, location.href).origin;
  var title = script.getAttribute('data-title') || 'Chat with us';
  var color = script.getAttribute('data-color') || '#2d5fb8';
  if (!/^#[0-9a-fA-F]{3,8}$/.test(color)) color = '#2d5fb8';
  var startOpen = script.getAttribute('data-open') === 'true';
  var context = script.getAttribute('data-context');
  var contextSignature = script.getAttribute('data-context-signature');
  var queue = script.getAttribute('data-queue') || '';

  var host = document.createElement('div');
  host.setAttribute('data-switchboard-widget', '');
  var root = host.attachShadow({ mode: 'open' });

  var style = document.createElement('style');
  style.textContent = [
    ':host { all: initial; }',
    '.sbw-button { position: fixed; right: 20px; bottom: 20px; z-index: 2147483646;',
    '  display: inline-flex; align-items: center; gap: 8px; height: 52px; padding: 0 20px 0 16px;',
    '  border: 0; border-radius: 26px; background: ' + color + '; color: #fff; cursor: pointer;',
    '  font: 600 15px/1 -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, Arial, "Liberation Sans", sans-serif;',
    '  box-shadow: 0 6px 20px rgba(16, 24, 40, .25); }',
    '.sbw-button:hover { filter: brightness(1.08); }',
    '.sbw-button:focus-visible { outline: 3px solid #9bb7ea; outline-offset: 3px; }',
    '.sbw-button svg { width: 22px; height: 22px; }',
    '.sbw-badge { min-width: 20px; height: 20px; padding: 0 6px; border-radius: 10px; background: #fff;',
    '  color: ' + color + '; font-size: 12px; display: inline-flex; align-items: center; justify-content: center; }',
    '.sbw-panel { position: fixed; right: 20px; bottom: 84px; z-index: 2147483647;',
    '  width: 380px; height: min(600px, calc(100vh - 110px)); border-radius: 16px; overflow: hidden;',
    '  background: #fff; box-shadow: 0 16px 48px rgba(16, 24, 40, .28); border: 1px solid #e1e4e9; }',
    '.sbw-panel iframe { width: 100%; height: 100%; border: 0; display: block; }',
    '[hidden] { display: none !important; }',
    '@media (max-width: 480px) { .sbw-panel { right: 0; bottom: 0; width: 100vw; height: 100vh; border-radius: 0; } }',
  ].join('\n');
  root.appendChild(style);

  var panel = document.createElement('div');
  panel.className = 'sbw-panel';
  panel.id = 'sbw-panel';
  panel.hidden = true;
  panel.setAttribute('role', 'dialog');
  panel.setAttribute('aria-label', title);
  var frame = null;

  var button = document.createElement('button');
  button.type = 'button';
  button.className = 'sbw-button';
  button.setAttribute('aria-expanded', 'false');
  button.setAttribute('aria-controls', 'sbw-panel');
  button.innerHTML = '<svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2" ' +
    'stroke-linejoin="round" aria-hidden="true"><path d="M4 5h16v11H9l-5 4z"/></svg>';
  var label = document.createElement('span');
  label.textContent = title;
  button.appendChild(label);
  var badge = document.createElement('span');
  badge.className = 'sbw-badge';
  badge.hidden = true;
  button.appendChild(badge);

  function ensureFrame() {
    if (frame) return;
    frame = document.createElement('iframe');
    var query = new URLSearchParams({ embed: '1' });
    if (context && contextSignature) {
      query.set('context', context);
      query.set('context_signature', contextSignature);
    }
    if (queue) query.set('queue', queue);
    frame.src = origin + '/chat?' + query.toString();
    frame.title = title;
    frame.setAttribute('allow', 'clipboard-write');
    panel.appendChild(frame);
  }

  function post(message) {
    if (frame && frame.contentWindow) frame.contentWindow.postMessage(message, origin);
  }

  function open() {
    ensureFrame();
    panel.hidden = false;
    button.setAttribute('aria-expanded', 'true');
    button.removeAttribute('aria-label');
    badge.hidden = true;
    post({ type: 'switchboard:open' });
    frame.focus();
  }

  function close() {
    panel.hidden = true;
    button.setAttribute('aria-expanded', 'false');
    post({ type: 'switchboard:closed' });
    button.focus();
  }

  button.addEventListener('click', function () {
    if (panel.hidden) open();
    else close();
  });

  window.addEventListener('message', function (ev) {
    if (ev.origin !== origin || !frame || ev.source !== frame.contentWindow) return;
    var data = ev.data || {};
    if (data.type === 'switchboard:close') close();
    if (data.type === 'switchboard:unread') {
      var n = Number(data.count) || 0;
      badge.textContent = String(n);
      badge.hidden = n === 0 || !panel.hidden;
      if (n && panel.hidden) button.setAttribute('aria-label', title + ', ' + n + ' new');
      else button.removeAttribute('aria-label');
    }
  });

  // The frame only says it is ready by loading: tell it whether it is shown.
  function onFrameLoad() {
    post({ type: panel.hidden ? 'switchboard:closed' : 'switchboard:open' });
  }

  root.appendChild(panel);
  root.appendChild(button);

  function mount() {
    document.body.appendChild(host);
    // Load the conversation in the background so history and unread counts
    // are there before the visitor opens the panel.
    ensureFrame();
    frame.addEventListener('load', onFrameLoad);
    if (startOpen) open();
  }

  if (document.body) mount();
  else document.addEventListener('DOMContentLoaded', mount);
})();

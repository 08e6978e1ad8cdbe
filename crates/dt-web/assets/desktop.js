// devtrust web UI: a desktop in a canvas. The protocol (docs/desktops.md) is binary over
// one WebSocket to the auth service, which relays it to the desktop access point.
// Loaded after app.js (loadMe, renderHeader, text, $ come from there).
'use strict';

const DESKTOP_KEYSYMS = {
  Backspace: 0xff08, Tab: 0xff09, Enter: 0xff0d, Escape: 0xff1b, Delete: 0xffff,
  Home: 0xff50, ArrowLeft: 0xff51, ArrowUp: 0xff52, ArrowRight: 0xff53, ArrowDown: 0xff54,
  PageUp: 0xff55, PageDown: 0xff56, End: 0xff57, Insert: 0xff63,
  Shift: 0xffe1, Control: 0xffe3, Alt: 0xffe9, Meta: 0xffe7, CapsLock: 0xffe5,
  F1: 0xffbe, F2: 0xffbf, F3: 0xffc0, F4: 0xffc1, F5: 0xffc2, F6: 0xffc3,
  F7: 0xffc4, F8: 0xffc5, F9: 0xffc6, F10: 0xffc7, F11: 0xffc8, F12: 0xffc9,
};

// X keysym of a KeyboardEvent.key: named keys from the table, Latin-1 characters are their
// own keysym, other Unicode characters 0x01000000 + code point (X11 keysymdef.h).
function keysymOf(key) {
  if (DESKTOP_KEYSYMS[key]) return DESKTOP_KEYSYMS[key];
  const chars = Array.from(key);
  if (chars.length !== 1) return 0;
  const cp = chars[0].codePointAt(0);
  if (cp >= 0x20 && cp <= 0xff) return cp;
  if (cp > 0xff) return 0x01000000 + cp;
  return 0;
}

function u16(v) { return [(v >> 8) & 0xff, v & 0xff]; }

function keyMsg(keysym, down) {
  return new Uint8Array([0x02, down ? 1 : 0, (keysym >>> 24) & 0xff, (keysym >>> 16) & 0xff, (keysym >>> 8) & 0xff, keysym & 0xff]);
}

function pointerMsg(x, y, buttons) {
  return new Uint8Array([0x03, ...u16(x), ...u16(y), buttons & 0x1f]);
}

async function desktopPage() {
  const me = await loadMe();
  if (!me) return;
  renderHeader(me);
  const q = new URLSearchParams(window.location.search);
  const desktop = q.get('desktop') || '';
  const login = q.get('login') || '';
  text($('#desktop-title'), login + ' on ' + desktop);
  const status = $('#desktop-status');
  const canvas = $('#desktop-canvas');
  const ctx = canvas.getContext('2d');
  const width = Math.max(320, Math.min(4096, Number(q.get('width')) || 1024));
  const height = Math.max(320, Math.min(4096, Number(q.get('height')) || 768));
  const params = new URLSearchParams({ desktop, login, csrf: me.csrf_token, width, height });
  const ws = new WebSocket('wss://' + window.location.host + '/web/api/desktop?' + params);
  ws.binaryType = 'arraybuffer';
  document.body.dataset.desktop = 'connecting';
  document.body.dataset.frames = '0';
  let draw = Promise.resolve();
  let frames = 0;
  let ended = false;

  const finish = (reason, message) => {
    ended = true;
    text(status, message);
    status.className = reason === 0 ? 'muted' : 'error';
    document.body.dataset.desktop = 'ended';
    document.body.dataset.endReason = ['ended', 'denied', 'terminated', 'error'][reason] || 'error';
  };

  ws.addEventListener('message', (ev) => {
    const b = new Uint8Array(ev.data);
    const dv = new DataView(ev.data);
    switch (b[0]) {
      case 0x81: // Hello
        canvas.width = dv.getUint16(1);
        canvas.height = dv.getUint16(3);
        text(status, 'Connected: ' + canvas.width + 'x' + canvas.height);
        document.body.dataset.desktop = 'open';
        canvas.focus();
        break;
      case 0x82: { // Tile
        const x = dv.getUint16(1), y = dv.getUint16(3);
        const blob = new Blob([b.subarray(9)], { type: 'image/png' });
        draw = draw.then(() => createImageBitmap(blob)).then((img) => { ctx.drawImage(img, x, y); img.close(); })
          .catch(() => {});
        break;
      }
      case 0x83: // FrameEnd
        draw = draw.then(() => { frames += 1; document.body.dataset.frames = String(frames); });
        break;
      case 0x84: // Clipboard
        break;
      case 0x85: // End
        finish(b[1], new TextDecoder().decode(b.subarray(2)));
        break;
      default:
        break;
    }
  });
  ws.addEventListener('close', () => {
    if (!ended) finish(0, 'The desktop session ended.');
  });

  const send = (m) => { if (ws.readyState === WebSocket.OPEN) ws.send(m); };
  canvas.addEventListener('keydown', (ev) => {
    const sym = keysymOf(ev.key);
    if (!sym) return;
    ev.preventDefault();
    send(keyMsg(sym, true));
  });
  canvas.addEventListener('keyup', (ev) => {
    const sym = keysymOf(ev.key);
    if (!sym) return;
    ev.preventDefault();
    send(keyMsg(sym, false));
  });
  // Browser buttons (1 left, 2 right, 4 middle) to X buttons (1 left, 2 middle, 3 right).
  const xButtons = (b) => (b & 1) | ((b & 4) ? 2 : 0) | ((b & 2) ? 4 : 0);
  const at = (ev) => {
    const r = canvas.getBoundingClientRect();
    return [
      Math.max(0, Math.round((ev.clientX - r.left) * canvas.width / r.width)),
      Math.max(0, Math.round((ev.clientY - r.top) * canvas.height / r.height)),
    ];
  };
  let held = 0;
  for (const type of ['mousemove', 'mousedown', 'mouseup']) {
    canvas.addEventListener(type, (ev) => {
      held = xButtons(ev.buttons);
      const [x, y] = at(ev);
      send(pointerMsg(x, y, held));
      if (type === 'mousedown') canvas.focus();
    });
  }
  canvas.addEventListener('wheel', (ev) => {
    ev.preventDefault();
    const [x, y] = at(ev);
    const bit = ev.deltaY < 0 ? 8 : 16; // X buttons 4 (up) and 5 (down)
    send(pointerMsg(x, y, held | bit));
    send(pointerMsg(x, y, held));
  }, { passive: false });
  canvas.addEventListener('contextmenu', (ev) => ev.preventDefault());
}

document.addEventListener('DOMContentLoaded', () => {
  if (document.body.dataset.page === 'desktop') Promise.resolve().then(desktopPage).catch(fail);
});

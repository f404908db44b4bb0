"""The WhatsApp Web page contract, as data: selectors, texts and the injected watcher.

When WhatsApp Web changes its markup, this is the one file to edit. The bundled
simulator (``wa_daemon.sim``) follows the same contract, so both are read by
the same code.
"""

from __future__ import annotations

import json
from typing import Final

SELECTORS: Final[dict[str, str]] = {
    # The login QR: the ref to encode is the attribute's value.
    "qr": "div[data-ref]",
    # Shown in place of the QR once a cycle of refs has run out.
    "qr_reload": "div[data-ref] > span > button",
    # Any of these means the logged-in app is on screen.
    "app": "#pane-side",
    "app_search": '[data-icon="search"]',
    # The loading screen between a scan (or a restored login) and the app.
    "progress": "progress",
    # Conflict: "Use here" takes the session back.
    "use_here": 'div[role="button"]',
    # Logging out from the page: the menu, then its "Log out" entry.
    "menu": 'div[role="button"][aria-label="Menu"]',
    "logout": 'div[role="button"][aria-label="Log out"]',
}

TEXTS: Final[dict[str, str]] = {
    "conflict": "WhatsApp is open in another window",
    "use_here": "Use here",
    "offline": "Trying to reach phone",
    "headless_blocked": "update your browser",
}

# A phone-side logout sends the page to a URL carrying this.
POST_LOGOUT_MARKER: Final = "post_logout=1"

# The binding the page calls with its observations.
BINDING: Final = "__waDaemonReport"


def watcher_script() -> str:
    """JavaScript run in every document before the page's own scripts.

    A MutationObserver (no polling) recomputes a small snapshot of what the page
    shows and reports it only when it changed, so an idle page costs nothing.
    """
    return _WATCHER.replace("__SELECTORS__", json.dumps(SELECTORS)).replace(
        "__TEXTS__", json.dumps(TEXTS)
    ).replace("__BINDING__", BINDING)


# A function expression: pyppeteer's evaluateOnNewDocument calls it as "(fn)()".
_WATCHER = r"""
() => {
  if (window.__waDaemonWatcher) return;
  window.__waDaemonWatcher = true;
  const S = __SELECTORS__;
  const T = __TEXTS__;
  let last = "";
  const textOf = () => (document.body ? document.body.innerText || "" : "");
  const snapshot = () => {
    const qr = document.querySelector(S.qr);
    const progress = document.querySelector(S.progress);
    const text = textOf();
    let percent = null;
    if (progress) {
      const v = Number(progress.getAttribute("value"));
      const max = Number(progress.getAttribute("max") || 100);
      percent = Number.isFinite(v) && max > 0 ? Math.round((100 * v) / max) : null;
    }
    return {
      ref: qr && !document.querySelector(S.qr_reload) ? qr.getAttribute("data-ref") || null : null,
      reload: !!document.querySelector(S.qr_reload),
      loading: !!progress,
      percent: percent,
      app: !!(document.querySelector(S.app) || document.querySelector(S.app_search)),
      conflict: text.includes(T.conflict),
      offline: text.includes(T.offline),
      blocked: text.toLowerCase().includes(T.headless_blocked) && !document.querySelector(S.qr),
      url: location.href,
    };
  };
  const report = () => {
    const snap = snapshot();
    const key = JSON.stringify(snap);
    if (key === last) return;
    last = key;
    const send = window["__BINDING__"];
    if (typeof send === "function") send(key);
  };
  const start = () => {
    new MutationObserver(report).observe(document.documentElement, {
      subtree: true, childList: true, attributes: true, characterData: true,
    });
    report();
  };
  if (document.documentElement) start();
  else document.addEventListener("DOMContentLoaded", start);
}
"""

# Clicks run inside the page: one round trip, and no stale element handles.
CLICK_RELOAD: Final = f"() => {{ const b = document.querySelector({json.dumps(SELECTORS['qr_reload'])}); if (b) b.click(); return !!b; }}"
CLICK_USE_HERE: Final = (
    "() => { for (const b of document.querySelectorAll("
    + json.dumps(SELECTORS["use_here"])
    + ")) { if ((b.innerText || '').trim() === "
    + json.dumps(TEXTS["use_here"])
    + ") { b.click(); return true; } } return false; }"
)

CLICK_LOGOUT: Final = (
    "async () => { const menu = document.querySelector("
    + json.dumps(SELECTORS["menu"])
    + "); if (menu) { menu.click(); await new Promise(r => setTimeout(r, 100)); }"
    " const item = document.querySelector("
    + json.dumps(SELECTORS["logout"])
    + "); if (item) item.click(); return !!item; }"
)


def desktop_user_agent(chrome_version: str) -> str:
    """A normal desktop Chrome UA: WhatsApp refuses one that says HeadlessChrome."""
    major = chrome_version.split(".")[0] or "130"
    return (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        f"Chrome/{major}.0.0.0 Safari/537.36"
    )

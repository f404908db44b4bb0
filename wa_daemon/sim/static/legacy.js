// The legacy simulated WhatsApp Web page (--page legacy): DOM only, div[data-ref], English.
// The server decides everything (refs, their rotation, linking, faults) and pushes the
// whole view over Server-Sent Events; this script only renders it, keeps the login
// (IndexedDB and localStorage), and reports clicks.
"use strict";

(function () {
  const AUTH_KEY = "wa-sim-auth";
  const QUIET_ZONE = 4; // modules of white around the code, as the QR spec asks
  const QR_PIXELS = 264; // the size WhatsApp Web draws its QR at

  let pageId = null;
  let version = -1;
  let screen = null;

  const app = document.getElementById("app");

  function loadAuth() {
    try {
      const auth = JSON.parse(localStorage.getItem(AUTH_KEY) || "null");
      return auth && typeof auth.token === "string" ? auth : null;
    } catch (e) {
      return null;
    }
  }

  // The login also lives in IndexedDB, as WhatsApp Web keeps it: Chromium writes an
  // IndexedDB transaction through to disk when it commits, where localStorage is
  // flushed seconds later, so a browser killed right after linking keeps its login.
  function idb(mode, work) {
    return new Promise(function (resolve) {
      let request;
      try {
        request = indexedDB.open("wa-sim", 1);
      } catch (e) {
        resolve(null);
        return;
      }
      request.onupgradeneeded = function () {
        request.result.createObjectStore("auth");
      };
      request.onerror = function () { resolve(null); };
      request.onsuccess = function () {
        const db = request.result;
        const tx = db.transaction("auth", mode);
        const result = work(tx.objectStore("auth"));
        tx.oncomplete = function () {
          db.close();
          resolve(result && "result" in result ? result.result : null);
        };
        tx.onerror = tx.onabort = function () { db.close(); resolve(null); };
      };
    });
  }

  function saveAuth(auth) {
    localStorage.setItem(AUTH_KEY, JSON.stringify(auth));
    idb("readwrite", function (store) { store.put(auth, AUTH_KEY); });
  }

  function clearAuth() {
    localStorage.removeItem(AUTH_KEY);
    idb("readwrite", function (store) { store.delete(AUTH_KEY); });
  }

  async function restoreAuth() {
    const stored = await idb("readonly", function (store) { return store.get(AUTH_KEY); });
    return stored && typeof stored.token === "string" ? stored : loadAuth();
  }

  function post(path, body) {
    return fetch(path, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body || {}),
    });
  }

  function action(name) {
    if (pageId !== null) post("/__sim__/pages/" + pageId + "/" + name);
  }

  function clone(id) {
    return document.getElementById(id).content.firstElementChild.cloneNode(true);
  }

  function show(id, name) {
    // Screens are replaced only when the screen changes: a driver observing
    // div[data-ref] (or its parent) must see one element whose attribute changes
    // on each new ref, as on WhatsApp Web.
    if (screen === name) return app.firstElementChild;
    app.replaceChildren(clone(id));
    screen = name;
    return app.firstElementChild;
  }

  function drawQr(canvas, rows) {
    const n = rows.length + 2 * QUIET_ZONE;
    const scale = Math.max(1, Math.floor(QR_PIXELS / n));
    canvas.width = canvas.height = n * scale;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.fillStyle = "#000";
    rows.forEach(function (row, y) {
      for (let x = 0; x < row.length; x++) {
        if (row[x] === "1") ctx.fillRect((x + QUIET_ZONE) * scale, (y + QUIET_ZONE) * scale, scale, scale);
      }
    });
  }

  function renderLanding(view) {
    const root = show("tpl-landing", "landing");
    const holder = root.querySelector("div[data-ref]");
    const canvas = holder.querySelector("canvas");
    const button = holder.querySelector(":scope > span");
    if (view.screen === "qr") {
      if (button) button.remove();
      holder.classList.remove("expired");
      if (holder.getAttribute("data-ref") !== view.ref) {
        drawQr(canvas, view.qr);
        holder.setAttribute("data-ref", view.ref);
      }
    } else if (!button) {
      // Expired: the last ref stays in data-ref, dimmed, with the reload button over it.
      holder.classList.add("expired");
      const reload = clone("tpl-reload");
      reload.querySelector("button").addEventListener("click", function () {
        action("reload");
      });
      holder.appendChild(reload);
    }
  }

  function renderApp(view) {
    const root = show("tpl-app", "app");
    if (!root.dataset.wired) {
      root.dataset.wired = "1";
      const menu = root.querySelector(".menu");
      root.querySelector('[data-sim-action="menu"]').addEventListener("click", function () {
        menu.hidden = !menu.hidden;
      });
      root.querySelector('[data-sim-action="logout"]').addEventListener("click", function () {
        action("logout");
      });
    }
    const banners = root.querySelector(".banners");
    const banner = banners.querySelector('[data-sim-banner="offline"]');
    if (view.offline && !banner) banners.appendChild(clone("tpl-offline"));
    if (!view.offline && banner) banner.remove();
  }

  function render(view) {
    if (view.version <= version) return;
    version = view.version;
    if (view.clear_auth) clearAuth();
    if (view.auth) saveAuth(view.auth);
    switch (view.screen) {
      case "qr":
      case "reload":
        renderLanding(view);
        break;
      case "loading": {
        const root = show("tpl-loading", "loading");
        root.querySelector("progress").value = view.percent || 0;
        break;
      }
      case "app":
        renderApp(view);
        break;
      case "conflict": {
        const root = show("tpl-conflict", "conflict");
        if (!root.dataset.wired) {
          root.dataset.wired = "1";
          root.querySelector('[data-sim-action="use-here"]').addEventListener("click", function () {
            action("take-over");
          });
        }
        break;
      }
      case "logged_out":
        // As WhatsApp Web does after the phone unlinks it: a fresh load that shows a new QR.
        location.replace("/?post_logout=1");
        return;
    }
    if (view.hung) {
      // The renderer stops responding: evaluate calls time out, clicks go nowhere.
      for (;;) {}
    }
  }

  async function start() {
    const auth = await restoreAuth();
    const response = await post("/__sim__/pages", { token: auth ? auth.token : null });
    const opened = await response.json();
    pageId = opened.page;
    render(opened.view);
    const events = new EventSource("/__sim__/pages/" + pageId + "/events");
    events.addEventListener("view", function (event) {
      render(JSON.parse(event.data));
    });
    events.onerror = function () {
      // EventSource retries by itself after a network error; CLOSED means the server
      // forgot this page (closed after a long disconnect, or restarted): load anew.
      if (events.readyState === EventSource.CLOSED) setTimeout(function () { location.reload(); }, 2000);
    };
  }

  start().catch(function () {
    setTimeout(function () { location.reload(); }, 2000);
  });
})();

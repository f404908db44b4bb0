// The simulated WhatsApp Web page with the real page's module layer (--page modules).
//
// Drivers of the real page (whatsapp-web.js, wa-js) read WhatsApp Web's own modules
// through Meta's `require`, not the DOM: this page offers the same ids, exports,
// attributes and events (docs/simulator.md, "The module page"). The server still
// decides everything and pushes the whole view over Server-Sent Events; this script
// mirrors the view into the models, fires their events in the real page's order,
// renders the screens in the page's language, and keeps the login (IndexedDB and
// localStorage, as the legacy page).
"use strict";

(function () {
  const script = document.currentScript;
  const WEB_VERSION = script.dataset.webVersion;
  const DROPPED = (script.dataset.dropModules || "").split(",").filter(Boolean);
  const DEVICE_PLATFORM = script.dataset.platform;
  const WEIGHT = script.dataset.weight || "light";
  const AUTH_KEY = "wa-sim-auth";
  const QUIET_ZONE = 4; // modules of white around the code, as the QR spec asks
  const QR_PIXELS = 264; // the size WhatsApp Web draws its QR at
  const LOGOUT_RELOAD_MS = 300; // the real page reloads to /?post_logout=1 about this long after a logout
  const UNPAIRED = ["UNPAIRED", "UNPAIRED_IDLE"];

  // Every visible text, by <html lang>. Nothing of the module contract depends on it.
  const TEXTS = {
    en: {
      title: "Use WhatsApp on your computer",
      steps: [
        "Open WhatsApp on your phone",
        "Tap Menu or Settings and select Linked devices",
        "Tap on Link a device",
        "Point your phone to this screen to capture the QR code",
      ],
      qrLabel: "Scan this QR code to link a device!",
      reload: "Click to reload QR code",
      simNote: "Simulator: POST this QR's text to /__sim__/scan to link.",
      codeTitle: "Enter code on phone",
      codeSteps: [
        "Open WhatsApp on your phone",
        "Tap Menu or Settings and select Linked devices",
        "Tap Link a device",
        "Tap Link with phone number instead and enter this code on your phone",
      ],
      codeLabel: "Linking code",
      codeExpired: "This code has expired.",
      newCode: "Get a new code",
      loading: "Loading your chats",
      menu: "Menu",
      logout: "Log out",
      search: "Search or start new chat",
      chatList: "Chat list",
      chat: "Simulator",
      linked: "Linked to the WhatsApp Web simulator.",
      offlineTitle: "Trying to reach phone",
      offlineText: "Make sure your phone has an active Internet connection.",
      conflict: 'WhatsApp is open in another window. Click "Use here" to use WhatsApp in this window.',
      useHere: "Use here",
    },
    de: {
      title: "WhatsApp auf deinem Computer verwenden",
      steps: [
        "Öffne WhatsApp auf deinem Telefon",
        "Tippe auf Menü oder Einstellungen und wähle Verknüpfte Geräte aus",
        "Tippe auf Gerät hinzufügen",
        "Richte dein Telefon auf diesen Bildschirm, um den QR-Code zu scannen",
      ],
      qrLabel: "Scanne diesen QR-Code, um ein Gerät zu verknüpfen!",
      reload: "Klicke, um den QR-Code neu zu laden",
      simNote: "Simulator: Sende den Text dieses QR-Codes per POST an /__sim__/scan, um zu verknüpfen.",
      codeTitle: "Code auf dem Telefon eingeben",
      codeSteps: [
        "Öffne WhatsApp auf deinem Telefon",
        "Tippe auf Menü oder Einstellungen und wähle Verknüpfte Geräte aus",
        "Tippe auf Gerät hinzufügen",
        "Tippe auf Stattdessen mit Telefonnummer verknüpfen und gib diesen Code auf deinem Telefon ein",
      ],
      codeLabel: "Verknüpfungscode",
      codeExpired: "Dieser Code ist abgelaufen.",
      newCode: "Neuen Code anfordern",
      loading: "Deine Chats werden geladen",
      menu: "Menü",
      logout: "Abmelden",
      search: "Suchen oder neuen Chat beginnen",
      chatList: "Chatliste",
      chat: "Simulator",
      linked: "Mit dem WhatsApp-Web-Simulator verknüpft.",
      offlineTitle: "Telefon wird erreicht",
      offlineText: "Stelle sicher, dass dein Telefon eine aktive Internetverbindung hat.",
      conflict: "WhatsApp ist in einem anderen Fenster geöffnet. Klicke auf „Hier verwenden“, um WhatsApp in diesem Fenster zu verwenden.",
      useHere: "Hier verwenden",
    },
    "pt-BR": {
      title: "Use o WhatsApp no seu computador",
      steps: [
        "Abra o WhatsApp no seu celular",
        "Toque em Mais opções ou Configurações e selecione Aparelhos conectados",
        "Toque em Conectar um aparelho",
        "Aponte seu celular para esta tela para escanear o QR code",
      ],
      qrLabel: "Escaneie este QR code para conectar um aparelho!",
      reload: "Clique para recarregar o QR code",
      simNote: "Simulador: envie o texto deste QR code por POST para /__sim__/scan para conectar.",
      codeTitle: "Insira o código no celular",
      codeSteps: [
        "Abra o WhatsApp no seu celular",
        "Toque em Mais opções ou Configurações e selecione Aparelhos conectados",
        "Toque em Conectar um aparelho",
        "Toque em Conectar com número de telefone e insira este código no seu celular",
      ],
      codeLabel: "Código de conexão",
      codeExpired: "Este código expirou.",
      newCode: "Gerar novo código",
      loading: "Carregando suas conversas",
      menu: "Mais opções",
      logout: "Desconectar",
      search: "Pesquisar ou começar uma nova conversa",
      chatList: "Lista de conversas",
      chat: "Simulador",
      linked: "Conectado ao simulador do WhatsApp Web.",
      offlineTitle: "Tentando conectar ao celular",
      offlineText: "Verifique se o seu celular tem uma conexão ativa com a internet.",
      conflict: 'O WhatsApp está aberto em outra janela. Clique em "Usar aqui" para usar o WhatsApp nesta janela.',
      useHere: "Usar aqui",
    },
  };
  const T = TEXTS[document.documentElement.lang] || TEXTS.en;

  // -- Meta's module system ------------------------------------------------------------
  // Plain assignments, as on the real page, so a hook that traps them sees them.
  const modulesMap = Object.create(null);

  window.__d = function (id, deps, factory) {
    if (!(id in modulesMap)) modulesMap[id] = { deps: deps, factory: factory, module: null };
  };

  window.require = function (id) {
    const entry = modulesMap[id];
    if (!entry) throw new Error('Requiring unknown module "' + id + '"');
    if (!entry.module) {
      // The factory runs once, on first require; the arguments follow Meta's order.
      entry.module = { exports: {} };
      const importDefault = function (dep) { return window.require(dep).default; };
      entry.factory(window, window.require, importDefault, window.require, entry.module, entry.module.exports);
    }
    return entry.module.exports;
  };

  function define(id, factory) {
    if (DROPPED.indexOf(id) === -1) window.__d(id, [], factory);
  }

  // -- Backbone-style models -----------------------------------------------------------

  class Events {
    constructor() {
      Object.defineProperty(this, "_handlers", { value: Object.create(null) });
    }

    on(name, callback, context) {
      (this._handlers[name] = this._handlers[name] || []).push({ callback: callback, context: context });
      return this;
    }

    once(name, callback, context) {
      const self = this;
      const wrapper = function () {
        self.off(name, wrapper);
        return callback.apply(this, arguments);
      };
      wrapper._original = callback;
      return this.on(name, wrapper, context);
    }

    off(name, callback) {
      if (name === undefined) {
        Object.keys(this._handlers).forEach(function (key) { delete this._handlers[key]; }, this);
      } else if (callback === undefined) {
        delete this._handlers[name];
      } else if (this._handlers[name]) {
        this._handlers[name] = this._handlers[name].filter(function (h) {
          return h.callback !== callback && h.callback._original !== callback;
        });
      }
      return this;
    }

    trigger(name) {
      const args = Array.prototype.slice.call(arguments, 1);
      // A copy: a handler that removes itself (whatsapp-web.js does) must not skip the next one.
      (this._handlers[name] || []).slice().forEach(function (h) {
        try {
          h.callback.apply(h.context === undefined ? this : h.context, args);
        } catch (error) {
          // A listener's failure must not stop the page's own updates; it still surfaces.
          setTimeout(function () { throw error; });
        }
      }, this);
      return this;
    }
  }

  class Model extends Events {
    constructor(attributes) {
      super();
      Object.defineProperty(this, "attributes", { value: Object.assign({}, attributes) });
      Object.keys(attributes).forEach(function (key) {
        Object.defineProperty(this, key, { get: function () { return this.attributes[key]; }, enumerable: true });
      }, this);
    }

    get(key) {
      return this.attributes[key];
    }

    // As in Backbone, a model's events are also its collections' (Msg.on('change:ack') hears every message).
    trigger(name) {
      super.trigger.apply(this, arguments);
      const holders = this._collections;
      if (holders) for (const collection of holders) collection.trigger.apply(collection, arguments);
      return this;
    }

    // Every attribute is set first, then 'change:<attr>' (model, value) for each, then 'change'.
    set(changes) {
      const changed = Object.keys(changes).filter(function (key) {
        return this.attributes[key] !== changes[key];
      }, this);
      changed.forEach(function (key) { this.attributes[key] = changes[key]; }, this);
      changed.forEach(function (key) { this.trigger("change:" + key, this, this.attributes[key]); }, this);
      if (changed.length) this.trigger("change", this);
      return this;
    }

    serialize() {
      return Object.assign({}, this.attributes);
    }
  }

  // -- talking to the simulator ----------------------------------------------------------

  let pageId = null;
  let version = -1;

  async function call(action, body) {
    const response = await fetch("/__sim__/pages/" + pageId + "/" + action, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body || {}),
    });
    const answer = await response.json().catch(function () { return {}; });
    if (!response.ok) throw new Error(answer.error || action + ": HTTP " + response.status);
    // The answer carries the new view: applied now, so the caller's promise resolves
    // on a page that already shows the result (the same view on the stream is ignored).
    const view = answer.view || (answer.version !== undefined ? answer : null);
    if (view) apply(view);
    return answer;
  }

  // -- the models and their modules --------------------------------------------------------

  const Socket = new Model({ state: "OPENING", hasSynced: false });
  Socket.takeover = function () { return call("take-over").then(function () {}); };
  Socket.logout = function () { return call("logout").then(function () {}); };

  const Conn = new Model({ ref: null, refTTL: 0 });
  const Cmd = new Events();
  Cmd.refreshQR = function () {
    // Like the real one it never fails its caller: a page with a valid QR simply keeps it.
    return call("reload").then(function () {}, function () {});
  };
  const Stream = new Model({ mode: null, info: "OPENING" });
  const NetworkStatus = new Model({ online: true });
  NetworkStatus.checkOnline = function () { return Promise.resolve(NetworkStatus.online); };
  let progress = 0;

  let keys = null;
  let keysKnown;
  const keysReady = new Promise(function (resolve) { keysKnown = resolve; });

  function fromB64(text) {
    const binary = atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes.buffer;
  }

  function encodeB64(data) {
    const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
    let binary = "";
    for (let i = 0; i < bytes.length; i++) binary += String.fromCharCode(bytes[i]);
    return btoa(binary);
  }

  const getADVSecretKey = function () {
    return keysReady.then(function () { return keys.adv_secret; });
  };
  let pairingType = null;
  let lastPhone = null;
  let lastNotify = true;

  function startAltLinkingFlow(phone, showNotification) {
    lastPhone = String(phone);
    lastNotify = showNotification !== false;
    return call("pairing-code", { phone: lastPhone, notify: lastNotify }).then(function (answer) {
      return answer.code;
    });
  }

  function defineModules() {
    define("__debug", function (g, r, d, n, module) { module.exports = { modulesMap: modulesMap, simApp: heavyStats }; });
    define("WAWebSocketModel", function (g, r, d, n, module) { module.exports = { Socket: Socket }; });
    define("WAWebConnModel", function (g, r, d, n, module) { module.exports = { Conn: Conn }; });
    define("WAWebCmd", function (g, r, d, n, module) { module.exports = { Cmd: Cmd }; });
    define("WAWebOfflineHandler", function (g, r, d, n, module) {
      module.exports = { OfflineMessageHandler: { getOfflineDeliveryProgress: function () { return progress; } } };
    });
    define("WAWebStreamModel", function (g, r, d, n, module) { module.exports = { Stream: Stream }; });
    define("WAWebNetworkStatus", function (g, r, d, n, module) { module.exports = { default: NetworkStatus }; });
    define("WAWebAltDeviceLinkingApi", function (g, r, d, n, module) {
      module.exports = {
        setPairingType: function (type) { pairingType = type; },
        initializeAltDeviceLinking: function () { return Promise.resolve(); },
        startAltLinkingFlow: startAltLinkingFlow,
      };
    });
    define("WABase64", function (g, r, d, n, module) { module.exports = { encodeB64: encodeB64 }; });
    define("WAWebSignalStoreApi", function (g, r, d, n, module) {
      module.exports = {
        waSignalStore: {
          getRegistrationInfo: function () {
            return keysReady.then(function () { return { identityKeyPair: { pubKey: fromB64(keys.identity) } }; });
          },
        },
      };
    });
    define("WAWebUserPrefsInfoStore", function (g, r, d, n, module) {
      module.exports = {
        waNoiseInfo: {
          get: function () {
            return keysReady.then(function () { return { staticKeyPair: { pubKey: fromB64(keys.static) } }; });
          },
        },
      };
    });
    define("WAWebUserPrefsMultiDevice", function (g, r, d, n, module) { module.exports = { getADVSecretKey: getADVSecretKey }; });
    define("WAWebAdvSignatureApi", function (g, r, d, n, module) { module.exports = { getADVSecretKey: getADVSecretKey }; });
    define("WAWebCompanionRegClientUtils", function (g, r, d, n, module) {
      module.exports = { DEVICE_PLATFORM: DEVICE_PLATFORM };
    });
    defineChatModules();
  }

  // -- chats and messages: the collections whatsapp-web.js reads and sends through -----------
  //
  // WAWebCollections holds the Chat and Msg collections (also the realistic account's);
  // a message the phone side sends arrives as Msg 'add' with isNewMsg, its delivery
  // state as 'change:ack'. Sending goes the way whatsapp-web.js's sendMessage goes:
  // WidFactory.createWid, FindChatAction.findOrCreateLatestChat, MsgKey.newId and a
  // new MsgKey, then SendMsgChatAction.addAndSendMsgToChat(chat, message).
  let Store = null;
  let meUser = null;

  function createWid(text) {
    const match = /^([0-9]{5,20}(?:-[0-9]{1,12})?)@(c\.us|g\.us)$/.exec(String(text));
    if (!match) throw new Error("invalid wid: " + String(text).slice(0, 40));
    const server = match[2];
    return {
      user: match[1], server: server, _serialized: match[1] + "@" + server,
      isGroup: function () { return server === "g.us"; },
      isUser: function () { return server === "c.us"; },
      toString: function () { return this._serialized; },
    };
  }

  class MsgKey {
    constructor(fields) {
      this.fromMe = fields.selfDir === "out" || fields.fromMe === true;
      this.remote = fields.remote || fields.to;
      this.id = fields.id;
      this.participant = fields.participant;
      this._serialized = this.fromMe + "_" + this.remote._serialized + "_" + this.id;
    }

    static newId() {
      const bytes = crypto.getRandomValues(new Uint8Array(10));
      return Promise.resolve("3EB0" + Array.from(bytes, function (b) { return b.toString(16).padStart(2, "0"); }).join("").toUpperCase());
    }

    toString() { return this._serialized; }
  }

  function chatFor(wid) {
    let chat = Store.Chat.get(wid._serialized);
    if (!chat) {
      chat = new Model({ id: wid, name: wid.user, isGroup: wid.isGroup(), t: 0, unreadCount: 0, pin: 0, archive: false });
      chat.msgs = new Collection();
      Store.Chat.add(chat);
    }
    return chat;
  }

  function addMsg(chat, attributes) {
    const msg = new Model(Object.assign({ ack: 0, isNewMsg: true, type: "chat", star: false, broadcast: false }, attributes));
    chat.msgs.add(msg);
    chat.set({ t: msg.t });
    Store.Msg.add(msg);
    return msg;
  }

  function addAndSendMsgToChat(chat, message) {
    const msg = addMsg(chat, message);
    const sent = call("send", { id: msg.id.id, to: chat.id._serialized, text: String(message.body || "") }).then(
      function (answer) { if (msg.ack < answer.ack) msg.set({ ack: answer.ack }); return { messageSendResult: "OK" }; },
      function (error) { msg.set({ ack: -1 }); throw error; },
    );
    return sent.then(function (result) { return [msg, result]; });
  }

  function defineChatModules() {
    Store = { Chat: new Collection(), Msg: new Collection(), Contact: new Collection() };
    define("WAWebCollections", function (g, r, d, n, module) { module.exports = Store; });
    define("WAWebWidFactory", function (g, r, d, n, module) { module.exports = { createWid: createWid }; });
    define("WAWebMsgKey", function (g, r, d, n, module) { module.exports = MsgKey; });
    define("WAWebUserPrefsMeUser", function (g, r, d, n, module) {
      module.exports = { getMaybeMeUser: function () { return meUser; } };
    });
    define("WAWebFindChatAction", function (g, r, d, n, module) {
      module.exports = { findOrCreateLatestChat: function (wid) { return Promise.resolve({ chat: chatFor(wid), created: false }); } };
    });
    define("WAWebSendMsgChatAction", function (g, r, d, n, module) {
      module.exports = { addAndSendMsgToChat: addAndSendMsgToChat };
    });
  }

  let receiving = null; // ids told to the server as received, until it stops listing them

  // The server's pending messages into Msg (once each), the outbox's acks onto the sent messages.
  function applyChats(view) {
    if (view.me) meUser = createWid(view.me + "@c.us");
    if (!view.chats) return;
    const fresh = [];
    view.chats.pending.forEach(function (m) {
      if (Store.Msg.get(m.id)) return;
      const chat = chatFor(createWid(m.chat));
      const key = new MsgKey({ fromMe: false, remote: chat.id, id: m.id.split("_").pop() });
      addMsg(chat, { id: key, body: m.text, t: m.t, from: createWid(m.from), to: meUser, author: undefined,
        self: "in", notifyName: "", ack: 1 });
      if (chat !== (heavy && heavy.open)) chat.set({ unreadCount: (chat.unreadCount || 0) + 1 });
      fresh.push(m.id);
    });
    const listed = view.chats.pending.map(function (m) { return m.id; });
    if (listed.length && (fresh.length || receiving === null || listed.some(function (id) { return !receiving.has(id); }))) {
      receiving = new Set(listed);
      call("received", { ids: listed }).catch(function () { receiving = null; });
    }
    Object.keys(view.chats.acks).forEach(function (id) {
      const msg = Store.Msg.get(id);
      const ack = view.chats.acks[id];
      if (msg && msg.ack < ack) msg.set({ ack: ack });
    });
  }

  // -- the view into the models, in the real page's order ----------------------------------

  let loggedOut = false;

  function applyModels(view) {
    // Conn.ref first: whatsapp-web.js reads it as soon as the state leaves OPENING.
    if (view.conn_ref && view.conn_ref !== Conn.ref) {
      Conn.set({ ref: view.conn_ref, refTTL: Math.round((view.ttl || 0) * 1000) });
    }
    NetworkStatus.set({ online: !view.offline });
    const stepped = view.progress !== progress || (view.screen === "loading" && Stream.mode !== "SYNCING");
    progress = view.progress;
    if (view.state === "CONNECTED" && UNPAIRED.indexOf(Socket.state) !== -1) {
      // A scan or a code: the real page passes through PAIRING on its way to CONNECTED.
      Stream.set({ info: "PAIRING" });
      Socket.set({ state: "PAIRING" });
    }
    Socket.set({ state: view.state });
    Stream.set({ mode: view.stream.mode, info: view.stream.info });
    if (stepped && (view.screen === "loading" || (view.has_synced && !Socket.hasSynced))) {
      Cmd.trigger("offline_progress_update_from_bridge");
    }
    Socket.set({ hasSynced: view.has_synced });
  }

  function logOut(view) {
    if (loggedOut) return;
    loggedOut = true;
    const logout = view.logout || { source: "phone", reason: "user_initiated" };
    Cmd.trigger(logout.source === "page" ? "logout" : "logout_from_bridge", logout.reason);
    // As the real page: a fresh load a moment later, which shows a new QR.
    setTimeout(function () { location.replace("/?post_logout=1"); }, LOGOUT_RELOAD_MS);
  }

  function apply(view) {
    if (view.version <= version || loggedOut) return;
    version = view.version;
    if (view.clear_auth) clearAuth();
    if (view.auth) saveAuth(view.auth);
    if (view.screen === "logged_out") {
      logOut(view);
      return;
    }
    if (view.forced) {
      // A forced state is the only change: the screen and the other models stay as they are.
      Socket.set({ state: view.state });
      return;
    }
    applyModels(view);
    render(view);
    if (view.screen === "app") applyChats(view);
    if (view.hung) {
      // The renderer stops responding: evaluate calls time out, clicks go nowhere.
      for (;;) {}
    }
  }

  // -- the realistic app (--weight realistic) ------------------------------------------------
  //
  // A busy account's WhatsApp Web once logged in: chats, contacts and messages kept as
  // Backbone-style collections (as WhatsApp keeps them, read through WAWebCollections), a
  // virtualised chat list as the real one (rows for the visible window and a few more,
  // absolutely positioned in a pane as tall as every chat), the open chat's messages, and
  // updates from page timers: messages arriving and moving their chat to the top, typing
  // indicators, presence changes, delivery ticks, timestamps ticking. Content is seeded,
  // so every load builds the same account; nothing is fetched. Sizes and their sources:
  // docs/simulator.md, "The realistic page". Timers are in real seconds (never scaled):
  // they model the load a busy account puts on the browser, not the login schedule.
  const HEAVY = {
    seed: 0x5eed1e55,
    chats: 300,
    contacts: 1200,
    messagesPerChat: 100, // kept in memory per chat: chats x this in the Msg collection
    shownMessages: 60, // rendered in the open chat's pane
    rowHeight: 72, // px, as the real chat list
    overscan: 8, // rows rendered above and below the visible window
    avatarPixels: 49, // the real list's avatar size
    messageMs: [1000, 5000], // a new message every 1-5 s
    typingMs: [2000, 6000], // someone starts typing every 2-6 s, for 3 s
    typingForMs: 3000,
    presenceMs: [1000, 4000], // a contact comes online or goes away every 1-4 s
    ackMs: 1500, // an own message's ticks: sent, delivered, read, 1.5 s apart
    clockMs: 30000, // the list's and the pane's time labels are refreshed
  };
  const heavyStats = { built: false, chats: 0, messages: 0, contacts: 0, updates: 0, arrived: 0, rows: 0 };

  class Collection extends Events {
    constructor(comparator) {
      super();
      this.models = [];
      this._byId = new Map();
      this.comparator = comparator || null;
    }

    get length() { return this.models.length; }

    get(id) { return this._byId.get(typeof id === "string" ? id : id._serialized) || null; }

    at(index) { return this.models[index]; }

    getModelsArray() { return this.models.slice(); }

    add(model) {
      this.models.push(model);
      this._byId.set(model.id._serialized, model);
      if (!model._collections) Object.defineProperty(model, "_collections", { value: new Set() });
      model._collections.add(this);
      this.trigger("add", model, this);
      return model;
    }

    remove(model) {
      const index = this.models.indexOf(model);
      if (index !== -1) this.models.splice(index, 1);
      this._byId.delete(model.id._serialized);
      if (model._collections) model._collections.delete(this);
      this.trigger("remove", model, this);
      return model;
    }

    sort() {
      if (this.comparator) this.models.sort(this.comparator);
      this.trigger("sort", this);
      return this;
    }

    forEach(fn, context) { this.models.forEach(fn, context); }
  }

  // Mulberry32: small, fast and the same everywhere.
  function seeded(seed) {
    let a = seed >>> 0;
    const next = function () {
      a = (a + 0x6d2b79f5) >>> 0;
      let t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
    next.int = function (lo, hi) { return lo + Math.floor(next() * (hi - lo + 1)); };
    next.pick = function (list) { return list[Math.floor(next() * list.length)]; };
    return next;
  }

  const FIRST = ("Ana Ben Chloé Dara Emil Fatima Gabriel Hana Ivan Jana Kofi Lena Mateo Nadia Omar Priya Quinn Rosa " +
    "Samir Tara Uma Victor Wen Ximena Yusuf Zoe Amaru Bianca Carlos Deniz Elif Farid Greta Hugo Ines Joao").split(" ");
  const LAST = ("Silva Okafor Müller Rossi Novak Haddad Kim Santos Ivanova Garcia Mensah Dubois Costa Nakamura " +
    "Fischer Oliveira Kowalski Ahmed Jensen Moreau Petrov Rahman Lopez Schmidt Tanaka Yilmaz").split(" ");
  const GROUPS = ("Family|Football|Book club|Neighbours|Office|Trip planning|Class of 2015|Climbing|Parents|Band|" +
    "Flat|Project Apollo|Choir|Running|Cousins").split("|");
  const WORDS = ("ok yes no sure thanks see you tomorrow tonight later the a meeting call me when are we going " +
    "lunch dinner coffee at noon sounds good let me check I'll be there in ten minutes running late did you get " +
    "the photo file address on my way happy birthday congrats great idea maybe next week can't today what time " +
    "where exactly love it haha sorry just saw this will do done sent it please send the invoice again").split(" ");

  function sentence(rand) {
    const words = [];
    for (let n = rand.int(2, 24); n > 0; n--) words.push(rand.pick(WORDS));
    const text = words.join(" ");
    return text.charAt(0).toUpperCase() + text.slice(1) + rand.pick([".", "", "!", "?", " 😊", " 👍"]);
  }

  function avatar(rand, initials) {
    // A small picture per contact, kept as a data URI as the real page keeps thumbnails.
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = HEAVY.avatarPixels;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "hsl(" + rand.int(0, 359) + ", 45%, " + rand.int(45, 70) + "%)";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    for (let i = 0; i < 6; i++) {
      ctx.fillStyle = "hsla(" + rand.int(0, 359) + ", 60%, 50%, .35)";
      ctx.beginPath();
      ctx.arc(rand.int(0, 49), rand.int(0, 49), rand.int(6, 20), 0, 2 * Math.PI);
      ctx.fill();
    }
    ctx.fillStyle = "#fff";
    ctx.font = "bold 18px sans-serif";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText(initials, 24.5, 25);
    return canvas.toDataURL("image/png");
  }

  function wid(user, server) { return { server: server, user: user, _serialized: user + "@" + server }; }

  let heavy = null; // the account, built once per page load on the first app screen

  function buildAccount() {
    const rand = seeded(HEAVY.seed);
    const now = Math.floor(Date.now() / 1000);
    const Contact = Store.Contact;
    const Chat = Store.Chat;
    Chat.comparator = function (a, b) { return (b.pin - a.pin) || (b.t - a.t); };
    const Msg = Store.Msg;
    const me = wid("12025550100", "c.us");
    let msgSerial = 0;
    for (let i = 0; i < HEAVY.contacts; i++) {
      const name = rand.pick(FIRST) + " " + rand.pick(LAST);
      Contact.add(new Model({
        id: wid(String(12025560000 + i), "c.us"), name: name, pushname: name.split(" ")[0], shortName: name.split(" ")[0],
        isBusiness: rand() < 0.05, isMyContact: true, isWAContact: true, isBlocked: false, statusMute: false,
        verifiedName: null, labels: [], isOnline: rand() < 0.1, lastSeen: now - rand.int(60, 86400 * 3),
        profilePicThumb: null, about: sentence(rand).slice(0, 60),
      }));
    }
    const newMsg = function (chat, fromMe, t, body) {
      msgSerial += 1;
      const author = chat.isGroup ? Contact.at(rand.int(0, HEAVY.contacts - 1)).id : null;
      return new Model({
        id: { fromMe: fromMe, remote: chat.id, id: "3EB0" + (msgSerial * 2654435761 >>> 0).toString(16).toUpperCase().padStart(16, "0"),
          _serialized: fromMe + "_" + chat.id._serialized + "_" + msgSerial },
        type: "chat", body: body, t: t, from: fromMe ? me : chat.id, to: fromMe ? chat.id : me, author: fromMe ? null : author,
        ack: fromMe ? 3 : 0, isNewMsg: false, star: false, broadcast: false, isForwarded: rand() < 0.03,
        hasReaction: rand() < 0.05, mentionedJidList: [], links: [], quotedMsg: null, viewed: !fromMe, kind: "chat",
        rowId: msgSerial, notifyName: fromMe ? "" : (author ? "" : chat.name),
      });
    };
    for (let i = 0; i < HEAVY.chats; i++) {
      const isGroup = i % 5 === 4;
      const contact = Contact.at((i * 7) % HEAVY.contacts);
      const name = isGroup ? rand.pick(GROUPS) + " " + rand.int(1, 99) : contact.name;
      const id = isGroup ? wid("1203630" + String(20000000 + i), "g.us") : contact.id;
      const initials = name.split(" ").map(function (w) { return w.charAt(0); }).join("").slice(0, 2);
      const pic = avatar(rand, initials);
      if (!isGroup) contact.set({ profilePicThumb: { img: pic, imgFull: pic, tag: String(rand.int(1e6, 9e6)) } });
      const chat = new Model({
        id: id, name: name, isGroup: isGroup, t: now - i * rand.int(60, 900), unreadCount: i < 40 ? rand.int(0, 12) : 0,
        pin: i < 3 ? 1 : 0, archive: false, muteExpiration: rand() < 0.1 ? -1 : 0, isReadOnly: false,
        presence: "unavailable", typing: false, pic: pic, contact: isGroup ? null : contact, lastMsg: null,
      });
      chat.msgs = new Collection();
      for (let m = HEAVY.messagesPerChat - 1; m >= 0; m--) {
        const msg = newMsg(chat, rand() < 0.4, chat.t - m * rand.int(30, 3600), sentence(rand));
        chat.msgs.add(msg);
        Msg.add(msg);
      }
      chat.set({ lastMsg: chat.msgs.at(chat.msgs.length - 1) });
      Chat.add(chat);
    }
    Chat.sort();
    const open = Chat.at(3); // the open chat: the first one below the pinned
    open.set({ unreadCount: 0 });
    return { rand: rand, Contact: Contact, Chat: Chat, Msg: Msg, open: open, newMsg: newMsg, rows: new Map(), view: null };
  }

  function clock(t) {
    const date = new Date(t * 1000);
    const age = Date.now() / 1000 - t;
    if (age < 86400) return String(date.getHours()).padStart(2, "0") + ":" + String(date.getMinutes()).padStart(2, "0");
    if (age < 2 * 86400) return "Yesterday";
    return date.toLocaleDateString(document.documentElement.lang);
  }

  const TICKS = ["\u{1F551}", "\u2713", "\u2713\u2713", "\u2713\u2713"]; // pending, sent, delivered, read (blue)

  function fillRow(row, chat) {
    row.style.transform = "translateY(" + heavy.Chat.models.indexOf(chat) * HEAVY.rowHeight + "px)";
    const last = chat.lastMsg;
    const preview = chat.typing ? "typing\u2026" : (last.id.fromMe ? TICKS[last.ack] + " " : "") + last.body;
    row.querySelector(".chat-title").textContent = chat.name;
    row.querySelector(".chat-time").textContent = clock(chat.t);
    const text = row.querySelector(".chat-last");
    text.textContent = preview;
    text.classList.toggle("typing", chat.typing);
    const badge = row.querySelector(".unread");
    badge.textContent = chat.unreadCount ? String(chat.unreadCount) : "";
    badge.hidden = !chat.unreadCount;
    row.setAttribute("aria-selected", String(chat === heavy.open));
  }

  function newRow(chat) {
    return h("div", { role: "listitem", class: "chat-row", "data-id": chat.id._serialized }, [
      h("img", { class: "avatar", alt: "", width: HEAVY.avatarPixels, height: HEAVY.avatarPixels, src: chat.pic, draggable: "false" }),
      h("div", { class: "chat-body" }, [
        h("div", { class: "chat-line" }, [h("span", { class: "chat-title", dir: "auto" }), h("span", { class: "chat-time" })]),
        h("div", { class: "chat-line" }, [h("span", { class: "chat-last", dir: "auto" }), h("span", { class: "unread", "aria-label": "unread" })]),
      ]),
    ]);
  }

  // Only the rows in view (and a few around) exist, as in the real list.
  function renderRows() {
    const view = heavy.view;
    if (!view || !view.pane.isConnected) return;
    const pane = view.pane;
    const first = Math.max(0, Math.floor(pane.scrollTop / HEAVY.rowHeight) - HEAVY.overscan);
    const last = Math.min(heavy.Chat.length, Math.ceil((pane.scrollTop + (pane.clientHeight || 600)) / HEAVY.rowHeight) + HEAVY.overscan);
    const wanted = new Set(heavy.Chat.models.slice(first, last));
    heavy.rows.forEach(function (row, chat) {
      if (!wanted.has(chat)) { row.remove(); heavy.rows.delete(chat); }
    });
    wanted.forEach(function (chat) {
      let row = heavy.rows.get(chat);
      if (!row) { row = newRow(chat); heavy.rows.set(chat, row); view.list.append(row); }
      fillRow(row, chat);
    });
    heavyStats.rows = heavy.rows.size;
  }

  function messageElement(msg) {
    const out = msg.id.fromMe;
    return h("div", { role: "row", class: "message " + (out ? "message-out" : "message-in"), "data-id": msg.id._serialized }, [
      h("div", { class: "bubble" }, [
        msg.author ? h("div", { class: "author" }, [heavy.Contact.get(msg.author).name]) : "",
        h("span", { class: "selectable-text", dir: "auto" }, [msg.body]),
        h("div", { class: "meta" }, [h("span", { class: "msg-time" }, [clock(msg.t)]), out ? h("span", { class: "ack ack-" + msg.ack }, [TICKS[msg.ack]]) : ""]),
      ]),
    ]);
  }

  function headerStatus() {
    const chat = heavy.open;
    if (chat.typing) return "typing\u2026";
    if (chat.isGroup) return "tap here for group info";
    return chat.contact.isOnline ? "online" : "last seen today at " + clock(chat.contact.lastSeen);
  }

  function renderOpenChat() {
    const view = heavy.view;
    const chat = heavy.open;
    view.title.textContent = chat.name;
    view.status.textContent = headerStatus();
    view.messages.replaceChildren.apply(view.messages, chat.msgs.models.slice(-HEAVY.shownMessages).map(messageElement));
    view.messages.scrollTop = view.messages.scrollHeight;
  }

  function mountHeavy(root) {
    const pane = root.querySelector("#pane-side");
    const main = h("div", { id: "main" });
    root.querySelector("#main-empty").replaceWith(main);
    if (!heavy) {
      heavy = buildAccount();
      startHeavyTimers();
    }
    const list = h("div", { class: "chat-list", role: "grid", "aria-rowcount": heavy.Chat.length,
      style: "height:" + heavy.Chat.length * HEAVY.rowHeight + "px" });
    pane.replaceChildren(list);
    const title = h("span", { class: "chat-title" });
    const status = h("span", { class: "chat-status" });
    const messages = h("div", { class: "messages", role: "application" });
    main.replaceChildren(
      h("header", {}, [h("img", { class: "avatar", alt: "", width: 40, height: 40, src: heavy.open.pic }), h("div", {}, [title, status])]),
      messages,
      h("footer", {}, [h("div", { class: "compose", contenteditable: "true", role: "textbox", "aria-label": "Type a message" })]),
    );
    heavy.rows.clear();
    heavy.view = { pane: pane, list: list, title: title, status: status, messages: messages };
    pane.addEventListener("scroll", renderRows, { passive: true });
    renderRows();
    renderOpenChat();
    Object.assign(heavyStats, { built: true, chats: heavy.Chat.length, messages: heavy.Msg.length, contacts: heavy.Contact.length });
  }

  // -- the account's life: page timers, the server is never asked ----------------------------

  function every(range, work) {
    const tick = function () {
      work();
      heavyStats.updates += 1;
      setTimeout(tick, heavy.rand.int(range[0], range[1]));
    };
    setTimeout(tick, heavy.rand.int(range[0], range[1]));
  }

  function shown() { return heavy.view && heavy.view.pane.isConnected; }

  function arrive() {
    const rand = heavy.rand;
    // Busy chats get most of the traffic: the first dozen, and one in ten of the rest.
    const chat = rand() < 0.7 ? heavy.Chat.at(rand.int(0, 11)) : heavy.Chat.at(rand.int(0, heavy.Chat.length - 1));
    const fromMe = rand() < 0.15; // sent from the phone
    const msg = heavy.newMsg(chat, fromMe, Math.floor(Date.now() / 1000), sentence(rand));
    if (fromMe) msg.set({ ack: 0 });
    else msg.set({ isNewMsg: true });
    chat.msgs.add(msg);
    heavy.Msg.add(msg);
    if (chat.msgs.length > HEAVY.messagesPerChat) heavy.Msg.remove(chat.msgs.remove(chat.msgs.at(0)));
    chat.set({ t: msg.t, lastMsg: msg, typing: false, unreadCount: chat === heavy.open || fromMe ? 0 : chat.unreadCount + 1 });
    heavy.Chat.sort();
    heavyStats.arrived += 1;
    if (fromMe) {
      [1, 2, 3].forEach(function (ack) {
        setTimeout(function () {
          msg.set({ ack: ack });
          if (!shown()) return;
          const tick = heavy.view.messages.querySelector('[data-id="' + msg.id._serialized + '"] .ack');
          if (tick) { tick.className = "ack ack-" + ack; tick.textContent = TICKS[ack]; }
          if (chat.lastMsg === msg) renderRows();
        }, ack * HEAVY.ackMs);
      });
    }
    if (!shown()) return;
    renderRows();
    if (chat === heavy.open) {
      const messages = heavy.view.messages;
      messages.append(messageElement(msg));
      while (messages.childElementCount > HEAVY.shownMessages) messages.firstElementChild.remove();
      messages.scrollTop = messages.scrollHeight;
      heavy.view.status.textContent = headerStatus();
    }
  }

  function typing() {
    const chat = heavy.Chat.at(heavy.rand.int(0, 19));
    chat.set({ typing: true, presence: "composing" });
    setTimeout(function () {
      chat.set({ typing: false, presence: "available" });
      if (shown()) { renderRows(); heavy.view.status.textContent = headerStatus(); }
    }, HEAVY.typingForMs);
    if (shown()) { renderRows(); heavy.view.status.textContent = headerStatus(); }
  }

  function presence() {
    const contact = heavy.rand() < 0.3 && heavy.open.contact ? heavy.open.contact : heavy.Contact.at(heavy.rand.int(0, HEAVY.contacts - 1));
    contact.set({ isOnline: !contact.isOnline, lastSeen: Math.floor(Date.now() / 1000) });
    if (shown()) heavy.view.status.textContent = headerStatus();
  }

  function ticking() {
    if (!shown()) return;
    renderRows();
    heavy.view.messages.querySelectorAll(".msg-time").forEach(function (label, i, all) {
      const msg = heavy.open.msgs.at(heavy.open.msgs.length - all.length + i);
      if (msg) label.textContent = clock(msg.t);
    });
  }

  function startHeavyTimers() {
    every(HEAVY.messageMs, arrive);
    every(HEAVY.typingMs, typing);
    every(HEAVY.presenceMs, presence);
    every([HEAVY.clockMs, HEAVY.clockMs], ticking);
  }

  // -- rendering -------------------------------------------------------------------------

  const app = document.getElementById("app");
  let screen = null;

  function h(tag, attributes, children) {
    const element = document.createElement(tag);
    Object.keys(attributes || {}).forEach(function (name) {
      if (name === "onclick") element.addEventListener("click", attributes[name]);
      else element.setAttribute(name, attributes[name]);
    });
    (children || []).forEach(function (child) {
      element.append(child);
    });
    return element;
  }

  function show(name, build) {
    // A screen is rebuilt only when it changes: observers of the canvas or the
    // code see one element whose content changes, as on WhatsApp Web.
    if (screen !== name) {
      app.replaceChildren(build());
      screen = name;
    }
    return app.firstElementChild;
  }

  function steps(texts) {
    return h("ol", {}, texts.map(function (text) { return h("li", {}, [text]); }));
  }

  function buildLanding() {
    return h("div", { class: "landing", "data-sim-screen": "qr" }, [
      h("div", { class: "landing-text" }, [h("h1", {}, [T.title]), steps(T.steps), h("p", { class: "sim-note" }, [T.simNote])]),
      h("div", { class: "qr-box" }, [
        h("div", { class: "qr-holder" }, [h("canvas", { "aria-label": T.qrLabel, role: "img", width: QR_PIXELS, height: QR_PIXELS })]),
      ]),
    ]);
  }

  // The server's QR modules (rows of "0"/"1"), as one path of unit squares scaled onto the canvas.
  function drawQr(canvas, rows) {
    const side = rows.length + 2 * QUIET_ZONE;
    const scale = Math.max(1, Math.floor(QR_PIXELS / side));
    canvas.width = canvas.height = side * scale;
    const dark = new Path2D();
    rows.forEach(function (row, y) {
      Array.prototype.forEach.call(row, function (module, x) {
        if (module === "1") dark.rect(x + QUIET_ZONE, y + QUIET_ZONE, 1, 1);
      });
    });
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.setTransform(scale, 0, 0, scale, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fill(dark);
    ctx.setTransform(1, 0, 0, 1, 0, 0);
  }

  let drawnQr = null;

  function renderLanding(view) {
    const holder = show("landing", buildLanding).querySelector(".qr-holder");
    const button = holder.querySelector(":scope > span");
    if (view.screen === "qr") {
      if (button) button.remove();
      holder.classList.remove("expired");
      if (drawnQr !== view.ref) {
        drawQr(holder.querySelector("canvas"), view.qr);
        drawnQr = view.ref;
      }
    } else if (!button) {
      // Expired: the last QR stays, dimmed, under the reload button.
      holder.classList.add("expired");
      holder.append(h("span", {}, [h("button", { type: "button", onclick: function () { Cmd.refreshQR(); } }, [T.reload])]));
    }
  }

  function buildCode() {
    return h("div", { class: "landing code", "data-sim-screen": "code" }, [
      h("div", { class: "landing-text" }, [h("h1", {}, [T.codeTitle]), steps(T.codeSteps)]),
      h("div", { class: "code-box" }, [h("div", { class: "link-code", "aria-label": T.codeLabel }, [])]),
    ]);
  }

  function renderCode(view) {
    const box = show("code", buildCode).querySelector(".code-box");
    const expired = box.querySelector(".code-expired");
    if (view.pairing) {
      const code = view.pairing.code;
      box.querySelector(".link-code").textContent = code.slice(0, 4) + "-" + code.slice(4);
      box.classList.remove("expired");
      if (expired) expired.remove();
    } else if (!expired) {
      box.classList.add("expired");
      box.append(
        h("div", { class: "code-expired" }, [
          h("p", {}, [T.codeExpired]),
          h("button", { type: "button", onclick: function () { startAltLinkingFlow(lastPhone, lastNotify).catch(function () {}); } }, [T.newCode]),
        ]),
      );
    }
  }

  function buildLoading() {
    return h("div", { class: "loading", "data-sim-screen": "loading" }, [
      h("progress", { value: 0, max: 100 }),
      h("div", { class: "loading-title" }, [T.loading]),
    ]);
  }

  function buildApp() {
    const menu = h("ul", { class: "menu", hidden: "" }, [
      h("li", {}, [h("div", { role: "button", tabindex: 0, "aria-label": T.logout, onclick: function () { Socket.logout(); } }, [T.logout])]),
    ]);
    const toggle = function () { menu.hidden = !menu.hidden; };
    return h("div", { class: "two", "data-sim-screen": "app" }, [
      h("div", { id: "side" }, [
        h("header", {}, [
          h("span", { class: "me" }, ["WhatsApp"]),
          h("div", { class: "menu-wrap" }, [
            h("div", { role: "button", tabindex: 0, "aria-label": T.menu, title: T.menu, onclick: toggle }, [h("span", { "data-icon": "menu" }, ["\u22ee"])]),
            menu,
          ]),
        ]),
        h("div", { class: "banners" }),
        h("div", { class: "search" }, [h("span", { "data-icon": "search" }, ["\u{1F50D}"]), h("input", { type: "text", placeholder: T.search })]),
        h("div", { id: "pane-side", "aria-label": T.chatList }, [h("div", { class: "chat", role: "listitem" }, [T.chat])]),
      ]),
      h("div", { id: "main-empty" }, [T.linked]),
    ]);
  }

  function renderApp(view) {
    const root = show("app", buildApp);
    if (WEIGHT === "realistic" && !root.querySelector(".chat-list")) mountHeavy(root);
    const banners = root.querySelector(".banners");
    const banner = banners.querySelector(".banner.offline");
    if (view.offline && !banner) {
      banners.append(
        h("div", { class: "banner offline", role: "alert" }, [
          h("span", { "data-icon": "alert-phone" }, ["!"]),
          h("div", {}, [h("div", { class: "banner-title" }, [T.offlineTitle]), h("div", {}, [T.offlineText])]),
        ]),
      );
    }
    if (!view.offline && banner) banner.remove();
  }

  function buildConflict() {
    return h("div", { class: "conflict", "data-sim-screen": "conflict" }, [
      h("div", { class: "conflict-text" }, [T.conflict]),
      h("div", { role: "button", tabindex: 0, onclick: function () { Socket.takeover(); } }, [T.useHere]),
    ]);
  }

  function render(view) {
    switch (view.screen) {
      case "qr":
      case "reload":
        renderLanding(view);
        break;
      case "code":
      case "code_expired":
        renderCode(view);
        break;
      case "loading":
        show("loading", buildLoading).querySelector("progress").value = view.percent || 0;
        break;
      case "app":
        renderApp(view);
        break;
      case "conflict":
        show("conflict", buildConflict);
        break;
    }
  }

  // -- login storage: IndexedDB first (written through on commit), localStorage as well ----

  function withStore(mode, work) {
    return new Promise(function (resolve) {
      let open;
      try {
        open = indexedDB.open("wa-sim", 1);
      } catch (e) {
        return resolve(null);
      }
      open.onupgradeneeded = function () { open.result.createObjectStore("auth"); };
      open.onerror = function () { resolve(null); };
      open.onsuccess = function () {
        const db = open.result;
        const tx = db.transaction("auth", mode);
        const request = work(tx.objectStore("auth"));
        const finish = function (value) { db.close(); resolve(value); };
        tx.oncomplete = function () { finish(request.result === undefined ? null : request.result); };
        tx.onerror = tx.onabort = function () { finish(null); };
      };
    });
  }

  function saveAuth(auth) {
    localStorage.setItem(AUTH_KEY, JSON.stringify(auth));
    withStore("readwrite", function (store) { return store.put(auth, AUTH_KEY); });
  }

  function clearAuth() {
    localStorage.removeItem(AUTH_KEY);
    withStore("readwrite", function (store) { return store.delete(AUTH_KEY); });
  }

  async function storedAuth() {
    const saved = await withStore("readonly", function (store) { return store.get(AUTH_KEY); });
    if (saved && typeof saved.token === "string") return saved;
    try {
      const local = JSON.parse(localStorage.getItem(AUTH_KEY) || "null");
      return local && typeof local.token === "string" ? local : null;
    } catch (e) {
      return null;
    }
  }

  // -- start -----------------------------------------------------------------------------

  function startupProgress(value) {
    const bar = document.querySelector("#wa_web_initial_startup progress");
    if (bar) bar.value = value;
  }

  async function start() {
    const auth = await storedAuth();
    // The modules arrive a moment after `require` exists, as bundles do. Debug.VERSION
    // comes with them: whatsapp-web.js requires the modules as soon as it sees it. Then,
    // as the real page opens its socket, Socket.state stays OPENING until the server answers.
    defineModules();
    window.Debug = { VERSION: WEB_VERSION };
    startupProgress(50);
    const response = await fetch("/__sim__/pages", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ token: auth ? auth.token : null }),
    });
    if (!response.ok) throw new Error("registering the page: HTTP " + response.status);
    const opened = await response.json();
    pageId = opened.page;
    keys = opened.view.keys;
    keysKnown();
    startupProgress(90);
    apply(opened.view); // the first screen replaces the startup splash
    const events = new EventSource("/__sim__/pages/" + pageId + "/events");
    events.addEventListener("view", function (event) { apply(JSON.parse(event.data)); });
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

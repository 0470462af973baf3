// worldloop play page: creates a session over REST and plays it over the WebSocket play protocol
// (serving/protocol.py). Plain browser JS, no dependencies, no build step.
"use strict";

(() => {
  const KEY_CODES = { KeyW: "w", KeyA: "a", KeyS: "s", KeyD: "d", Space: "space" };
  const KEY_ORDER = ["w", "a", "s", "d", "space"];
  const MOUSE_UNITS_PER_PIXEL = 0.2; // 1 mouse unit = 1 degree on the server by default
  const MAX_MOUSE_UNITS = 1e4; // the server rejects larger motion
  const QUEUE_BLOCKS = 2; // frames awaiting display, in blocks, before old ones are dropped
  const FPS_WINDOW_BLOCKS = 8; // blocks the generation FPS is averaged over
  const BACKOFF_MS = [500, 1000, 2000, 4000, 8000];
  const ERROR_RETRY_MS = 1000; // resend a step the server answered with an error
  const PIXELATED_BELOW = 320; // served widths under this scale up as crisp pixels
  const API_KEY_STORAGE = "worldloop.apiKey";

  const $ = (id) => document.getElementById(id);
  const canvas = $("screen");
  const ctx = canvas.getContext("2d");
  const stage = $("stage");
  const statusLine = $("status");

  // Observable state, read by the e2e tests (window.worldloop).
  const state = {
    sessionId: null,
    session: null, // SessionInfo from POST /v1/sessions, then from each Hello
    status: "idle", // idle | creating | connecting | playing | reconnecting | gone | error
    statusText: "",
    error: null, // the last ErrorMessage or REST error, as shown
    framesReceived: 0,
    framesDrawn: 0,
    framesDropped: 0,
    lastFrameIndex: null, // index of the frame on the canvas
    blocks: 0, // block number of the last block header (session-wide, as the server counts)
    recaches: 0,
    instruction: null,
    generationFps: null,
    lastTiming: null,
    resumed: false,
    reconnects: 0,
    keys: [],
    stepsSent: 0,
    lastStep: null,
  };
  window.worldloop = state;

  // Connection state, reset per session.
  let socket = null;
  let apiKey = "";
  let expectedFrames = 0; // binary messages still owed by the last header
  let nextFrameIndex = 0;
  let stepInFlight = false;
  let stepSeq = 0; // bumps on every block header; a stale error retry checks it
  let inFlightText = null; // instruction carried by the step in flight
  let pendingText = null; // instruction for the next step
  let reconnectAttempt = 0;
  let reconnectTimer = null;
  let playTimer = null;
  let frameQueue = []; // {index, bitmap, failed}, decoded asynchronously but drawn in order
  let stepSentAt = 0; // performance.now() when the step in flight went out
  let roundTrips = []; // {ms, count} of recent blocks: step sent → block header

  // Input, accumulated between steps.
  const held = new Set();
  let mouseDx = 0;
  let mouseDy = 0;
  let drag = null; // {x, y, moved} while dragging without pointer lock

  const framesPerBlock = () => (state.session && state.session.frames_per_block) || 1;

  // ---- status and stats ------------------------------------------------------------------------

  // A new connection state replaces the error shown with the old one.
  function setStatus(status, text) {
    if (status !== state.status) state.error = null;
    state.status = status;
    state.statusText = text;
    renderStatus();
  }

  function showError(text) {
    state.error = text;
    renderStatus();
  }

  function renderStatus() {
    statusLine.textContent = state.error ? `${state.statusText} — ${state.error}` : state.statusText;
    statusLine.dataset.state = state.error && state.status === "playing" ? "error" : state.status;
  }

  function renderStats() {
    $("stat-session").textContent = state.sessionId || "–";
    $("stat-frame").textContent = state.lastFrameIndex === null ? "–" : String(state.lastFrameIndex);
    $("stat-fps").textContent = state.generationFps === null ? "–" : state.generationFps.toFixed(1);
    const t = state.lastTiming;
    $("stat-timing").textContent = t
      ? `${t.total_ms.toFixed(0)} ms (queue ${t.queue_ms.toFixed(0)}, gen ${t.generate_ms.toFixed(0)}, ` +
        `decode ${t.decode_ms.toFixed(0)}, encode ${t.encode_ms.toFixed(0)})`
      : "–";
    $("stat-recaches").textContent = String(state.recaches);
    $("stat-instruction").textContent = state.instruction || "–";
  }

  function renderKeys() {
    state.keys = KEY_ORDER.filter((k) => held.has(k));
    $("stat-keys").textContent = state.keys.join("+") || "none";
  }

  // ---- URLs ------------------------------------------------------------------------------------

  // Relative to the page, so the app works behind any host and path prefix.
  const apiUrl = (path) => new URL(path, document.baseURI).href;

  function playUrl(id) {
    const url = new URL(`v1/sessions/${encodeURIComponent(id)}/play`, document.baseURI);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    if (apiKey) url.searchParams.set("api_key", apiKey); // browsers' sockets cannot send headers
    return url.href;
  }

  // ---- creating a session ----------------------------------------------------------------------

  function readDataUrl(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
  }

  function restError(response, body) {
    const err = body && body.error;
    if (err && err.message) {
      return `${err.status || response.status}: ${err.message}${err.field ? ` (${err.field})` : ""}`;
    }
    return `${response.status} ${response.statusText || "request failed"}`;
  }

  async function createSession(event) {
    event.preventDefault();
    apiKey = $("api-key").value.trim();
    if (apiKey) localStorage.setItem(API_KEY_STORAGE, apiKey);
    else localStorage.removeItem(API_KEY_STORAGE);

    const body = { prompt: $("prompt").value, frames: { format: $("format").value } };
    const file = $("image").files[0];
    const start = $("start");
    start.disabled = true;
    state.error = null;
    setStatus("creating", "Creating session…");
    try {
      if (file) body.image = await readDataUrl(file);
      const headers = { "Content-Type": "application/json" };
      if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
      const response = await fetch(apiUrl("v1/sessions"), {
        method: "POST",
        headers,
        body: JSON.stringify(body),
      });
      const data = await response.json().catch(() => null);
      if (!response.ok) {
        setStatus("error", `Could not create a session: ${restError(response, data)}`);
        return;
      }
      startSession(data);
    } catch (err) {
      setStatus("error", `Could not create a session: ${err.message || err}`);
    } finally {
      start.disabled = false;
    }
  }

  function startSession(info) {
    stopSession();
    Object.assign(state, {
      sessionId: info.id,
      session: info,
      error: null,
      framesReceived: 0,
      framesDrawn: 0,
      framesDropped: 0,
      lastFrameIndex: null,
      blocks: info.blocks,
      recaches: info.recaches,
      instruction: info.instruction,
      generationFps: null,
      lastTiming: null,
      resumed: false,
      reconnects: 0,
      stepsSent: 0,
      lastStep: null,
    });
    pendingText = null;
    inFlightText = null;
    reconnectAttempt = 0;
    roundTrips = [];
    $("instruction").disabled = false;
    $("send-instruction").disabled = false;
    renderStats();
    connect();
    stage.focus();
  }

  // Drops the current socket and timers; its late events are ignored (they check `socket`).
  function stopSession() {
    const old = socket;
    socket = null;
    if (old) old.close(1000);
    clearTimeout(reconnectTimer);
    clearInterval(playTimer);
    clearQueue();
  }

  // ---- the play socket -------------------------------------------------------------------------

  function connect() {
    if (reconnectAttempt) setStatus("reconnecting", "Reconnecting…");
    else setStatus("connecting", "Connecting…");
    const ws = new WebSocket(playUrl(state.sessionId));
    ws.binaryType = "blob";
    socket = ws;
    expectedFrames = 0;
    stepInFlight = false;
    ws.onmessage = (event) => {
      if (ws === socket) onMessage(event.data);
    };
    ws.onclose = (event) => {
      if (ws === socket) onClose(event);
    };
  }

  function onClose(event) {
    socket = null;
    stepInFlight = false;
    if (event.code === 4404) {
      setStatus("gone", "Session gone (expired or deleted). Start a new session.");
    } else if (event.code === 4401) {
      setStatus("error", "The API key was rejected.");
    } else if (event.code === 4409) {
      // Another tab or client took the session over; reconnecting would take it back and forth.
      setStatus("gone", "This session is being played elsewhere (another tab or client took it over).");
    } else if (event.code === 4429) {
      setStatus("error", `Too many connections${event.reason ? `: ${event.reason}` : ""}.`);
    } else {
      // 1013 (generator lost) or an unexpected drop: the session resumes from its last frame.
      const delay = BACKOFF_MS[Math.min(reconnectAttempt, BACKOFF_MS.length - 1)];
      reconnectAttempt += 1;
      const wait = `${(delay / 1000).toFixed(1)} s`;
      setStatus("reconnecting", `Connection lost (${event.code}); reconnecting in ${wait}…`);
      reconnectTimer = setTimeout(() => {
        state.reconnects += 1;
        connect();
      }, delay);
      return;
    }
    clearInterval(playTimer);
    $("instruction").disabled = true;
    $("send-instruction").disabled = true;
  }

  function onMessage(data) {
    if (typeof data !== "string") {
      onFrame(data);
      return;
    }
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      showError("unreadable message from the server");
      return;
    }
    if (msg.type === "hello") onHello(msg);
    else if (msg.type === "block") onBlock(msg);
    else if (msg.type === "error") onError(msg);
    // "pong" and unknown types need nothing
  }

  function onHello(msg) {
    const info = msg.session;
    Object.assign(state, {
      session: info,
      resumed: msg.resumed,
      blocks: info.blocks,
      recaches: info.recaches,
      instruction: info.instruction,
      error: null,
    });
    reconnectAttempt = 0;
    sizeCanvas(info.width, info.height);
    clearInterval(playTimer);
    playTimer = setInterval(drawNext, 1000 / (info.fps || 16));
    // The hello frame is the session's current frame: show it instead of anything still queued.
    clearQueue();
    expectFrames(msg.first_index, msg.count);
    setStatus("playing", msg.resumed ? "Playing (resumed from the last frame)" : "Playing");
    // An instruction lost with the old socket is sent again unless the server already applied it.
    if (inFlightText !== null && pendingText === null && info.instruction !== inFlightText) {
      pendingText = inFlightText;
    }
    inFlightText = null;
    renderStats();
    sendStep();
  }

  function onBlock(msg) {
    state.blocks = msg.block;
    state.lastTiming = msg.timing;
    state.instruction = msg.instruction;
    if (msg.recached) state.recaches += 1;
    expectFrames(msg.first_index, msg.count);
    measureFps(msg.count);
    stepInFlight = false;
    inFlightText = null;
    stepSeq += 1;
    renderStats();
    sendStepIfRoom();
  }

  // An error answers the step in flight (no block follows it): resend a plain step after a pause.
  function onError(msg) {
    showError(`error ${msg.status}: ${msg.message}`);
    const ws = socket;
    const seq = stepSeq;
    const sent = state.stepsSent;
    setTimeout(() => {
      if (socket === ws && seq === stepSeq && sent === state.stepsSent) {
        stepInFlight = false;
        inFlightText = null;
        sendStep();
      }
    }, ERROR_RETRY_MS);
  }

  // Frames per second of step round trips (one step in flight), so playback pacing does not bias it.
  function measureFps(count) {
    roundTrips.push({ ms: performance.now() - stepSentAt, count });
    if (roundTrips.length > FPS_WINDOW_BLOCKS) roundTrips.shift();
    const ms = roundTrips.reduce((sum, g) => sum + g.ms, 0);
    const frames = roundTrips.reduce((sum, g) => sum + g.count, 0);
    if (ms > 0) state.generationFps = (1000 * frames) / ms;
  }

  // ---- steps -----------------------------------------------------------------------------------

  function sendStep() {
    if (!socket || socket.readyState !== WebSocket.OPEN || stepInFlight) return;
    const clamp = (v) => Math.max(-MAX_MOUSE_UNITS, Math.min(MAX_MOUSE_UNITS, Math.round(v * 1000) / 1000));
    const step = {
      type: "step",
      keys: KEY_ORDER.filter((k) => held.has(k)),
      mouse: [clamp(mouseDx), clamp(mouseDy)],
      blocks: 1,
    };
    mouseDx = 0;
    mouseDy = 0;
    if (pendingText !== null) {
      step.text = pendingText;
      inFlightText = pendingText;
      pendingText = null;
    }
    socket.send(JSON.stringify(step));
    stepSentAt = performance.now();
    stepInFlight = true;
    state.stepsSent += 1;
    state.lastStep = step;
  }

  // Keeps generation from running ahead of playback: the next step goes out only when the block it
  // asks for fits in the queue without dropping frames (re-checked as frames are drawn). When the
  // generator is slower than playback this never waits.
  function sendStepIfRoom() {
    const backlog = frameQueue.length + expectedFrames;
    if (backlog + framesPerBlock() <= QUEUE_BLOCKS * framesPerBlock()) sendStep();
  }

  // ---- frames ----------------------------------------------------------------------------------

  function expectFrames(firstIndex, count) {
    nextFrameIndex = firstIndex;
    expectedFrames = count;
  }

  function onFrame(blob) {
    if (expectedFrames <= 0) return; // not announced by a header: nothing to index it by
    expectedFrames -= 1;
    state.framesReceived += 1;
    const entry = { index: nextFrameIndex++, bitmap: null, failed: false };
    frameQueue.push(entry);
    createImageBitmap(blob).then(
      (bitmap) => {
        if (frameQueue.includes(entry)) entry.bitmap = bitmap;
        else bitmap.close(); // dropped while decoding
      },
      () => {
        entry.failed = true;
      },
    );
    // Stay real time: past QUEUE_BLOCKS blocks of backlog, the oldest frames are skipped.
    while (frameQueue.length > QUEUE_BLOCKS * framesPerBlock()) {
      const old = frameQueue.shift();
      if (old.bitmap) old.bitmap.close();
      state.framesDropped += 1;
    }
  }

  // Called at the session's fps: shows the oldest decoded frame, keeping the last one otherwise.
  function drawNext() {
    while (frameQueue.length && frameQueue[0].failed) frameQueue.shift();
    const entry = frameQueue[0];
    if (!entry || !entry.bitmap) return;
    frameQueue.shift();
    ctx.drawImage(entry.bitmap, 0, 0, canvas.width, canvas.height);
    entry.bitmap.close();
    state.framesDrawn += 1;
    state.lastFrameIndex = entry.index;
    canvas.dataset.frameIndex = String(entry.index);
    $("stat-frame").textContent = String(entry.index);
    if (!stepInFlight) sendStepIfRoom();
  }

  function clearQueue() {
    for (const entry of frameQueue) if (entry.bitmap) entry.bitmap.close();
    frameQueue = [];
  }

  function sizeCanvas(width, height) {
    if (canvas.width !== width) canvas.width = width;
    if (canvas.height !== height) canvas.height = height;
    canvas.classList.toggle("pixelated", width < PIXELATED_BELOW);
  }

  // ---- input -----------------------------------------------------------------------------------

  stage.addEventListener("keydown", (event) => {
    const key = KEY_CODES[event.code];
    if (!key || event.ctrlKey || event.metaKey || event.altKey) return;
    event.preventDefault(); // Space would scroll the page
    held.add(key);
    renderKeys();
  });
  stage.addEventListener("keyup", (event) => {
    const key = KEY_CODES[event.code];
    if (!key) return;
    event.preventDefault();
    held.delete(key);
    renderKeys();
  });
  stage.addEventListener("blur", () => {
    held.clear(); // a key released elsewhere would otherwise stay held
    renderKeys();
  });

  const locked = () => document.pointerLockElement === canvas;

  function addMouse(dxPixels, dyPixels) {
    mouseDx += dxPixels * MOUSE_UNITS_PER_PIXEL;
    mouseDy += dyPixels * MOUSE_UNITS_PER_PIXEL;
  }

  // Pointer lock gives raw motion; a plain drag (touch, or no pointer lock) works too.
  canvas.addEventListener("pointerdown", (event) => {
    if (locked()) return;
    drag = { x: event.clientX, y: event.clientY, moved: 0 };
    canvas.setPointerCapture(event.pointerId);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!drag || locked()) return;
    const dx = event.clientX - drag.x;
    const dy = event.clientY - drag.y;
    drag = { x: event.clientX, y: event.clientY, moved: drag.moved + Math.abs(dx) + Math.abs(dy) };
    addMouse(dx, dy);
  });
  canvas.addEventListener("pointerup", () => {
    const wasClick = drag && drag.moved < 4;
    drag = null;
    if (wasClick && !locked() && canvas.requestPointerLock) {
      // Newer browsers return a promise that rejects when the lock is refused; drag still works.
      Promise.resolve()
        .then(() => canvas.requestPointerLock())
        .catch(() => {});
    }
  });
  canvas.addEventListener("pointercancel", () => {
    drag = null;
  });
  document.addEventListener("mousemove", (event) => {
    if (locked()) addMouse(event.movementX, event.movementY);
  });

  $("instruction-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("instruction");
    const text = input.value.trim();
    if (!text) return;
    pendingText = text;
    input.value = "";
    sendStep(); // goes now if no step is in flight, else with the next one
    stage.focus();
  });

  $("new-session").addEventListener("submit", createSession);
  $("api-key").value = localStorage.getItem(API_KEY_STORAGE) || "";
  renderKeys();
  setStatus("idle", "Start a session to play.");
})();

// The uploader page. tus-js-client sends each file to the tus endpoint (and resumes it after
// a lost connection, a server restart or a page reload); Socket.IO reports what the server
// has durably stored, in the room of each upload. Each file's bar has two marks: bytes this
// browser sent, and bytes the server confirmed.
//
// Settings (see index.html): <body data-endpoint data-chunk-size>, and ?chunkSize=BYTES.
// The chunk size starts at data-chunk-size and follows the link (chunking.js); a chunk size
// given in the address stays fixed. With `auth.bearer_tokens` set on the server, every request
// and the socket carry the access token of access.js (#token=TOKEN, or the access panel).

import {
  authHeaders,
  checkAccess,
  currentToken,
  downloadWithToken,
  initAccess,
  showAccessProblem,
  socketAuth,
} from "./access.js";
import { nextChunkSize } from "./chunking.js";

const { tus, io } = window;

const RETRY_DELAYS = [0, 1000, 3000, 5000, 10000, 10000, 10000];
const SPEED_WINDOW_MS = 3000;
const STATUS_POLL_MS = 2000;

const settings = readSettings();
const $ = (id) => document.getElementById(id);
const dropZone = $("drop-zone");
const fileInput = $("file-input");
const uploadList = $("uploads");
const template = $("upload-template");
// Before the socket connects: a token in the address is taken (and removed from it) first.
initAccess(settings.endpoint, onAccessGranted);
// WebSocket only: behind several workers or nodes, long-polling would need sticky sessions.
// Every URL is relative to the page, so FormForge works mounted under any prefix.
const socket = io({
  path: new URL("socket.io/", location.href).pathname,
  transports: ["websocket"],
  auth: socketAuth,
});
const items = new Map(); // upload id -> Item, for the files whose room we follow
const waitingForAccess = new Set(); // Items the server refused for want of a valid token

function readSettings() {
  const body = document.body.dataset;
  const fromQuery = Number(new URLSearchParams(location.search).get("chunkSize"));
  const chunkSize = fromQuery > 0 ? fromQuery : Number(body.chunkSize) || Infinity;
  const adaptive = !(fromQuery > 0) && Number.isFinite(chunkSize);
  return { endpoint: new URL(body.endpoint || "files/", location.href).href, chunkSize, adaptive };
}

function announce(message) {
  $("announcer").textContent = message;
}

function formatBytes(bytes) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

function formatDuration(seconds) {
  if (!Number.isFinite(seconds)) return "";
  const s = Math.max(1, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

// A tus error's first clause, without the request dump tus-js-client appends.
function shortMessage(error) {
  return String(error.message || error).split(/, (caused by|originated from)/)[0];
}

const STATUS_TEXT = {
  queued: "Waiting",
  uploading: "Uploading",
  paused: "Paused",
  retrying: "Connection lost, retrying",
  processing: "Processing",
  complete: "Complete",
  failed: "Stopped",
  cancelled: "Cancelled",
};

class Item {
  constructor(file) {
    this.file = file;
    this.id = null;
    this.state = "queued";
    this.sent = 0;
    this.confirmed = 0;
    this.samples = [];
    this.startedAt = performance.now();
    this.chunkStartedAt = null; // when the PATCH of the chunk in flight was sent
    this.interruptions = 0;
    this.serverError = null;
    this.clientError = null;
    this.el = template.content.firstElementChild.cloneNode(true);
    this.part("upload-name").textContent = file.name;
    this.part("upload-size").textContent = formatBytes(file.size);
    this.part("sent").setAttribute("aria-label", `${file.name}: sent by this browser`);
    this.part("confirmed").setAttribute("aria-label", `${file.name}: confirmed by the server`);
    this.part("pause-resume").addEventListener("click", () => this.pauseOrResume());
    this.part("cancel").addEventListener("click", () => this.cancel());
    this.part("upload-link").addEventListener("click", async (event) => {
      const failed = await downloadWithToken(event, event.currentTarget);
      if (failed) this.showErrors(null, failed);
    });
    this.upload = new tus.Upload(file, {
      endpoint: settings.endpoint,
      chunkSize: settings.chunkSize,
      headers: authHeaders,
      retryDelays: RETRY_DELAYS,
      removeFingerprintOnSuccess: true,
      metadata: { filename: file.name, filetype: file.type || "application/octet-stream" },
      onUploadUrlAvailable: () => this.follow(this.upload.url.split("/").pop()),
      onProgress: (sent) => this.onSent(sent),
      onBeforeRequest: (request) => this.onBeforeRequest(request),
      onChunkComplete: (bytes) => this.onChunkComplete(bytes),
      onShouldRetry: (error, attempt, options) => this.onShouldRetry(error, attempt, options),
      onError: (error) => this.onFailed(error),
      onSuccess: () => this.onUploaded(),
    });
    this.render();
  }

  part(name) {
    return this.el.querySelector(`.${name}`);
  }

  async start() {
    const previous = await this.upload.findPreviousUploads();
    previous.sort((a, b) => Date.parse(b.creationTime) - Date.parse(a.creationTime));
    if (previous.length > 0) this.upload.resumeFromPreviousUpload(previous[0]);
    if (this.state !== "queued") return; // paused or cancelled meanwhile
    this.setState("uploading", previous.length > 0 ? "resuming an earlier upload" : "started");
    this.upload.start();
  }

  // Join the upload's room as soon as its URL is known (its id is the last path segment).
  follow(id) {
    if (this.id === id) return;
    this.unfollow(); // a new upload replaced one the server no longer has
    this.id = id;
    this.el.dataset.uploadId = id;
    items.set(id, this);
    if (socket.connected) this.join();
  }

  join() {
    socket.timeout(5000).emit("joinUploadRoom", this.id, (timedOut, ack) => {
      if (timedOut || !ack?.ok) console.warn("joinUploadRoom", this.id, timedOut || ack?.error);
    });
  }

  unfollow() {
    if (this.id === null) return;
    items.delete(this.id);
    if (socket.connected) socket.emit("leaveUploadRoom", this.id);
  }

  onSent(sent) {
    this.sent = sent;
    this.samples.push([performance.now(), sent]);
    if (this.state === "retrying") {
      this.showErrors(null, null);
      this.setState("uploading", "uploading again");
    }
    this.render();
  }

  onBeforeRequest(request) {
    if (request.getMethod() === "PATCH") this.chunkStartedAt = performance.now();
  }

  // tus-js-client reads options.chunkSize each time it cuts the next chunk from the file.
  onChunkComplete(bytes) {
    if (!settings.adaptive || this.chunkStartedAt === null) return;
    const seconds = (performance.now() - this.chunkStartedAt) / 1000;
    const options = this.upload.options;
    options.chunkSize = nextChunkSize(bytes, seconds, options.chunkSize);
  }

  onUploaded() {
    this.sent = this.file.size;
    if (this.state === "complete") return; // uploadComplete came first
    this.setState("processing", "all bytes sent, the server verifies them");
    this.pollStatus();
  }

  onShouldRetry(error, attempt, options) {
    const retry = tus.defaultOptions.onShouldRetry(error, attempt, options);
    if (retry) {
      if (this.state !== "retrying") this.interruptions += 1;
      const seconds = RETRY_DELAYS[attempt] / 1000;
      const next = `Retry ${attempt + 1} of ${RETRY_DELAYS.length} in ${seconds} s.`;
      this.showErrors(this.serverError, `${shortMessage(error)}. ${next}`);
      if (this.state !== "retrying") this.setState("retrying", "connection lost, retrying");
    }
    return retry;
  }

  onFailed(error) {
    const status = error.originalResponse ? error.originalResponse.getStatus() : 0;
    if (status === 401) {
      this.waitForAccess();
      return;
    }
    // No answer or a 5xx: the server is away. A reconnect of the socket restarts the upload.
    this.retryOnReconnect = status === 0 || status >= 500;
    if (this.state !== "retrying") this.interruptions += 1;
    const next = this.retryOnReconnect
      ? "Will retry when the server is reachable again."
      : "Press Retry to try again.";
    this.showErrors(this.serverError, `${shortMessage(error)}. ${next}`);
    this.setState("failed", "stopped");
  }

  // Refused for the token: said on the row and in the access panel; a token accepted later
  // resumes the upload (onAccessGranted).
  waitForAccess() {
    waitingForAccess.add(this);
    const problem = currentToken() ? "refused" : "missing";
    showAccessProblem(problem);
    const reason = problem === "refused" ? "refused the access token" : "needs an access token";
    this.showErrors(null, `The server ${reason}. Enter a valid one above and it carries on.`);
    this.setState("failed", `stopped, the server ${reason}`);
  }

  // At stage "processing" the event carries the processing step: the hash, then each hook.
  onServerProgress({ offset, stage, processing }) {
    this.confirmed = offset;
    this.processing = stage === "processing" ? processing : null;
    this.render();
  }

  onServerComplete({ sha256, url }) {
    this.confirmed = this.file.size;
    this.seconds = (performance.now() - this.startedAt) / 1000;
    this.part("upload-sha256").textContent = sha256;
    this.part("upload-link").href = url;
    this.part("upload-link").textContent = this.file.name;
    this.part("upload-result").hidden = false;
    this.showErrors(null, null);
    this.unfollow();
    this.setState("complete", `complete, sha256 ${sha256.slice(0, 12)}…`);
  }

  onServerError({ message, retryable }) {
    if (["cancelled", "complete"].includes(this.state)) return;
    if (retryable && this.state === "paused") return; // the cut connection was our pause
    const next = retryable ? "It will retry by itself." : "It will not retry.";
    this.showErrors(`Server: ${message}. ${next}`, this.clientError);
    announce(`${this.file.name}: ${message}. ${next}`);
  }

  // uploadComplete can be missed while the socket reconnects: ask the REST front too.
  async pollStatus() {
    await new Promise((resolve) => setTimeout(resolve, STATUS_POLL_MS));
    if (this.state !== "processing") return;
    try {
      const statusUrl = new URL(`api/files/upload/${this.id}`, location.href);
      const answer = await fetch(statusUrl, { headers: authHeaders });
      const status = await answer.json();
      if (status.state === "complete" && status.sha256) {
        this.onServerComplete({ sha256: status.sha256, url: this.upload.url });
        return;
      }
      if (status.state === "processing" && status.processing) {
        this.processing = status.processing;
        this.render();
      }
      if (status.state === "error" || status.state === "expired") {
        this.showErrors(`Server: the upload ended in state ${status.state}.`, null);
        this.setState("failed", `upload ${status.state}`);
        return;
      }
    } catch (error) {
      console.warn("status", this.id, error);
    }
    this.pollStatus();
  }

  pauseOrResume() {
    if (this.state === "paused" || this.state === "failed") this.resume();
    else this.pause();
  }

  pause() {
    this.upload.abort();
    this.setState("paused", "paused");
  }

  resume() {
    this.showErrors(null, null);
    this.setState("uploading", "resumed");
    this.upload.start();
  }

  async cancel() {
    this.setState("cancelled", "cancelled");
    this.el.focus(); // the buttons go away
    this.unfollow();
    try {
      await this.upload.abort(true); // stops the request and DELETEs the upload (tus termination)
    } catch (error) {
      this.showErrors(null, `Could not delete it on the server: ${shortMessage(error)}`);
    }
  }

  // What the server said (uploadError) and what tus-js-client met, one line each.
  showErrors(serverError, clientError) {
    this.serverError = serverError;
    this.clientError = clientError;
    const lines = [serverError, clientError].filter(Boolean);
    this.part("upload-error").textContent = lines.join("\n");
    this.part("upload-error").hidden = lines.length === 0;
  }

  setState(state, spoken) {
    this.state = state;
    this.el.dataset.state = state;
    if (spoken) announce(`${this.file.name}: ${spoken}`);
    this.render();
  }

  // Bytes per second sent over the last few seconds; it falls to 0 when sending stalls.
  speed() {
    const now = performance.now();
    while (this.samples.length > 0 && now - this.samples[0][0] > SPEED_WINDOW_MS) {
      this.samples.shift();
    }
    if (this.state !== "uploading" || this.samples.length < 2) return 0;
    const [t0, b0] = this.samples[0];
    const b1 = this.samples[this.samples.length - 1][1];
    return ((b1 - b0) * 1000) / Math.max(now - t0, 1000);
  }

  summary() {
    const took = formatDuration(this.seconds);
    const times = this.interruptions === 1 ? "once" : `${this.interruptions} times`;
    const resumed = this.interruptions ? `, resumed ${times}` : "";
    return `${formatBytes(this.file.size)} in ${took}${resumed}`;
  }

  render() {
    const size = this.file.size;
    const done = ["complete", "cancelled"].includes(this.state);
    const sent = Math.max(this.sent, this.confirmed);
    const percent = (bytes) => (size ? Math.floor((bytes * 100) / size) : 100);
    for (const [name, bytes] of [["sent", sent], ["confirmed", this.confirmed]]) {
      const bar = this.part(name);
      bar.max = size || 1;
      bar.value = size ? bytes : 1;
      bar.setAttribute("aria-valuetext", `${formatBytes(bytes)} of ${formatBytes(size)}`);
    }
    const speed = this.speed();
    this.part("upload-status").textContent = STATUS_TEXT[this.state];
    this.part("upload-amounts").textContent =
      this.state === "complete"
        ? this.summary()
        : this.state === "cancelled"
          ? ""
          : this.state === "processing"
            ? processingText(this.processing)
            : `${percent(this.confirmed)}% confirmed, ${percent(sent)}% sent`;
    this.part("upload-speed").textContent = speed > 0 ? `${formatBytes(speed)}/s` : "";
    const left = speed > 0 ? `${formatDuration((size - sent) / speed)} left` : "";
    this.part("upload-eta").textContent = left;
    const toggle = this.part("pause-resume");
    toggle.textContent = { paused: "Resume", failed: "Retry" }[this.state] || "Pause";
    toggle.setAttribute("aria-label", `${toggle.textContent} ${this.file.name}`);
    toggle.disabled = this.state === "processing";
    this.part("cancel").setAttribute("aria-label", `Cancel ${this.file.name}`);
    this.part("upload-actions").hidden = done;
  }
}

// "40 % — indexing": how far the server's processing step is, as far as it said.
function processingText(processing) {
  const { percent, message } = processing || {};
  const parts = [];
  if (typeof percent === "number") parts.push(`${Math.floor(percent)} %`);
  if (message) parts.push(message);
  return parts.join(" — ");
}

function addFiles(files) {
  for (const file of files) {
    const item = new Item(file);
    uploadList.append(item.el);
    forgetEarlier(file);
    item.start().catch((error) => item.onFailed(error));
  }
  $("empty").hidden = uploadList.children.length > 0;
}

// Uploads a reload interrupted: tus-js-client keeps their URLs in localStorage, and
// resumes one when the same file (name, type, size, date) is added again.
async function listEarlier() {
  if (!tus.canStoreURLs) return;
  const earlier = await tus.defaultOptions.urlStorage.findAllUploads();
  for (const { metadata, size } of earlier) {
    const entry = document.createElement("li");
    entry.textContent = `${metadata.filename} (${formatBytes(size)})`;
    entry.dataset.key = `${metadata.filename}/${size}`;
    $("earlier-list").append(entry);
  }
  $("earlier").hidden = earlier.length === 0;
}

function forgetEarlier(file) {
  for (const entry of $("earlier-list").children) {
    if (entry.dataset.key === `${file.name}/${file.size}`) entry.remove();
  }
  $("earlier").hidden = $("earlier-list").children.length === 0;
}

function setConnected(connected, text) {
  const line = $("connection");
  if (line.dataset.connected === "true" && !connected) {
    announce("Lost the connection to the server; uploads resume by themselves.");
  }
  line.dataset.connected = String(connected);
  line.textContent =
    text || (connected ? "Live updates: connected" : "Live updates: reconnecting…");
}

// A token was accepted: connect the socket if the server refused it, and carry on the
// uploads it refused.
function onAccessGranted() {
  if (!socket.connected && !socket.active) socket.connect();
  for (const item of waitingForAccess) {
    if (item.state === "failed") item.resume();
  }
  waitingForAccess.clear();
}

socket.on("connect", () => {
  setConnected(true);
  for (const item of items.values()) {
    item.join(); // rooms do not survive a reconnect; the join also resends the offset
    if (item.state === "failed" && item.retryOnReconnect) item.resume();
  }
});
socket.on("disconnect", () => setConnected(false));
socket.on("connect_error", () => {
  if (socket.active) return; // the network: the client tries again by itself
  // The server refused the connection (no token, or a wrong one): it stays down until a
  // token is accepted.
  setConnected(false, "Live updates: refused, see the access token above");
  checkAccess(settings.endpoint);
});
socket.on("uploadProgress", (event) => items.get(event.uploadId)?.onServerProgress(event));
socket.on("uploadComplete", (event) => items.get(event.uploadId)?.onServerComplete(event));
socket.on("uploadError", (event) => items.get(event.uploadId)?.onServerError(event));

dropZone.addEventListener("click", () => fileInput.click());
dropZone.addEventListener("keydown", (event) => {
  if (event.key !== "Enter" && event.key !== " ") return;
  event.preventDefault();
  fileInput.click();
});
fileInput.addEventListener("change", () => {
  addFiles(fileInput.files);
  fileInput.value = ""; // the same file can be chosen again
});
dropZone.addEventListener("dragover", (event) => {
  event.preventDefault();
  dropZone.classList.add("dragging");
});
dropZone.addEventListener("dragleave", () => dropZone.classList.remove("dragging"));
dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  dropZone.classList.remove("dragging");
  addFiles(event.dataTransfer.files);
});
// A file dropped beside the zone must not make the browser navigate away to it.
for (const type of ["dragover", "drop"]) {
  document.addEventListener(type, (event) => event.preventDefault());
}

// Speed and time left also change when no event comes (a stall).
setInterval(() => items.forEach((item) => item.render()), 1000);
listEarlier();

// The page's whole behaviour, in plain JavaScript: sign in, upload (tus), follow, list,
// download, delete. Everything shown is set as text, never as markup.
"use strict";

const TUS = "1.0.0";
const PIECE = 8 * 1024 * 1024;
const $ = (id) => document.getElementById(id);

let token = sessionStorage.getItem("token");
let email = sessionStorage.getItem("email");
// Job id (or a temporary key while creating the upload) -> its table row's parts.
const rows = new Map();
let nextPage = null;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const auth = () => ({ Authorization: "Bearer " + token });

// Each sign-in is a session of its own. Work begun in one (an upload, its queue, a job being
// followed, an answer on its way) stops when it ends, and never reaches the next person's.
let session = 0;
class SessionEnded extends Error {}
function still(mine) {
  if (mine !== session) throw new SessionEnded("signed out");
}
// Uploads' requests in flight, aborted when the session ends.
const inFlight = new Set();
// Files waiting for their upload: a few go at a time (the browser has six connections per
// site, and the jobs' status needs some too).
const waiting = [];
let running = 0;

// The server's one-line reason and the status.
async function reason(response) {
  const text = (await response.text()).split("\n")[0].trim();
  return `${text || response.statusText} (${response.status})`;
}

function say(text) {
  $("status").textContent = text;
}

function showSignIn(message) {
  session += 1;
  waiting.length = 0;
  for (const request of inFlight) request.abort();
  token = null;
  sessionStorage.clear();
  $("app").hidden = true;
  $("who").hidden = true;
  $("signin").hidden = false;
  $("login-error").textContent = message || "";
  $("jobs").tBodies[0].replaceChildren();
  rows.clear();
}

function showApp() {
  $("signin").hidden = true;
  $("app").hidden = false;
  $("who").hidden = false;
  $("user").textContent = email;
  loadJobs("/jobs?limit=20");
}

// A request with the token of session `mine`; an answer refusing it ends the session.
async function api(path, options = {}, mine = session) {
  still(mine);
  const response = await fetch(path, { ...options, headers: { ...auth(), ...(options.headers || {}) } });
  still(mine);
  if (response.status === 401 || response.status === 403) {
    showSignIn("Your session ended: please sign in again.");
    throw new Error(await reason(response));
  }
  return response;
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const user = $("email").value.trim();
  const credentials = new TextEncoder().encode(`${user}:${$("password").value}`);
  const basic = btoa(String.fromCharCode(...credentials));
  $("login-error").textContent = "";
  try {
    const response = await fetch("/login", { method: "POST", headers: { Authorization: "Basic " + basic } });
    if (!response.ok) {
      $("login-error").textContent = await reason(response);
      return;
    }
    token = (await response.text()).trim();
    email = user;
    sessionStorage.setItem("token", token);
    sessionStorage.setItem("email", email);
    $("password").value = "";
    showApp();
  } catch (error) {
    $("login-error").textContent = "The server cannot be reached.";
  }
});

$("logout").addEventListener("click", async () => {
  let response;
  try {
    response = await fetch("/logout", { method: "POST", headers: auth() });
  } catch (error) {
    return say("Not signed out: the server cannot be reached.");
  }
  // 401 or 403: the token was no good anyway.
  if (!response.ok && response.status !== 401 && response.status !== 403) {
    return say(`Not signed out: ${await reason(response)}`);
  }
  forgetUnfinished(email);
  showSignIn("Signed out.");
});

// ---------------------------------------------------------------- the jobs table

function row(key, filename) {
  let parts = rows.get(key);
  if (parts) return parts;
  const tr = document.createElement("tr");
  const file = document.createElement("td");
  file.className = "file";
  file.textContent = filename;
  const status = document.createElement("td");
  const progressCell = document.createElement("td");
  const progress = document.createElement("progress");
  progress.hidden = true;
  progressCell.append(progress);
  const actions = document.createElement("td");
  actions.className = "actions";
  tr.append(file, status, progressCell, actions);
  parts = { tr, status, progress, actions };
  rows.set(key, parts);
  return parts;
}

function rekey(from, to) {
  const parts = rows.get(from);
  // A resumed upload that had in fact finished is listed already.
  rows.get(to)?.tr.remove();
  rows.delete(from);
  rows.set(to, parts);
  parts.tr.dataset.job = to;
}

function setStatus(parts, text, kind) {
  parts.status.textContent = text;
  parts.status.className = kind ? `status-${kind}` : "";
}

// The options a job was asked with, in a few words (shown as the file's tooltip).
function describe(options) {
  if (!options) return "";
  const words = [];
  if (options.preset) words.push(`preset ${options.preset}`);
  if (options.quality !== undefined) words.push(`VBR quality ${options.quality}`);
  else if (options.bitrate) words.push(`${options.bitrate} kb/s`);
  if (options.sample_rate) words.push(`${options.sample_rate} Hz`);
  if (options.channels) words.push(options.channels === 1 ? "mono" : "stereo");
  if (options.start !== undefined || options.end !== undefined) {
    words.push(`${options.start || 0} s to ${options.end === undefined ? "the end" : options.end + " s"}`);
  }
  if (options.title) words.push(`"${options.title}"`);
  return words.join(", ");
}

function show(job) {
  const parts = row(job.job_id, job.filename);
  parts.tr.querySelector("td.file").title = describe(job.options);
  parts.tr.dataset.job = job.job_id;
  if (!parts.tr.isConnected) $("jobs").tBodies[0].append(parts.tr);
  parts.progress.hidden = true;
  if (job.status === "failed") {
    setStatus(parts, `failed: ${job.error || "no reason given"}`, "failed");
  } else {
    setStatus(parts, job.status, job.status === "done" ? "done" : "");
  }
  parts.actions.replaceChildren();
  if (job.status === "done") {
    parts.actions.append(downloadAction(job));
  }
  if (job.status === "done" || job.status === "failed") {
    parts.actions.append(deleteAction(job.job_id));
  }
}

function downloadAction(job) {
  const name = job.filename.replace(/\.[^.]*$/, "") + ".mp3";
  if (job.signed_download_url) {
    // Works without the token: the browser downloads it as any link.
    const link = document.createElement("a");
    link.className = "button secondary";
    link.href = job.signed_download_url;
    link.download = name;
    link.textContent = "Download";
    // A page left open past the link's lifetime asks for a new one first.
    link.addEventListener("click", async (event) => {
      if (Date.now() / 1000 < job.signed_url_expires_at - 10) return;
      event.preventDefault();
      const mine = session;
      try {
        const response = await api(`/jobs/${encodeURIComponent(job.job_id)}`, {}, mine);
        if (!response.ok) return say(`Download failed: ${await reason(response)}`);
        const fresh = await response.json();
        still(mine);
        show(fresh);
        if (fresh.signed_url_expires_at > Date.now() / 1000 + 10) {
          rows.get(fresh.job_id)?.actions.querySelector("a")?.click();
        }
      } catch (error) {
        if (!(error instanceof SessionEnded)) say(`Download failed: ${error.message}`);
      }
    });
    return link;
  }
  const button = document.createElement("button");
  button.type = "button";
  button.className = "secondary";
  button.textContent = "Download";
  button.addEventListener("click", async () => {
    const mine = session;
    try {
      const response = await api(job.download_url, {}, mine);
      if (!response.ok) return say(`Download failed: ${await reason(response)}`);
      const blob = await response.blob();
      // Not saved into another person's session.
      still(mine);
      const url = URL.createObjectURL(blob);
      const link = document.createElement("a");
      link.href = url;
      link.download = name;
      link.click();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (error) {
      if (!(error instanceof SessionEnded)) say(`Download failed: ${error.message}`);
    }
  });
  return button;
}

function deleteAction(id) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "secondary";
  button.textContent = "Delete";
  button.addEventListener("click", async () => {
    const mine = session;
    try {
      const response = await api(`/jobs/${encodeURIComponent(id)}`, { method: "DELETE" }, mine);
      if (response.status !== 204 && response.status !== 404) {
        return say(`Delete failed: ${await reason(response)}`);
      }
      rows.get(id)?.tr.remove();
      rows.delete(id);
      say("Deleted.");
    } catch (error) {
      if (!(error instanceof SessionEnded)) say(`Delete failed: ${error.message}`);
    }
  });
  return button;
}

async function loadJobs(path) {
  const mine = session;
  try {
    const response = await api(path, {}, mine);
    if (!response.ok) return say(`Cannot list the jobs: ${await reason(response)}`);
    const page = await response.json();
    still(mine);
    for (const job of page.jobs) {
      show(job);
      if (job.status !== "done" && job.status !== "failed") follow(job.job_id, mine);
    }
    nextPage = page.next;
    $("more").hidden = !nextPage;
  } catch (error) {
    if (!(error instanceof SessionEnded)) say(`Cannot list the jobs: ${error.message}`);
  }
}

$("more").addEventListener("click", () => nextPage && loadJobs(nextPage));

// Asks for the job as often as the server's Retry-After says, until it ends (or the session).
async function follow(id, mine) {
  let failures = 0;
  while (mine === session && rows.has(id)) {
    let wait = 2;
    try {
      const response = await api(`/jobs/${encodeURIComponent(id)}`, {}, mine);
      if (response.status === 404) return;
      if (response.ok) {
        const job = await response.json();
        still(mine);
        show(job);
        if (job.status === "done" || job.status === "failed") {
          say(`${job.filename}: ${job.status}`);
          return;
        }
        wait = Number(response.headers.get("Retry-After")) || 2;
        failures = 0;
      } else if (++failures > 10) {
        return say(`Lost track of a job: ${await reason(response)}`);
      }
    } catch (error) {
      if (error instanceof SessionEnded || ++failures > 10) return;
    }
    await sleep(Math.min(Math.max(wait, 1), 30) * 1000);
  }
}

// ---------------------------------------------------------------- uploads (tus)

function base64(text) {
  return btoa(String.fromCharCode(...new TextEncoder().encode(text)));
}

async function sha1(blob) {
  if (!crypto.subtle) return null;
  const digest = await crypto.subtle.digest("SHA-1", await blob.arrayBuffer());
  return "sha1 " + btoa(String.fromCharCode(...new Uint8Array(digest)));
}

// One PATCH, with upload progress (which fetch does not report), in session `mine`.
function patch(location, offset, blob, checksum, onProgress, mine) {
  return new Promise((resolve, reject) => {
    still(mine);
    const request = new XMLHttpRequest();
    inFlight.add(request);
    request.onloadend = () => inFlight.delete(request);
    request.onabort = () => reject(new SessionEnded("signed out"));
    request.open("PATCH", location);
    request.setRequestHeader("Authorization", "Bearer " + token);
    request.setRequestHeader("Tus-Resumable", TUS);
    request.setRequestHeader("Upload-Offset", String(offset));
    request.setRequestHeader("Content-Type", "application/offset+octet-stream");
    if (checksum) request.setRequestHeader("Upload-Checksum", checksum);
    request.upload.onprogress = (event) => onProgress(event.loaded);
    request.onload = () => {
      const reached = Number(request.getResponseHeader("Upload-Offset"));
      if (request.status === 204 && reached > offset && reached <= offset + blob.size) {
        resolve(reached);
        return;
      }
      const text = request.responseText.split("\n")[0];
      const error = new Error(`${text} (${request.status})`);
      // Worth another try: a conflict (ask where it is), a lock, a checksum, a body that
      // broke off on the way, the server busy.
      error.again =
        [409, 423, 460, 502, 503, 504].includes(request.status) ||
        (request.status === 400 && text.startsWith("the request body broke off"));
      // The session ended: the upload is kept for after the next sign-in.
      error.signedOut = request.status === 401 || request.status === 403;
      reject(error);
    };
    request.onerror = () => {
      const error = new Error("the connection broke");
      error.again = true;
      reject(error);
    };
    request.send(blob);
  });
}

// Where the server is with an upload, asked until it answers (the network may still be down):
// null if the upload is gone.
async function offsetOf(location, mine) {
  for (let tries = 1; ; tries++) {
    try {
      const response = await api(location, { method: "HEAD", headers: { "Tus-Resumable": TUS } }, mine);
      if (response.status === 404) return null;
      const offset = response.headers.get("Upload-Offset");
      if (response.ok && offset !== null) return Number(offset);
    } catch (error) {
      if (error instanceof SessionEnded || !token) throw error;
    }
    if (tries >= 30) throw new Error("the server cannot be reached");
    await sleep(Math.min(1000 * tries, 10000));
  }
}

// Unfinished uploads, kept across reloads and restarts so that picking the same file again goes
// on where it stopped: "user|name|size|modified" -> the upload's location (no secret in it).
const UNFINISHED = "unfinished-uploads";

function unfinished() {
  try {
    return JSON.parse(localStorage.getItem(UNFINISHED)) || {};
  } catch (error) {
    return {};
  }
}

// The same file with other options is another upload (another MP3).
const fingerprint = (user, file, options) =>
  [user, file.name, file.size, file.lastModified, JSON.stringify(options)].join("|");

function remember(print, location) {
  const all = unfinished();
  if (location) all[print] = location;
  else delete all[print];
  localStorage.setItem(UNFINISHED, JSON.stringify(all));
}

// The output options filled in, as [name, value] pairs; the server checks them.
function chosenOptions() {
  const pairs = [];
  for (const [name, value] of new FormData($("options-form"))) {
    const text = String(value).trim();
    if (text) pairs.push([name, text]);
  }
  return pairs;
}

// The remembered upload of this file (`print`) and the server's offset in it, if it is still
// there.
async function resumable(print, file, mine) {
  const location = unfinished()[print];
  if (!location) return null;
  const offset = await offsetOf(location, mine);
  // Gone, another file after all, or finished and its job deleted since: start anew.
  let stale = offset === null || offset > file.size;
  if (!stale && offset === file.size) {
    const job = await api(`/jobs/${encodeURIComponent(location.split("/").pop())}`, {}, mine);
    stale = job.status === 404;
  }
  if (stale) {
    remember(print, null);
    return null;
  }
  return { location, offset };
}

// Forgets the signed-out user's unfinished uploads: the next person at this browser does not
// see their file names.
function forgetUnfinished(user) {
  const all = unfinished();
  for (const key of Object.keys(all)) {
    if (key.startsWith(`${user}|`)) delete all[key];
  }
  localStorage.setItem(UNFINISHED, JSON.stringify(all));
}

// Files being uploaded by this page, so that one picked twice is not sent twice at once.
const sending = new Set();

async function upload(file, options) {
  const mine = session;
  const print = fingerprint(email, file, options);
  if (sending.has(print)) return say(`${file.name} is already being uploaded.`);
  sending.add(print);
  const key = `upload-${Math.random()}`;
  const parts = row(key, file.name);
  $("jobs").tBodies[0].prepend(parts.tr);
  setStatus(parts, "uploading");
  parts.progress.hidden = false;
  parts.progress.max = file.size || 1;
  parts.progress.value = 0;
  // Whether the upload can still go on later (a network failure), or is over (refused, done).
  let keep = true;
  try {
    let { location, offset } = (await resumable(print, file, mine)) || {};
    if (location) {
      setStatus(parts, `uploading, resumed at ${Math.floor((100 * offset) / (file.size || 1))}%`);
    } else {
      const created = await api("/uploads", {
        method: "POST",
        headers: {
          "Tus-Resumable": TUS,
          "Upload-Length": String(file.size),
          "Upload-Metadata": [["filename", file.name], ...options]
            .map(([name, value]) => `${name} ${base64(value)}`)
            .join(","),
        },
      }, mine);
      if (created.status !== 201) {
        keep = false;
        throw new Error(await reason(created));
      }
      location = created.headers.get("Location");
      offset = 0;
      remember(print, location);
    }
    const id = location.split("/").pop();
    rekey(key, id);
    parts.progress.value = offset;
    let failures = 0;
    while (offset < file.size) {
      const piece = file.slice(offset, offset + PIECE);
      const start = offset;
      try {
        const checksum = await sha1(piece);
        offset = await patch(location, offset, piece, checksum, (sent) => {
          parts.progress.value = start + sent;
        }, mine);
        failures = 0;
      } catch (error) {
        if (error.signedOut) {
          showSignIn("Your session ended: sign in and pick the file again to go on.");
          throw error;
        }
        if (error instanceof SessionEnded) throw error;
        if (!error.again) keep = false;
        if (!error.again || ++failures > 8) throw error;
        setStatus(parts, `retrying: ${error.message}`);
        await sleep(500 * 2 ** Math.min(failures, 5));
        const stored = await offsetOf(location, mine);
        if (stored === null) {
          keep = false;
          throw new Error("the upload is gone from the server");
        }
        offset = stored;
        setStatus(parts, "uploading");
      }
      parts.progress.value = offset;
    }
    remember(print, null);
    setStatus(parts, "queued");
    parts.progress.hidden = true;
    follow(id, mine);
  } catch (error) {
    // Signed out meanwhile: its row and remembered uploads are gone with the session.
    if (error instanceof SessionEnded) return;
    if (!keep) remember(print, null);
    parts.progress.hidden = true;
    setStatus(parts, `failed: ${error.message}`, "failed");
  } finally {
    sending.delete(print);
  }
}


function uploadAll(files) {
  // Each file keeps the options chosen when it was picked.
  const options = chosenOptions();
  waiting.push(...Array.from(files, (file) => [file, options]));
  while (running < 3 && waiting.length) {
    running += 1;
    upload(...waiting.shift()).finally(() => {
      running -= 1;
      uploadAll([]);
    });
  }
}

$("files").addEventListener("change", (event) => {
  uploadAll(event.target.files);
  event.target.value = "";
});

const drop = $("drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  uploadAll(event.dataTransfer.files);
});

if (token) showApp();

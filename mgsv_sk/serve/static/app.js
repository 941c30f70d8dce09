// The demo page: upload a video, show the ranked tracks with their moments, play a moment.
// Plain JS, no build step, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { limits: null, busy: false };

// m:ss, or m:ss.s with tenths (moments are often a few seconds long)
function clock(seconds, tenths = false) {
  const s = Math.max(0, tenths ? Math.round(seconds * 10) / 10 : Math.round(seconds));
  const m = Math.floor(s / 60);
  const rest = s - 60 * m;
  return `${m}:${(tenths ? rest.toFixed(1) : String(rest)).padStart(tenths ? 4 : 2, "0")}`;
}

function size(bytes) {
  return bytes < 2 ** 20 ? `${Math.max(1, Math.round(bytes / 1024))} KB`
    : `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

function showError(message) {
  const box = $("error");
  box.replaceChildren();
  const title = document.createElement("strong");
  title.textContent = "Could not use this video.";
  box.append(title, document.createTextNode(message));
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").replaceChildren();
}

function setStatus(text, kind) {
  const el = $("status");
  el.textContent = text;
  el.className = `status status-${kind}`;
}

async function loadModel() {
  for (let attempt = 0; attempt < 120; attempt++) {
    try {
      const response = await fetch("/v2/models/mgsv");
      const body = await response.json();
      if (response.ok) {
        const p = body.parameters;
        state.limits = p;
        setStatus(`ready · ${p.catalogue_tracks.toLocaleString()} tracks`, "ok");
        $("limits").textContent = `mp4, mov, mkv, webm, avi or m4v · up to ` +
          `${p.max_video_seconds} s and ${Math.round(p.max_upload_bytes / 2 ** 20)} MiB`;
        $("model-info").textContent = `model ${body.versions[0]} · ${p.precision} · ` +
          `bundle sha256 ${p.bundle_sha256.slice(0, 12)}…`;
        return;
      }
      setStatus(body.error && body.error.includes("failed") ? "model failed to load"
        : "loading model…", body.error && body.error.includes("failed") ? "bad" : "wait");
      if (response.status !== 503) return;
    } catch (err) {
      setStatus("server unreachable", "bad");
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

function preview(file) {
  const video = $("preview-video");
  if (video.src) URL.revokeObjectURL(video.src);
  video.src = URL.createObjectURL(file);
  $("preview-name").textContent = `${file.name} · ${size(file.size)}`;
  $("preview").hidden = false;
}

async function upload(file) {
  if (state.busy || !file) return;
  clearError();
  $("results").replaceChildren();
  $("summary").hidden = true;
  preview(file);
  const limits = state.limits;
  if (limits && file.size > limits.max_upload_bytes) {
    showError(`${file.name} is ${(file.size / 2 ** 20).toFixed(1)} MiB; this server takes ` +
      `videos of at most ${Math.round(limits.max_upload_bytes / 2 ** 20)} MiB.`);
    return;
  }
  const form = new FormData();
  form.append("video", file, file.name);
  const query = new URLSearchParams({ k: $("top-k").value, moments_per_track: $("moments").value });
  state.busy = true;
  $("busy").hidden = false;
  try {
    const response = await fetch(`/v1/recommend?${query}`, { method: "POST", body: form });
    let body;
    try {
      body = await response.json();
    } catch (err) {
      body = { error: `the server answered ${response.status} without a JSON body` };
    }
    if (!response.ok) {
      const retry = response.headers.get("Retry-After");
      showError(body.error + (retry ? ` (retry in ${retry} s)` : ""));
      return;
    }
    render(body);
  } catch (err) {
    showError(`the request failed: ${err.message}`);
  } finally {
    state.busy = false;
    $("busy").hidden = true;
  }
}

function render(body) {
  const list = $("results");
  const template = $("track-template");
  for (const track of body.tracks) {
    const card = template.content.firstElementChild.cloneNode(true);
    card.dataset.musicId = track.music_id;
    card.querySelector(".rank").textContent = track.rank;
    card.querySelector(".music-id").textContent = track.music_id;
    const best = track.moments[0];
    card.querySelector(".track-meta").textContent = `${clock(track.track_seconds)} long` +
      (best ? ` · best moment at ${clock(best.start, true)}` : "");
    card.querySelector(".score").textContent = `score ${track.score.toFixed(3)}`;
    card.querySelector(".track-end").textContent = clock(track.track_seconds);
    const span = Math.max(track.track_seconds, ...track.moments.map((m) => m.end), 1e-6);
    const timeline = card.querySelector(".timeline");
    const audio = card.querySelector(".track-audio");
    const moments = card.querySelector(".moments");
    track.moments.forEach((moment, i) => {
      const segment = document.createElement("div");
      segment.className = `segment${i === 0 ? " best" : ""}`;
      segment.style.left = `${(100 * moment.start) / span}%`;
      segment.style.width = `${(100 * (moment.end - moment.start)) / span}%`;
      segment.title = `${clock(moment.start, true)} – ${clock(moment.end, true)}`;
      timeline.append(segment);

      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "moment-play";
      button.dataset.start = moment.start;
      button.dataset.end = moment.end;
      const icon = document.createElement("span");
      icon.className = "icon";
      icon.textContent = "▶";
      const range = document.createElement("span");
      range.textContent = `${clock(moment.start, true)} – ${clock(moment.end, true)}`;
      const prob = document.createElement("span");
      prob.className = "prob";
      prob.textContent = `${Math.round(100 * moment.score)}%`;
      button.append(icon, range, prob);
      if (moment.audio_url) {
        const play = () => playMoment(card, audio, moment, button, segment, span);
        button.addEventListener("click", play);
        segment.addEventListener("click", play);
      } else {
        button.disabled = true;
        button.title = "the server has no audio file for this track";
      }
      item.append(button);
      moments.append(item);
    });
    audio.hidden = true; // shown once one of the track's moments plays
    list.append(card);
  }
  const t = body.timings_ms;
  $("summary").textContent = `${body.tracks.length} tracks for ${body.video.filename} ` +
    `(${body.video.seconds.toFixed(1)} s, ${size(body.video.bytes)}) in ${Math.round(t.total)} ms · decode ` +
    `${Math.round(t.decode)} ms · rank ${Math.round(t.rank)} ms · model ${body.model_version}`;
  $("summary").hidden = false;
}

function playMoment(card, audio, moment, button, segment, span) {
  for (const other of document.querySelectorAll("audio.track-audio")) {
    if (other !== audio) other.pause();
  }
  card.querySelectorAll(".moment-play, .segment").forEach((el) => el.classList.remove("active"));
  button.classList.add("active");
  segment.classList.add("active");
  const url = new URL(moment.audio_url, window.location.href).href;
  if (audio.src !== url) {
    audio.src = url;
    audio.dataset.start = moment.start;
  }
  audio.hidden = false;
  const head = card.querySelector(".playhead");
  head.hidden = false;
  audio.ontimeupdate = () => {
    head.style.left = `${(100 * (moment.start + audio.currentTime)) / span}%`;
  };
  audio.play().catch((err) => showError(`the browser could not play the moment: ${err.message}`));
}

function wireUpload() {
  const input = $("file-input");
  const zone = $("drop-zone");
  input.addEventListener("change", () => {
    if (input.files.length) upload(input.files[0]);
    input.value = "";
  });
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    zone.addEventListener(name, () => zone.classList.remove("dragging"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer.files[0];
    if (file) upload(file);
  });
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      input.click();
    }
  });
  // A drop outside the zone must not navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
}

wireUpload();
loadModel();

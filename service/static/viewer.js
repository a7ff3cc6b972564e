// distill3d viewer. Every control change re-renders: in the browser with the student's graphs
// (local.js) when it can, else through POST /render (the teacher beyond the student's range, W+
// latents, style mixing inside the layers, no WebAssembly). The orbit button plays POST /orbit;
// a photo is fitted through POST /invert and then rendered like a seed.
// Plain browser JavaScript, no build step and nothing loaded from elsewhere.
"use strict";

import * as local from "/static/local.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const state = {
  fitted: null, // the latent file /invert returned
  rendering: false,
  pending: false,
  renderTimer: null,
  videoUrl: null,
  renders: 0,
  models: null, // /v1/models
  local: null, // a local.LocalRenderer once loaded
  localStatus: "loading the student's graphs…",
};

function apiKey() {
  return sessionStorage.getItem("distill3d-api-key") || "";
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (apiKey()) headers.set("Authorization", `Bearer ${apiKey()}`);
  const started = performance.now();
  const response = await fetch(path, { ...options, headers });
  const elapsed = performance.now() - started;
  if (response.status === 401) {
    $("api-key-row").hidden = false;
    throw new Error("this service needs an API key: enter it on the left");
  }
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      detail = typeof body.detail === "string"
        ? body.detail
        : body.detail.map((e) => `${e.loc.slice(1).join(".")}: ${e.msg}`).join("; ");
    } catch (_) { /* not JSON */ }
    throw new Error(detail);
  }
  return { response, elapsed };
}

function showError(error) {
  const box = $("error");
  if (error === null) {
    box.hidden = true;
    return;
  }
  if (error.name === "AbortError") return;
  box.textContent = error.message;
  box.hidden = false;
}

function usePhoto() {
  return document.querySelector('input[name="identity"]:checked').value === "photo" && state.fitted;
}

// The request's identity fields (as POST /render takes them).
function identityFields() {
  const fields = {};
  if (usePhoto()) {
    if (state.fitted.w) fields.w = state.fitted.w;
    else fields.ws = state.fitted.ws;
  } else {
    fields.seed = Number($("seed").value) || 0;
  }
  fields.truncation = Number($("truncation").value);
  if ($("interp-enable").checked) {
    fields.interpolate = { seed: Number($("seed-b").value) || 0, t: Number($("interp-t").value) };
  }
  if ($("mix-enable").checked) {
    fields.mix = { seed: Number($("mix-seed").value) || 0, cutoff: Number($("mix-cutoff").value) };
  }
  fields.backend = $("backend").value;
  return fields;
}

function updateLabels() {
  $("yaw-value").textContent = `${$("yaw").value}°`;
  $("pitch-value").textContent = `${$("pitch").value}°`;
  $("truncation-value").textContent = Number($("truncation").value).toFixed(2);
  $("interp-t-value").textContent = Number($("interp-t").value).toFixed(2);
  $("mix-cutoff-value").textContent = $("mix-cutoff").value;
}

function scheduleRender() {
  updateLabels();
  if (state.rendering) {
    state.pending = true; // drawn as soon as the frame in progress is done
    return;
  }
  clearTimeout(state.renderTimer);
  state.renderTimer = setTimeout(render, state.local ? 0 : 40);
}

// -- in the browser -----------------------------------------------------------------------------

// The latent of the request in W, as the service resolves it: each latent truncated, then
// interpolated, then mixed. null when part of it needs the server (a W+ latent without w).
async function localLatent(fields) {
  const r = state.local;
  const m = r.manifest;
  const psi = fields.truncation;
  const numWs = m.num_ws || 1;
  const resolve = async (f) => {
    if (f.seed !== undefined) return { w: await r.wOfSeed(f.seed, psi) };
    if (!m.w_avg) return null;
    const wAvg = Float32Array.from(m.w_avg);
    if (f.w) return { w: local.truncate(Float32Array.from(f.w), wAvg, psi) };
    return { ws: f.ws.map((row) => local.truncate(Float32Array.from(row), wAvg, psi)) };
  };
  let latent = await resolve(fields);
  if (latent === null) return null;
  if (fields.interpolate) {
    latent = local.interpolateLatents(latent, await resolve(fields.interpolate), fields.interpolate.t, numWs);
  }
  if (fields.mix) {
    if (!m.num_ws || fields.mix.cutoff > m.num_ws) return null;
    latent = local.styleMix(latent, await resolve(fields.mix), fields.mix.cutoff, m.num_ws);
  }
  return latent;
}

// Why this frame cannot be drawn in the browser (null when it can).
function localBlocker(fields, yaw, pitch) {
  if (!state.local) return state.localStatus;
  if (fields.backend === "volumetric") return "the volumetric teacher was chosen";
  const range = state.local.manifest.pose_range;
  if (range && (Math.abs(yaw) > range.yaw_deg || Math.abs(pitch) > range.pitch_deg)) {
    return `pose beyond the student's range (|yaw| ≤ ${range.yaw_deg}°, |pitch| ≤ ${range.pitch_deg}°)`;
  }
  return null;
}

function draw(pixels, size) {
  const view = $("view");
  if (view.width !== size) view.width = view.height = size;
  view.getContext("2d").putImageData(new ImageData(pixels, size, size), 0, 0);
}

// What drew the canvas, for people (the stats line) and tests (data-* attributes).
function drawn(path, backend, ms, yaw, pitch) {
  const view = $("view");
  state.renders += 1;
  Object.assign(view.dataset, {
    renders: String(state.renders), path, backend, frameMs: ms.toFixed(2), yaw: String(yaw), pitch: String(pitch),
  });
}

async function renderLocal(fields, yaw, pitch) {
  const started = performance.now();
  const latent = await localLatent(fields);
  if (!latent || !latent.w) return false;
  const label = local.orbitLabel(yaw, pitch, state.local.manifest.camera);
  const frame = await state.local.render(latent.w, label);
  draw(frame.pixels, frame.size);
  const total = performance.now() - started;
  drawn("browser", state.local.ep, frame.ms, yaw, pitch);
  $("stats").textContent =
    `in the browser · ${state.local.label} · student ${frame.ms.toFixed(1)} ms · frame ${total.toFixed(1)} ms`;
  return true;
}

async function renderServer(fields, yaw, pitch, why) {
  const { response, elapsed } = await api("/render", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ...fields, yaw, pitch, format: "png" }),
  });
  const bitmap = await createImageBitmap(await response.blob());
  const view = $("view");
  if (view.width !== bitmap.width) {
    view.width = bitmap.width;
    view.height = bitmap.height;
  }
  view.getContext("2d").drawImage(bitmap, 0, 0);
  const h = response.headers;
  drawn("server", h.get("x-backend"), Number(h.get("x-model-time-ms")), yaw, pitch);
  const fallback = h.get("x-fallback") ? ` · fallback: ${h.get("x-fallback")}` : "";
  $("stats").textContent =
    `server · ${h.get("x-backend")} · model ${h.get("x-model-time-ms")} ms · ` +
    `round trip ${elapsed.toFixed(0)} ms · batch ${h.get("x-batch-size")}${fallback}` +
    (why ? ` · not in the browser: ${why}` : "");
}

async function render() {
  state.rendering = true;
  const fields = identityFields();
  const yaw = Number($("yaw").value);
  const pitch = Number($("pitch").value);
  try {
    let why = localBlocker(fields, yaw, pitch);
    if (why === null) {
      try {
        if (!(await renderLocal(fields, yaw, pitch))) why = "per-layer latents (W+ or style mixing) need the server";
      } catch (error) {
        why = `in-browser rendering failed: ${error.message}`;
      }
    }
    if (why !== null) await renderServer(fields, yaw, pitch, why);
    showError(null);
  } catch (error) {
    showError(error);
  } finally {
    state.rendering = false;
    if (state.pending) {
      state.pending = false;
      scheduleRender();
    }
  }
}

async function startLocal() {
  if (params.get("local") === "off" || !$("local-enable").checked) {
    state.localStatus = "in-browser rendering is off";
    $("local-status").textContent = state.localStatus;
    return;
  }
  try {
    if (typeof WebAssembly !== "object") throw new Error("no WebAssembly in this browser");
    const { response } = await api("/graphs/manifest.json");
    const manifest = await response.json();
    const bytes = manifest.graphs.student.bytes + manifest.graphs.mapping.bytes;
    const limit = Number(params.get("max_graph_mb") || 512) * 2 ** 20;
    if (bytes > limit) throw new Error(`the graphs are ${(bytes / 2 ** 20).toFixed(0)} MB, too big to download`);
    $("local-status").textContent = `loading ${(bytes / 2 ** 20).toFixed(1)} MB of graphs…`;
    const fetchBytes = async (path) => (await (await api(path)).response.arrayBuffer());
    const started = performance.now();
    state.local = await local.LocalRenderer.create(manifest, fetchBytes, {
      ep: params.get("ep") || "auto",
      threads: Number(params.get("threads") || 0),
    });
    const notes = state.local.notes.length ? ` (${state.local.notes.join("; ")})` : "";
    $("local-status").textContent =
      `in the browser: ${state.local.label}, ready in ${((performance.now() - started) / 1000).toFixed(1)} s` +
      `${crossOriginIsolated ? "" : " (not cross-origin isolated: one thread)"}${notes}`;
    scheduleRender();
  } catch (error) {
    state.local = null;
    state.localStatus = error.message;
    $("local-status").textContent = `the server renders: ${error.message}`;
  }
}

// Median time of `count` student frames at the current pose (for measurements and tests).
window.distill3dBench = async (count = 20) => {
  if (!state.local) return null;
  const fields = identityFields();
  const latent = await localLatent(fields);
  const label = local.orbitLabel(Number($("yaw").value), Number($("pitch").value), state.local.manifest.camera);
  const times = [];
  for (let i = 0; i < count; i++) times.push((await state.local.render(latent.w, label)).ms);
  times.sort((a, b) => a - b);
  return { ep: state.local.ep, label: state.local.label, median_ms: times[Math.floor(count / 2)], min_ms: times[0] };
};
window.distill3dLocal = local; // the seed, camera and edit functions, for tests

// -- orbit, inversion, models -------------------------------------------------------------------

async function playOrbit() {
  const button = $("orbit-button");
  button.disabled = true;
  $("orbit-stats").textContent = "rendering…";
  try {
    const body = {
      ...identityFields(),
      frames: 36,
      fps: 18,
      yaw_amplitude: Math.min(30, Number($("yaw").max)),
      pitch_amplitude: Math.min(5, Number($("pitch").max)),
      format: "webm",
    };
    const { response, elapsed } = await api("/orbit", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const blob = await response.blob();
    if (state.videoUrl) URL.revokeObjectURL(state.videoUrl);
    state.videoUrl = URL.createObjectURL(blob);
    const video = $("orbit");
    video.src = state.videoUrl;
    video.hidden = false;
    await video.play();
    const h = response.headers;
    $("orbit-stats").textContent =
      `${h.get("x-frames")} frames by ${h.get("x-backend")} · render ${h.get("x-render-time-ms")} ms` +
      ` · round trip ${elapsed.toFixed(0)} ms`;
    showError(null);
  } catch (error) {
    $("orbit-stats").textContent = "";
    showError(error);
  } finally {
    button.disabled = false;
  }
}

// The teacher's surface as a .glb (POST /mesh takes the identity fields /render takes; a student
// has no geometry, so the service extracts the mesh from its teacher).
async function downloadMesh() {
  const button = $("mesh-button");
  button.disabled = true;
  $("orbit-stats").textContent = "extracting the mesh…";
  try {
    const { response, elapsed } = await api("/mesh", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ...identityFields(), format: "glb" }),
    });
    const url = URL.createObjectURL(await response.blob());
    const link = document.createElement("a");
    const disposition = response.headers.get("content-disposition") || "";
    link.href = url;
    link.download = (disposition.match(/filename="([^"]+)"/) || [null, "distill3d.glb"])[1];
    link.click();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    $("orbit-stats").textContent =
      `mesh: ${response.headers.get("x-vertices")} vertices · ${elapsed.toFixed(0)} ms`;
    showError(null);
  } catch (error) {
    $("orbit-stats").textContent = "";
    showError(error);
  } finally {
    button.disabled = false;
  }
}

async function fitPhoto() {
  const file = $("photo").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("image", file);
  const backend = $("backend").value === "volumetric" ? "volumetric" : "auto";
  form.append("backend", backend);
  $("fit-button").disabled = true;
  $("fit-status").textContent = `fitting ${file.name}…`;
  try {
    const { response, elapsed } = await api("/invert", { method: "POST", body: form });
    const latent = await response.json();
    state.fitted = latent;
    const fit = latent.metadata.fit;
    $("fit-status").textContent =
      `fitted through the ${response.headers.get("x-backend")}: PSNR ${fit.psnr_db.toFixed(1)} dB ` +
      `in ${fit.seconds.toFixed(1)} s (${fit.steps} steps; round trip ${(elapsed / 1000).toFixed(1)} s)`;
    $("identity-photo").disabled = false;
    $("identity-photo").checked = true;
    $("yaw").value = Math.round(latent.yaw);
    $("pitch").value = Math.round(latent.pitch);
    $("truncation").value = 1;
    scheduleRender();
    showError(null);
  } catch (error) {
    $("fit-status").textContent = "";
    showError(error);
  } finally {
    $("fit-button").disabled = !$("photo").files.length;
  }
}

async function loadModels() {
  try {
    const { response } = await api("/v1/models");
    const info = await response.json();
    state.models = info;
    const roles = info.models.map((m) => m.role);
    $("models").textContent = info.models
      .map((m) => `${m.role}: ${m.backend} ${m.img_resolution}px on ${m.device}`)
      .join(" · ");
    for (const option of $("backend").options) {
      option.disabled = option.value !== "auto" && !roles.includes(option.value);
    }
    // Slider ranges: the widest loaded model's (auto routes poses beyond the student's).
    const yaw = Math.max(...info.models.map((m) => m.pose_range.yaw_deg));
    const pitch = Math.max(...info.models.map((m) => m.pose_range.pitch_deg));
    $("yaw").min = -Math.floor(yaw);
    $("yaw").max = Math.floor(yaw);
    $("pitch").min = -Math.floor(pitch);
    $("pitch").max = Math.floor(pitch);
    if (info.latent?.num_ws) $("mix-cutoff").max = info.latent.num_ws;
  } catch (error) {
    showError(error);
  }
}

function wire() {
  for (const id of ["yaw", "pitch", "truncation", "interp-t", "mix-cutoff"]) {
    $(id).addEventListener("input", scheduleRender);
  }
  for (const id of ["seed", "seed-b", "interp-enable", "mix-enable", "mix-seed", "backend"]) {
    $(id).addEventListener("change", scheduleRender);
  }
  for (const radio of document.querySelectorAll('input[name="identity"]')) {
    radio.addEventListener("change", scheduleRender);
  }
  $("random-seed").addEventListener("click", () => {
    $("seed").value = Math.floor(Math.random() * 100000);
    document.querySelector('input[name="identity"][value="seed"]').checked = true;
    scheduleRender();
  });
  $("photo").addEventListener("change", () => {
    $("fit-button").disabled = !$("photo").files.length;
  });
  $("fit-button").addEventListener("click", fitPhoto);
  $("orbit-button").addEventListener("click", playOrbit);
  $("mesh-button").addEventListener("click", downloadMesh);
  $("local-enable").checked = params.get("local") !== "off";
  $("local-enable").addEventListener("change", () => {
    if ($("local-enable").checked) startLocal();
    else {
      state.local = null;
      state.localStatus = "in-browser rendering is off";
      $("local-status").textContent = state.localStatus;
    }
    scheduleRender();
  });
  $("api-key").addEventListener("change", () => {
    sessionStorage.setItem("distill3d-api-key", $("api-key").value);
    loadModels().then(scheduleRender).then(startLocal);
  });
}

wire();
loadModels().then(scheduleRender);
startLocal();

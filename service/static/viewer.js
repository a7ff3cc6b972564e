// distill3d viewer: every control change re-renders through POST /render; the orbit button
// plays POST /orbit; a photo is fitted through POST /invert and then rendered like a seed.
// Plain browser JavaScript, no build step and nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);

const state = {
  fitted: null, // the latent file /invert returned
  renderAbort: null,
  renderTimer: null,
  imageUrl: null,
  videoUrl: null,
  renders: 0,
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

function identityFields() {
  const usePhoto = document.querySelector('input[name="identity"]:checked').value === "photo";
  const fields = {};
  if (usePhoto && state.fitted) {
    if (state.fitted.w) fields.w = state.fitted.w;
    else fields.ws = state.fitted.ws;
  } else {
    fields.seed = Number($("seed").value) || 0;
  }
  fields.truncation = Number($("truncation").value);
  if ($("interp-enable").checked) {
    fields.interpolate = { seed: Number($("seed-b").value) || 0, t: Number($("interp-t").value) };
  }
  fields.backend = $("backend").value;
  return fields;
}

function updateLabels() {
  $("yaw-value").textContent = `${$("yaw").value}°`;
  $("pitch-value").textContent = `${$("pitch").value}°`;
  $("truncation-value").textContent = Number($("truncation").value).toFixed(2);
  $("interp-t-value").textContent = Number($("interp-t").value).toFixed(2);
}

function scheduleRender() {
  updateLabels();
  clearTimeout(state.renderTimer);
  state.renderTimer = setTimeout(render, 40);
}

async function render() {
  if (state.renderAbort) state.renderAbort.abort(); // only the latest pose matters
  const abort = new AbortController();
  state.renderAbort = abort;
  const body = {
    ...identityFields(),
    yaw: Number($("yaw").value),
    pitch: Number($("pitch").value),
    format: "png",
  };
  try {
    const { response, elapsed } = await api("/render", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: abort.signal,
    });
    const blob = await response.blob();
    if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
    state.imageUrl = URL.createObjectURL(blob);
    const view = $("view");
    view.onload = () => {
      state.renders += 1;
      view.dataset.renders = String(state.renders);
    };
    view.src = state.imageUrl;
    const h = response.headers;
    const fallback = h.get("x-fallback") ? ` · fallback: ${h.get("x-fallback")}` : "";
    $("stats").textContent =
      `${h.get("x-backend")} · model ${h.get("x-model-time-ms")} ms · ` +
      `round trip ${elapsed.toFixed(0)} ms · batch ${h.get("x-batch-size")}${fallback}`;
    showError(null);
  } catch (error) {
    showError(error);
  }
}

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
  } catch (error) {
    showError(error);
  }
}

function wire() {
  for (const id of ["yaw", "pitch", "truncation", "interp-t"]) {
    $(id).addEventListener("input", scheduleRender);
  }
  for (const id of ["seed", "seed-b", "interp-enable", "backend"]) {
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
  $("api-key").addEventListener("change", () => {
    sessionStorage.setItem("distill3d-api-key", $("api-key").value);
    loadModels().then(scheduleRender);
  });
}

wire();
loadModels().then(scheduleRender);

// distill3d viewer, in-browser rendering: the student's exported graphs (GET /graphs/*) run in
// onnxruntime-web (vendored under /static/vendor, nothing fetched from elsewhere): WebGPU where
// the browser has an adapter, else WASM with SIMD and, when the page is cross-origin isolated,
// threads. The seed -> z, yaw/pitch -> camera and W-space edits are the server's, written again
// here so that a slider move needs no server round trip.
"use strict";

export const VENDOR = "/static/vendor/onnxruntime-web/";

// -- seeds: numpy.random.RandomState(seed).randn(n) ---------------------------------------------

// MT19937 as numpy's legacy seeding (init_genrand for an integer seed) and generator.
class MT19937 {
  constructor(seed) {
    this.mt = new Uint32Array(624);
    this.mt[0] = seed >>> 0;
    for (let i = 1; i < 624; i++) {
      const prev = this.mt[i - 1] ^ (this.mt[i - 1] >>> 30);
      this.mt[i] = (Math.imul(1812433253, prev) + i) >>> 0;
    }
    this.index = 624;
  }

  twist() {
    const mt = this.mt;
    for (let i = 0; i < 624; i++) {
      const y = (mt[i] & 0x80000000) | (mt[(i + 1) % 624] & 0x7fffffff);
      let v = mt[(i + 397) % 624] ^ (y >>> 1);
      if (y & 1) v ^= 0x9908b0df;
      mt[i] = v;
    }
    this.index = 0;
  }

  next32() {
    if (this.index >= 624) this.twist();
    let y = this.mt[this.index++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  // numpy's random_sample: 53 random bits from two draws.
  nextDouble() {
    const a = this.next32() >>> 5;
    const b = this.next32() >>> 6;
    return (a * 67108864.0 + b) / 9007199254740992.0;
  }
}

// z of a seed: numpy's legacy Gaussian (polar Box-Muller, the spare value kept), as float32.
export function zFromSeed(seed, n) {
  const rng = new MT19937(seed);
  const z = new Float32Array(n);
  let spare = null;
  for (let i = 0; i < n; i++) {
    if (spare !== null) {
      z[i] = spare;
      spare = null;
      continue;
    }
    let x1;
    let x2;
    let r2;
    do {
      x1 = 2.0 * rng.nextDouble() - 1.0;
      x2 = 2.0 * rng.nextDouble() - 1.0;
      r2 = x1 * x1 + x2 * x2;
    } while (r2 >= 1.0 || r2 === 0.0);
    const f = Math.sqrt((-2.0 * Math.log(r2)) / r2);
    spare = f * x1;
    z[i] = f * x2;
  }
  return z;
}

// -- cameras: models.camera.Camera.orbit and its 25-number label --------------------------------

const sub = (a, b) => [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
const cross = (a, b) => [
  a[1] * b[2] - a[2] * b[1],
  a[2] * b[0] - a[0] * b[2],
  a[0] * b[1] - a[1] * b[0],
];
const normalize = (v) => {
  const n = Math.hypot(v[0], v[1], v[2]);
  return [v[0] / n, v[1] / n, v[2] / n];
};

// The camera on the orbit of `camera.radius` around the origin at yaw/pitch degrees, looking
// at `camera.pivot` (OpenCV axes: x right, y down, z forward), with its normalised intrinsics.
export function orbitLabel(yawDeg, pitchDeg, camera) {
  if (!(Math.abs(pitchDeg) < 90)) throw new Error("pitch must be strictly between -90 and 90");
  const theta = Math.PI / 2 + (yawDeg * Math.PI) / 180;
  const phi = Math.PI / 2 - (pitchDeg * Math.PI) / 180;
  const r = camera.radius;
  const origin = [
    r * Math.sin(phi) * Math.cos(Math.PI - theta),
    r * Math.cos(phi),
    r * Math.sin(phi) * Math.sin(Math.PI - theta),
  ];
  const forward = normalize(normalize(sub(camera.pivot, origin)));
  const right = normalize(cross([0, 1, 0], forward)).map((x) => -x);
  const down = normalize(cross(forward, right));
  const f = camera.focal_length;
  return Float32Array.from([
    right[0], down[0], forward[0], origin[0],
    right[1], down[1], forward[1], origin[1],
    right[2], down[2], forward[2], origin[2],
    0, 0, 0, 1,
    f, 0, 0.5, 0, f, 0.5, 0, 0, 1,
  ]);
}

// -- W-space edits: models.editing in float32 ---------------------------------------------------

// torch.lerp(a, b, t) for float32: a + t (b - a) below t = 0.5, b - (b - a)(1 - t) from there.
export function lerp(a, b, t) {
  const out = new Float32Array(a.length);
  const tf = Math.fround(t);
  const small = Math.abs(tf) < 0.5;
  const rest = Math.fround(1 - tf);
  for (let i = 0; i < a.length; i++) {
    const d = Math.fround(b[i] - a[i]);
    out[i] = small ? Math.fround(a[i] + Math.fround(tf * d)) : Math.fround(b[i] - Math.fround(d * rest));
  }
  return out;
}

// truncate(w, w_avg, psi) = lerp(w_avg, w, psi).
export const truncate = (w, wAvg, psi) => lerp(wAvg, w, psi);

// A latent is {w} (one row, every layer) or {ws} (num_ws rows); one row when all rows agree.
function rowsOf(latent, numWs) {
  return latent.ws ?? Array.from({ length: numWs }, () => latent.w);
}

function simplify(rows) {
  const same = rows.every((row) => row.every((v, i) => v === rows[0][i]));
  return same ? { w: Float32Array.from(rows[0]) } : { ws: rows.map((r) => Float32Array.from(r)) };
}

export function interpolateLatents(a, b, t, numWs) {
  if (a.w && b.w) return { w: lerp(a.w, b.w, t) };
  const ra = rowsOf(a, numWs);
  const rb = rowsOf(b, numWs);
  return simplify(ra.map((row, k) => lerp(row, rb[k], t)));
}

// style_mix: rows [0, cutoff) from `coarse`, [cutoff, num_ws) from `fine`.
export function styleMix(coarse, fine, cutoff, numWs) {
  if (!(cutoff >= 0 && cutoff <= numWs)) throw new Error(`cutoff must be in [0, ${numWs}]`);
  const a = rowsOf(coarse, numWs);
  const b = rowsOf(fine, numWs);
  return simplify([...a.slice(0, cutoff), ...b.slice(cutoff)]);
}

// -- the renderer -------------------------------------------------------------------------------

// [1, 3, H, W] in [-1, 1] -> RGBA bytes, as models.images.batch_to_uint8 (float32 x * 127.5 +
// 128, clamped, truncated).
function toRgba(data, size) {
  const plane = size * size;
  const out = new Uint8ClampedArray(plane * 4);
  for (let p = 0; p < plane; p++) {
    for (let ch = 0; ch < 3; ch++) {
      const v = Math.fround(Math.fround(data[ch * plane + p] * 127.5) + 128);
      out[p * 4 + ch] = Math.trunc(Math.min(255, Math.max(0, v)));
    }
    out[p * 4 + 3] = 255;
  }
  return out;
}

async function loadRuntime(kind, threads) {
  const ort = await import(VENDOR + (kind === "webgpu" ? "ort.webgpu.min.mjs" : "ort.wasm.min.mjs"));
  ort.env.wasm.wasmPaths = VENDOR;
  ort.env.wasm.numThreads = threads;
  ort.env.logLevel = "error";
  return ort;
}

export class LocalRenderer {
  // `fetchBytes(path)` returns a graph's bytes (the page's authorised fetch); `options`:
  // ep ("auto" | "wasm" | "webgpu") and threads (0 = as many as useful).
  static async create(manifest, fetchBytes, options = {}) {
    if (typeof WebAssembly !== "object") throw new Error("no WebAssembly in this browser");
    const isolated = globalThis.crossOriginIsolated === true;
    const cores = navigator.hardwareConcurrency || 1;
    const threads = isolated ? Math.max(1, options.threads || Math.min(4, cores)) : 1;
    const [studentBytes, mappingBytes] = await Promise.all([
      fetchBytes(manifest.graphs.student.url),
      fetchBytes(manifest.graphs.mapping.url),
    ]);
    const wanted = options.ep || "auto";
    const tried = [];
    if (wanted !== "wasm" && navigator.gpu) {
      try {
        const adapter = await navigator.gpu.requestAdapter();
        if (!adapter) throw new Error("no WebGPU adapter");
        const ort = await loadRuntime("webgpu", threads);
        const renderer = await LocalRenderer.open(ort, "webgpu", manifest, studentBytes, mappingBytes, threads);
        await renderer.warmUp();
        return renderer;
      } catch (error) {
        tried.push(`WebGPU: ${error.message || error}`);
        if (wanted === "webgpu") throw new Error(tried.join("; "));
      }
    } else if (wanted === "webgpu") {
      throw new Error("no navigator.gpu in this browser");
    }
    const ort = await loadRuntime("wasm", threads);
    const renderer = await LocalRenderer.open(ort, "wasm", manifest, studentBytes, mappingBytes, threads);
    renderer.notes = tried;
    await renderer.warmUp();
    return renderer;
  }

  static async open(ort, ep, manifest, studentBytes, mappingBytes, threads) {
    const options = { executionProviders: [ep], graphOptimizationLevel: "all" };
    const student = await ort.InferenceSession.create(new Uint8Array(studentBytes), options);
    const mapping = await ort.InferenceSession.create(new Uint8Array(mappingBytes), {
      executionProviders: ["wasm"],
    });
    return new LocalRenderer(ort, ep, manifest, student, mapping, threads);
  }

  constructor(ort, ep, manifest, student, mapping, threads) {
    this.ort = ort;
    this.ep = ep;
    this.manifest = manifest;
    this.student = student;
    this.mapping = mapping;
    this.threads = ep === "wasm" ? threads : null;
    this.size = manifest.img_resolution;
    this.notes = [];
    this.wCache = new Map();
  }

  get label() {
    if (this.ep === "webgpu") return "WebGPU";
    return `WASM SIMD, ${this.threads} thread${this.threads === 1 ? "" : "s"}`;
  }

  async warmUp() {
    const m = this.manifest;
    const w = m.w_avg ? Float32Array.from(m.w_avg) : new Float32Array(m.w_dim);
    await this.render(w, orbitLabel(0, 0, m.camera));
  }

  // w of a seed, mapped with mapping.onnx (frontal conditioning) and truncated by psi.
  async wOfSeed(seed, psi) {
    const key = `${seed}:${psi}`;
    if (!this.wCache.has(key)) {
      const { Tensor } = this.ort;
      const z = zFromSeed(seed, this.manifest.z_dim);
      const feeds = {
        z: new Tensor("float32", z, [1, z.length]),
        truncation_psi: new Tensor("float32", Float32Array.of(psi), [1, 1]),
      };
      const out = await this.mapping.run(feeds);
      this.wCache.set(key, Float32Array.from(out.w.data));
      if (this.wCache.size > 64) this.wCache.delete(this.wCache.keys().next().value);
    }
    return this.wCache.get(key);
  }

  // One frame: w [w_dim] and a camera label [25] -> {pixels (RGBA), size, ms}.
  async render(w, label) {
    const { Tensor } = this.ort;
    const started = performance.now();
    const out = await this.student.run({
      w: new Tensor("float32", w, [1, w.length]),
      c: new Tensor("float32", label, [1, 25]),
    });
    const image = out.image;
    const data = image.location === "gpu-buffer" ? await image.getData() : image.data;
    const pixels = toRgba(data, this.size);
    return { pixels, size: this.size, ms: performance.now() - started };
  }
}

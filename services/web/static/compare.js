// Before/after comparison of a job's asset in 3D: two views through ONE camera, put at the job's own
// orbit positions by buttons, shown side by side, split by a slider, or toggled; a time slider for 4D.
//
//   const comparison = mountComparison(root, {before: [{url, fileType}], after: [{url, fileType}],
//     orbit: {center, radius, elevationDeg}, azimuths: [0, 20, -20], labels: {before, after}});
//   // orbit may also give fovyDeg (49.1); a missing or 0 radius frames the assets from their bounds.
//   await comparison.ready;  // root.dataset.ready === "1"; on failure root.dataset.error says why
//
// Both views share the camera object, and both views' orbit controls share the target point, so
// dragging in either moves the one camera both draw with: they cannot drift apart. Split and toggle
// stack the two canvases in one place (the after one clipped, or hidden), so every mode keeps both
// assets loaded and switching is instant. Styles live in compare.css (classes prefixed tc-), and
// nothing here writes inline style text, so the page's Content-Security-Policy can keep
// `style-src 'self'`; the split position is a CSS custom property set through the CSSOM.
import * as THREE from "three";
import {
  SplatView,
  element,
  frameMeshes,
  loadSplatMesh,
  normalizeOrbit,
  orbitCamera,
  orbitControls,
  placeCamera,
  scaleToOrbit,
  showFailure,
  whenSettled,
} from "./splat_scene.js";

export const MODES = { "side-by-side": "Side by side", split: "Split", toggle: "Toggle" };
const DEFAULT_FPS = 4; // 4D playback: time steps per second
const SPLIT_KEY_STEP = 0.05; // arrow keys move the split by 5% of the width

/** Mounts the comparison in `root`; returns its controller (see the module's comment). */
export function mountComparison(root, options) {
  const before = options.before ?? [];
  const after = options.after ?? [];
  // Without a radius (a job that recorded no framing) the orbit is fitted to the assets once loaded.
  const fitOrbit = !(Number(options.orbit?.radius) > 0);
  let orbit = normalizeOrbit(options.orbit);
  const azimuths = (options.azimuths?.length ? options.azimuths : [0]).map(Number);
  const labels = { before: "Before", after: "After", ...options.labels };
  const steps = before.length;
  const state = { mode: "side-by-side", showing: "before", time: 0, split: 0.5, timer: 0, disposed: false };

  delete root.dataset.ready;
  delete root.dataset.error;
  root.classList.add("tc-compare");
  const built = []; // top-level nodes this mount added, removed by dispose

  // 1. The controls: mode, azimuths, the toggle's flip button.
  const modeButtons = Object.entries(MODES).map(([name, text]) =>
    element("button", "tc-mode", { type: "button", "data-mode": name, "aria-pressed": "false" }, text),
  );
  const azimuthButtons = azimuths.map((azimuth) =>
    element(
      "button",
      "tc-azimuth",
      {
        type: "button",
        "data-azimuth": String(azimuth),
        "aria-pressed": "false",
        "aria-label": `View from azimuth ${azimuth} degrees`,
        title: `The job's view at azimuth ${azimuth}°`,
      },
      `${azimuth}°`,
    ),
  );
  const flipButton = element(
    "button",
    "tc-flip",
    { type: "button", "aria-pressed": "false", title: "Flip between before and after (key T)" },
    "",
  );
  const toolbar = element(
    "div",
    "tc-toolbar",
    { role: "toolbar", "aria-label": "Comparison controls" },
    element("div", "tc-group", { role: "group", "aria-label": "View mode" }, ...modeButtons),
    element("div", "tc-group", { role: "group", "aria-label": "Camera azimuth" }, ...azimuthButtons),
    flipButton,
  );

  // 2. The stage: one view per side, and the split mode's divider.
  const viewBoxes = {
    before: element("div", "tc-view tc-view-before", {}, element("span", "tc-label", {}, labels.before)),
    after: element("div", "tc-view tc-view-after", {}, element("span", "tc-label", {}, labels.after)),
  };
  const divider = element("div", "tc-divider", {
    role: "slider",
    tabindex: "0",
    "aria-label": `Split position: ${labels.before} left of it, ${labels.after} right of it`,
    "aria-valuemin": "0",
    "aria-valuemax": "100",
    "aria-orientation": "horizontal",
  });
  const stage = element("div", "tc-stage", {}, viewBoxes.before, viewBoxes.after, divider);

  // 3. For 4D, the time slider and play button.
  const playButton = element("button", "tc-play", { type: "button", "aria-pressed": "false" }, "Play");
  const timeSlider = element("input", "tc-time", {
    type: "range",
    min: "0",
    max: String(Math.max(0, steps - 1)),
    step: "1",
    value: "0",
    "aria-label": "Time step",
  });
  const timeLabel = element("output", "tc-time-label", { "aria-live": "off" }, "");
  const timeline = element("div", "tc-timeline", { role: "group", "aria-label": "Time" }, playButton, timeSlider, timeLabel);
  const status = element("p", "tc-status", { role: "status" }, `Loading ${labels.before} and ${labels.after}…`);

  built.push(toolbar, stage, status);
  if (steps > 1) built.splice(2, 0, timeline);
  root.append(...built);

  // A failure leaves only its message: empty views and dead buttons would only confuse.
  const failed = (message) => {
    teardown();
    built.push(showFailure(root, message));
    return Promise.reject(new Error(message));
  };
  const controller = {
    ready: null,
    setAzimuth,
    setMode,
    setTime,
    flip,
    showing: () => state.showing,
    settled: () => whenSettled(views),
    dispose,
  };
  let views = [];
  let controls = [];

  if (!steps || after.length !== steps) {
    controller.ready = failed(
      `The comparison needs the same number of time steps on both sides, got ${steps} before and ${after.length} after.`,
    );
    controller.ready.catch(() => {});
    return controller;
  }

  // 4. One camera for both views; each canvas gets controls that move it about the shared target.
  const camera = orbitCamera(orbit);
  const target = new THREE.Vector3();
  const background = getComputedStyle(root).getPropertyValue("--tc-background").trim() || "#ffffff";
  try {
    views = ["before", "after"].map(
      (side) => new SplatView(viewBoxes[side], camera, { label: `${labels[side]}: 3D view`, background }),
    );
  } catch (error) {
    controller.ready = failed(`This browser cannot show 3D views (WebGL2 is needed): ${error.message}`);
    controller.ready.catch(() => {});
    return controller;
  }
  controls = views.map((view) => orbitControls(camera, view.canvas, orbit, target));
  for (const control of controls) {
    control.addEventListener("change", () => {
      for (const view of views) view.requestRender();
    });
    // A drag leaves the job's positions: no azimuth button is "current" any more.
    control.addEventListener("start", () => markAzimuth(null));
  }

  // 5. Wiring.
  for (const button of modeButtons) button.addEventListener("click", () => setMode(button.dataset.mode));
  azimuthButtons.forEach((button, i) => button.addEventListener("click", () => setAzimuth(azimuths[i])));
  flipButton.addEventListener("click", flip);
  playButton.addEventListener("click", () => (state.timer ? pause() : play()));
  timeSlider.addEventListener("input", () => {
    pause();
    setTime(Number(timeSlider.value));
  });
  divider.addEventListener("pointerdown", (event) => {
    divider.setPointerCapture(event.pointerId);
    event.preventDefault();
  });
  divider.addEventListener("pointermove", (event) => {
    if (!divider.hasPointerCapture(event.pointerId)) return;
    const box = stage.getBoundingClientRect();
    setSplit((event.clientX - box.left) / box.width);
  });
  divider.addEventListener("keydown", (event) => {
    const moves = { ArrowLeft: -SPLIT_KEY_STEP, ArrowRight: SPLIT_KEY_STEP, Home: -1, End: 1 };
    if (!(event.key in moves)) return;
    setSplit(state.split + moves[event.key]);
    event.preventDefault();
  });
  root.addEventListener("keydown", onKey);

  setMode(state.mode);
  setSplit(state.split);
  setTime(0);
  setAzimuth(azimuths[0]);

  // 6. Load every time step of both sides; ready once both views have drawn their first frame.
  controller.ready = (async () => {
    const sides = { before, after };
    const loads = ["before", "after"].map((side) =>
      Promise.allSettled(
        sides[side].map((frame, i) =>
          loadSplatMesh(frame.url, frame.fileType, steps > 1 ? `${labels[side]} (time step ${i + 1})` : labels[side]),
        ),
      ),
    );
    const results = await Promise.all(loads);
    const problem = results.flat().find((result) => result.status === "rejected");
    if (problem || state.disposed) {
      for (const result of results.flat()) if (result.status === "fulfilled") result.value.dispose();
      if (state.disposed) throw new Error("The comparison was closed before it loaded.");
      throw problem.reason;
    }
    const meshes = results.map((side) => side.map((result) => result.value));
    if (fitOrbit) {
      orbit = frameMeshes(meshes.flat(), orbit.elevationDeg, orbit.fovyDeg);
      scaleToOrbit(camera, controls, orbit);
      setAzimuth(azimuths[0]);
    }
    meshes.forEach((side, i) => views[i].setMeshes(side));
    setTime(state.time);
    await Promise.all(views.map((view) => view.drawn));
    status.remove();
    root.dataset.ready = "1";
    return controller;
  })().catch((error) => (state.disposed ? Promise.reject(error) : failed(error.message)));
  controller.ready.catch(() => {}); // a failure is shown in root; an unobserved rejection is not an error
  return controller;

  function onKey(event) {
    const typing = event.target instanceof HTMLInputElement || event.target instanceof HTMLTextAreaElement;
    if (state.mode === "toggle" && !typing && (event.key === "t" || event.key === "T")) flip();
  }

  function setAzimuth(degrees) {
    placeCamera(camera, target, orbit, Number(degrees));
    markAzimuth(Number(degrees));
    for (const view of views) view.jump();
  }

  function markAzimuth(degrees) {
    azimuthButtons.forEach((button, i) => button.setAttribute("aria-pressed", String(azimuths[i] === degrees)));
  }

  function setMode(name) {
    const mode = String(name).replaceAll(" ", "-");
    if (!(mode in MODES)) throw new Error(`unknown mode ${name}; expected one of ${Object.keys(MODES).join(", ")}`);
    state.mode = mode;
    root.dataset.mode = mode;
    stage.dataset.mode = mode;
    for (const button of modeButtons) button.setAttribute("aria-pressed", String(button.dataset.mode === mode));
    flipButton.hidden = mode !== "toggle";
    divider.hidden = mode !== "split";
    showSide(state.showing);
  }

  function flip() {
    showSide(state.showing === "before" ? "after" : "before");
  }

  function showSide(side) {
    state.showing = side;
    stage.dataset.showing = side;
    root.dataset.showing = side;
    const other = side === "before" ? labels.after : labels.before;
    flipButton.textContent = `Showing ${labels[side]}: show ${other}`;
    flipButton.setAttribute("aria-pressed", String(side === "after"));
  }

  function setSplit(fraction) {
    state.split = Math.min(1, Math.max(0, fraction));
    const percent = Math.round(state.split * 1000) / 10;
    stage.style.setProperty("--tc-split", `${percent}%`); // CSSOM, allowed under style-src 'self'
    divider.setAttribute("aria-valuenow", String(percent));
    divider.setAttribute("aria-valuetext", `${percent}% ${labels.before}`);
  }

  function setTime(index) {
    state.time = Math.min(steps - 1, Math.max(0, Math.round(Number(index)) || 0));
    timeSlider.value = String(state.time);
    timeLabel.textContent = `${state.time + 1} / ${steps}`;
    root.dataset.time = String(state.time);
    for (const view of views) if (view.meshes.length) view.show(state.time);
  }

  function play() {
    const fps = Number(options.fps) > 0 ? Number(options.fps) : DEFAULT_FPS;
    state.timer = setInterval(() => setTime((state.time + 1) % steps), 1000 / fps);
    playButton.textContent = "Pause";
    playButton.setAttribute("aria-pressed", "true");
  }

  function pause() {
    clearInterval(state.timer);
    state.timer = 0;
    playButton.textContent = "Play";
    playButton.setAttribute("aria-pressed", "false");
  }

  function teardown() {
    pause();
    root.removeEventListener("keydown", onKey);
    for (const control of controls) control.dispose();
    for (const view of views) view.dispose();
    controls = [];
    views = [];
    for (const node of built) node.remove();
    built.length = 0;
  }

  function dispose() {
    state.disposed = true;
    teardown();
    root.classList.remove("tc-compare");
    for (const key of ["ready", "error", "mode", "showing", "time"]) delete root.dataset[key];
  }
}

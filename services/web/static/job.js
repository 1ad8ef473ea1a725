// A job's page: its steps and ring views as they happen (server-sent events from WatchJob), and, once it
// succeeded, the input and the repaired asset side by side in 3D.
import { showError } from "/static/console.js";
import { mountComparison } from "/static/compare.js";

const section = document.getElementById("job");
const jobId = section.dataset.job;
const steps = document.getElementById("steps");
const rings = document.getElementById("rings");
const progress = document.getElementById("progress");
const progressText = document.getElementById("progress-text");
const stateBadge = document.getElementById("state");
const objectUrl = (uri) => `/jobs/${jobId}/objects?uri=${encodeURIComponent(uri)}`;
const stepItems = new Map();
let started = 0;
let finished = 0;

function stepItem(name, timeStep) {
  const key = `${timeStep ?? 0}/${name}`;
  if (!stepItems.has(key)) {
    const item = document.createElement("li");
    item.className = "step running";
    item.textContent = timeStep ? `t${timeStep} ${name}` : name;
    steps.append(item);
    stepItems.set(key, item);
  }
  return stepItems.get(key);
}

function ringGallery(ring) {
  let gallery = rings.querySelector(`[data-ring="${ring}"]`);
  if (!gallery) {
    rings.querySelector("p.muted")?.remove();
    gallery = document.createElement("div");
    gallery.className = "ring";
    gallery.dataset.ring = ring;
    const title = document.createElement("h3");
    title.textContent = `Ring ${ring}`;
    gallery.append(title);
    rings.append(gallery);
  }
  return gallery;
}

function onEvent(event) {
  if (event.step_started) {
    started += 1;
    stepItem(event.step_started.step, event.step_started.time_step);
  } else if (event.step_finished) {
    finished += 1;
    const { step, time_step: timeStep, seconds = 0, resumed } = event.step_finished;
    const item = stepItem(step, timeStep);
    item.className = "step done";
    item.textContent += ` · ${Number(seconds).toFixed(1)} s${resumed ? " (done before a restart)" : ""}`;
    const inpainted = step.match(/^ring(\d+)\/inpaint\/(-?[\d.]+)/);
    if (inpainted) {
      for (const artifact of event.step_finished.artifacts ?? []) {
        for (const uri of artifact.tensor?.preview_uris ?? []) {
          const figure = document.createElement("figure");
          const picture = document.createElement("img");
          picture.src = objectUrl(uri);
          picture.alt = `Ring ${inpainted[1]}, azimuth ${inpainted[2]}°, inpainted`;
          const caption = document.createElement("figcaption");
          caption.textContent = `${inpainted[2]}°`;
          figure.append(picture, caption);
          ringGallery(inpainted[1]).append(figure);
        }
      }
    }
  } else if (event.step_failed) {
    const failure = event.step_failed;
    const item = stepItem(failure.step, failure.time_step);
    item.className = "step failed";
    item.textContent += ` · ${failure.code}: ${failure.message}`;
  } else if (event.waiting) {
    progressText.textContent = `waiting for ${event.waiting.step}: trying again in ${Number(event.waiting.retry_in_s).toFixed(0)} s`;
    return;
  } else if (event.warning) {
    const item = document.createElement("li");
    item.className = "step warning";
    item.textContent = `warning: ${event.warning.message}`;
    steps.append(item);
  } else if (event.finished) {
    stateBadge.textContent = event.finished.state.replace("JOB_STATE_", "").toLowerCase();
  }
  progress.max = Math.max(Number(progress.max), started);
  progress.value = finished;
  progressText.textContent = `${finished} steps done · ${[...stepItems.keys()].pop()?.split("/").slice(1).join("/") ?? ""}`;
}

const source = new EventSource(`/jobs/${jobId}/events`);
source.addEventListener("job-event", (message) => onEvent(JSON.parse(message.data)));
source.addEventListener("api-error", (message) => {
  source.close();
  showError(document.getElementById("live-error"), JSON.parse(message.data));
});
source.addEventListener("end", () => {
  source.close();
  // A job that ended while the page was open: load it again for its outputs.
  if (!["succeeded", "failed", "cancelled"].includes(section.dataset.state)) window.location.reload();
});

const compare = document.getElementById("compare");
if (compare) {
  const options = JSON.parse(compare.dataset.options);
  const side = (frames) => frames.map((frame) => ({ url: objectUrl(frame.uri), fileType: frame.fileType }));
  window.tireComparison = mountComparison(compare, { ...options, before: side(options.before), after: side(options.after) });
}

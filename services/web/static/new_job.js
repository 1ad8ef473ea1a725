// The new-job page: preview the dropped asset in 3D, upload the files (straight to the store through the
// presigned URLs, or through the console when the store is out of the browser's reach), then submit.
import { callConsole, csrfToken, showError, ApiError } from "/static/console.js";
import { mountViewer } from "/static/viewer.js";

const form = document.getElementById("new-job");
const mediaTypes = JSON.parse(form.dataset.mediaTypes);
const maxBytes = Number(form.dataset.maxBytes);
const assetInput = document.getElementById("asset");
const referenceInput = document.getElementById("reference");
const preview = document.getElementById("preview");
const referencePreview = document.getElementById("reference-preview");
const errorBox = document.getElementById("form-error");
const status = document.getElementById("status");
const progress = document.getElementById("upload-progress");
const submitButton = document.getElementById("submit");
let viewer = null;

function extensionOf(name) {
  const dot = name.lastIndexOf(".");
  return dot < 0 ? "" : name.slice(dot).toLowerCase();
}

// The files' problems, one sentence each, before anything is uploaded.
function checkFiles(files, allowed, what) {
  if (!files.length) return [`Choose ${what}.`];
  return [...files].flatMap((file) => {
    const extension = extensionOf(file.name);
    if (!allowed.includes(extension)) return [`${file.name}: ${what} must be one of ${allowed.join(", ")}.`];
    if (file.size === 0) return [`${file.name} is empty.`];
    if (file.size > maxBytes) return [`${file.name} is larger than ${maxBytes} bytes.`];
    return [];
  });
}

const splatExtensions = Object.keys(mediaTypes).filter((extension) => extension !== ".png");

function showAsset() {
  errorBox.hidden = true;
  viewer?.dispose();
  viewer = null;
  preview.replaceChildren();
  const files = [...assetInput.files];
  const problems = checkFiles(files, splatExtensions, "a splat file");
  if (problems.length) return showError(errorBox, { message: problems.join(" ") });
  const first = files[0];
  viewer = mountViewer(preview, { url: URL.createObjectURL(first), fileType: extensionOf(first.name).slice(1) });
}

function showReference() {
  const file = referenceInput.files[0];
  referencePreview.src = file ? URL.createObjectURL(file) : "";
}

for (const [zone, input, show] of [
  [document.getElementById("asset-drop"), assetInput, showAsset],
  [document.getElementById("reference-drop"), referenceInput, showReference],
]) {
  input.addEventListener("change", show);
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    input.files = event.dataTransfer.files;
    show();
  });
}

async function sha256Hex(file) {
  const digest = await crypto.subtle.digest("SHA-256", await file.arrayBuffer());
  return [...new Uint8Array(digest)].map((byte) => byte.toString(16).padStart(2, "0")).join("");
}

// PUT `file` to `url`, reporting bytes sent; resolves to the HTTP status (0: the request never got an
// answer, e.g. the store is unreachable or refuses this origin).
function putFile(url, file, headers, onProgress) {
  return new Promise((resolve) => {
    const request = new XMLHttpRequest();
    request.open("PUT", url);
    for (const [name, value] of Object.entries(headers)) request.setRequestHeader(name, value);
    request.upload.onprogress = (event) => onProgress(event.loaded);
    request.onload = () => resolve(request.status);
    request.onerror = () => resolve(0);
    request.send(file);
  });
}

async function uploadAll(files) {
  const described = [];
  for (const file of files) {
    status.textContent = `Hashing ${file.name}…`;
    described.push({
      name: file.name,
      size_bytes: file.size,
      sha256: await sha256Hex(file),
      media_type: mediaTypes[extensionOf(file.name)],
    });
  }
  const { uploads } = await callConsole("/api/uploads", { json: { files: described } });
  const total = files.reduce((sum, file) => sum + file.size, 0);
  let done = 0;
  progress.hidden = false;
  for (const [index, file] of files.entries()) {
    const upload = uploads[index];
    if (upload.needs_upload) {
      status.textContent = `Uploading ${file.name}…`;
      const onProgress = (sent) => (progress.value = (done + sent) / total);
      let code = upload.put_url ? await putFile(upload.put_url, file, {}, onProgress) : 0;
      if (code === 0) {
        // The store is not reachable from this browser: send the file through the console.
        code = await putFile(`/api/uploads/${upload.slot}`, file, { "X-CSRF-Token": csrfToken() }, onProgress);
      }
      if (code < 200 || code >= 300) throw new ApiError({ code: String(code), message: `Uploading ${file.name} failed (HTTP ${code}).` });
    }
    done += file.size;
    progress.value = done / total;
  }
  return uploads.map((upload) => upload.slot);
}

function options() {
  const data = new FormData(form);
  const value = (name) => String(data.get(name) ?? "").trim();
  return {
    resolution: value("resolution"),
    orbit_step_deg: value("orbit_step_deg"),
    elevation_deg: value("elevation_deg"),
    rings: value("rings"),
    strength: value("strength"),
    refine_strength: value("refine_strength"),
    seed: value("seed"),
    output_formats: data.getAll("output_formats"),
    force: data.get("force") === "on",
  };
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  errorBox.hidden = true;
  const assets = [...assetInput.files];
  const references = [...referenceInput.files];
  const problems = [
    ...checkFiles(assets, splatExtensions, "a splat file"),
    ...checkFiles(references, [".png"], "a reference picture"),
  ];
  if (problems.length) return showError(errorBox, { message: problems.join(" ") });
  submitButton.disabled = true;
  try {
    const slots = await uploadAll([...assets, ...references]);
    status.textContent = "Submitting…";
    const answer = await callConsole("/api/jobs", {
      json: {
        asset: slots.slice(0, assets.length),
        references: slots.slice(assets.length),
        options: { ...options(), file_name: assets[0].name },
        request_id: crypto.randomUUID(),
      },
    });
    window.location.assign(`/jobs/${answer.id}`);
  } catch (error) {
    status.textContent = "";
    showError(errorBox, error.error ?? { message: String(error.message ?? error) });
  } finally {
    submitButton.disabled = false;
  }
});

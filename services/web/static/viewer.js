// A single asset in 3D: the new-job page's preview of a dropped file before it is uploaded.
//
//   const viewer = mountViewer(root, {url: URL.createObjectURL(file), fileType: "ply"});
//   await viewer.ready;  // root.dataset.ready === "1"; on failure root.dataset.error says why
//
// Without an `orbit` ({center, radius, elevationDeg}), or with a 0 radius, the view is framed from the
// asset's bounds, much as a job frames it. The scene, loading and camera code is compare.js's (splat_scene.js).
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
  showFailure,
  whenSettled,
} from "./splat_scene.js";

/** Mounts the preview in `root`; returns {ready, setAzimuth(deg), orbit(), settled(), dispose()}. */
export function mountViewer(root, { url, fileType, orbit = null, label = "Preview" }) {
  delete root.dataset.ready;
  delete root.dataset.error;
  root.classList.add("tc-viewer");
  const box = element("div", "tc-view", {}, element("span", "tc-label", {}, label));
  const status = element("p", "tc-status", { role: "status" }, "Loading the preview…");
  const built = [box, status];
  root.append(...built);
  const state = { disposed: false, orbit: normalizeOrbit(orbit ?? {}), azimuth: 0 };
  const camera = orbitCamera(state.orbit);
  const target = new THREE.Vector3();
  let view = null;
  let controls = null;

  // A failure leaves only its message, not an empty view.
  const failed = (message) => {
    teardown();
    built.push(showFailure(root, message));
    return Promise.reject(new Error(message));
  };
  const controller = {
    ready: null,
    setAzimuth,
    orbit: () => ({ ...state.orbit }),
    settled: () => whenSettled(view ? [view] : []),
    dispose,
  };

  const background = getComputedStyle(root).getPropertyValue("--tc-background").trim() || "#ffffff";
  try {
    view = new SplatView(box, camera, { label: `${label}: 3D view`, background });
  } catch (error) {
    controller.ready = failed(`This browser cannot show 3D views (WebGL2 is needed): ${error.message}`);
    controller.ready.catch(() => {});
    return controller;
  }

  controller.ready = (async () => {
    const mesh = await loadSplatMesh(url, fileType, label);
    if (state.disposed) {
      mesh.dispose();
      throw new Error("The preview was closed before it loaded.");
    }
    if (!(Number(orbit?.radius) > 0)) {
      state.orbit = frameMeshes([mesh], state.orbit.elevationDeg, state.orbit.fovyDeg);
    }
    controls = orbitControls(camera, view.canvas, state.orbit, target); // also scales the camera's planes
    controls.addEventListener("change", () => view.requestRender());
    view.setMeshes([mesh]);
    setAzimuth(state.azimuth);
    await view.drawn;
    status.remove();
    root.dataset.ready = "1";
    return controller;
  })().catch((error) => (state.disposed ? Promise.reject(error) : failed(error.message)));
  controller.ready.catch(() => {}); // a failure is shown in root; an unobserved rejection is not an error
  return controller;

  function setAzimuth(degrees) {
    state.azimuth = Number(degrees);
    placeCamera(camera, target, state.orbit, state.azimuth);
    view?.requestRender();
  }

  function teardown() {
    controls?.dispose();
    view?.dispose();
    for (const node of built) node.remove();
    built.length = 0;
  }

  function dispose() {
    state.disposed = true;
    teardown();
    root.classList.remove("tc-viewer");
    delete root.dataset.ready;
    delete root.dataset.error;
  }
}

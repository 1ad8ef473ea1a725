// The 3D parts the comparison (compare.js) and the single-asset preview (viewer.js) share: loading a
// splat file with Spark, one view (canvas, renderer, scene) drawn on demand, and the project's orbit.
//
// Conventions (services/common/cameras.py, LGM's): the world is the asset file's own frame, y up,
// the asset's front facing +z. A camera at azimuth A and elevation E (degrees; negative is above)
// sits at center + radius * (cos E sin A, -sin E, cos E cos A) and looks at the centre with +y up,
// which is three.js's own camera convention, so a `.ply` is placed as it is, unrotated: the views
// here then match the job's renders at the same azimuth. Formats whose files use another frame are
// turned into the `.ply`'s, as services/common/formats does when it reads them.
import * as THREE from "three";
import { OrbitControls } from "three/addons/controls/OrbitControls.js";
import { SparkRenderer, SplatMesh } from "@sparkjsdev/spark";

export const DEFAULT_RADIUS = 1.5; // cameras.DEFAULT_RADIUS
export const DEFAULT_FOVY_DEG = 49.1; // cameras.DEFAULT_FOVY_DEG
const MIN_OPACITY = 0.1; // framing.MIN_OPACITY: fainter splats do not count toward the bounds
const FILL = 0.9; // framing from bounds: the asset spans at most this share of the frame

// Our format names -> Spark's file types. glb is not read by Spark.
const SPARK_FILE_TYPES = { ply: "ply", spz: "spz", splat: "splat", ksplat: "ksplat", sog: "pcsogszip" };

// spz stores the spz library's frame (x right, y up, z back: three.js's); Spark shows it as stored,
// while our readers turn it into the `.ply`'s frame (conventions.SPZ_AXES -> PLY_AXES: y and z
// negated). A half turn about x does the same here, so an spz opens the way its `.ply` does.
const FILE_ROTATIONS = { spz: new THREE.Quaternion(1, 0, 0, 0) };

/** An orbit {center: [x, y, z], radius, elevationDeg, fovyDeg} with the project's defaults filled in. */
export function normalizeOrbit(orbit = {}) {
  const center = Array.isArray(orbit.center) && orbit.center.length === 3 ? orbit.center.map(Number) : [0, 0, 0];
  const radius = Number(orbit.radius) > 0 ? Number(orbit.radius) : DEFAULT_RADIUS;
  const elevationDeg = Number.isFinite(Number(orbit.elevationDeg)) ? Number(orbit.elevationDeg) : 0;
  const fovyDeg = Number(orbit.fovyDeg) > 0 ? Number(orbit.fovyDeg) : DEFAULT_FOVY_DEG;
  return { center, radius, elevationDeg, fovyDeg };
}

/** Where the job's camera at `azimuthDeg` stands (cameras.orbit_camera_to_world), as a Vector3. */
export function orbitPosition(orbit, azimuthDeg) {
  const az = THREE.MathUtils.degToRad(azimuthDeg);
  const el = THREE.MathUtils.degToRad(orbit.elevationDeg);
  const [cx, cy, cz] = orbit.center;
  return new THREE.Vector3(
    cx + orbit.radius * Math.cos(el) * Math.sin(az),
    cy - orbit.radius * Math.sin(el),
    cz + orbit.radius * Math.cos(el) * Math.cos(az),
  );
}

/** Loads one splat file; rejects with an Error whose message says what failed. */
export async function loadSplatMesh(url, fileType, what) {
  const type = String(fileType || "").toLowerCase();
  const sparkType = SPARK_FILE_TYPES[type];
  if (!sparkType) throw new Error(`${what}: the viewer cannot show ${type || "unnamed"} files`);
  // Fetch the bytes ourselves: an HTTP error then reads as one, not as a parse failure.
  let response;
  try {
    response = await fetch(url);
  } catch (error) {
    throw new Error(`${what}: could not be downloaded (${error.message})`);
  }
  if (!response.ok) throw new Error(`${what}: could not be downloaded (HTTP ${response.status})`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  if (bytes.length === 0) throw new Error(`${what}: the file is empty`);
  const mesh = new SplatMesh({ fileBytes: bytes, fileType: sparkType, fileName: `asset.${type}` });
  try {
    await mesh.initialized;
  } catch (error) {
    mesh.dispose();
    throw new Error(`${what}: not a readable ${type} file (${error?.message ?? error})`);
  }
  if (!(mesh.numSplats > 0)) {
    mesh.dispose();
    throw new Error(`${what}: the ${type} file holds no splats`);
  }
  const rotation = FILE_ROTATIONS[type];
  if (rotation) mesh.quaternion.copy(rotation);
  return mesh;
}

/**
 * An orbit that frames `meshes` (all time steps together, as the job's framing does): the centre is
 * the middle of the robust box of the visible splats' centres (1st to 99th percentile per axis), the
 * radius the distance at which every corner of that box fits in FILL of the frame from 8 azimuths.
 */
export function frameMeshes(meshes, elevationDeg = 0, fovyDeg = DEFAULT_FOVY_DEG) {
  const axes = [[], [], []];
  const point = new THREE.Vector3();
  for (const mesh of meshes) {
    mesh.updateMatrixWorld();
    mesh.forEachSplat((_index, center, _scales, _quaternion, opacity) => {
      if (opacity < MIN_OPACITY) return;
      point.copy(center).applyMatrix4(mesh.matrixWorld);
      axes[0].push(point.x);
      axes[1].push(point.y);
      axes[2].push(point.z);
    });
  }
  if (!axes[0].length) return normalizeOrbit({ elevationDeg, fovyDeg });
  const bounds = axes.map((values) => {
    const sorted = Float64Array.from(values).sort();
    const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
    return [at(0.01), at(0.99)];
  });
  const center = bounds.map(([low, high]) => (low + high) / 2);
  const half = bounds.map(([low, high]) => (high - low) / 2);
  const tan = Math.tan(THREE.MathUtils.degToRad(fovyDeg) / 2);
  let radius = 0;
  for (let azimuth = 0; azimuth < 360; azimuth += 45) {
    // The view's unit vectors: b (centre to camera), r (right), u (up); as framing.py's bound.
    const b = orbitPosition({ center: [0, 0, 0], radius: 1, elevationDeg }, azimuth);
    const r = new THREE.Vector3().crossVectors(new THREE.Vector3(0, 1, 0), b).normalize();
    const u = new THREE.Vector3().crossVectors(b, r);
    for (const sx of [-1, 1]) for (const sy of [-1, 1]) for (const sz of [-1, 1]) {
      const q = new THREE.Vector3(sx * half[0], sy * half[1], sz * half[2]);
      const reach = Math.max(Math.abs(q.dot(r)), Math.abs(q.dot(u)));
      radius = Math.max(radius, q.dot(b) + reach / (FILL * tan));
    }
  }
  return normalizeOrbit({ center, radius: radius || DEFAULT_RADIUS, elevationDeg, fovyDeg });
}

/** A perspective camera for `orbit`, with near and far planes scaled to its radius. */
export function orbitCamera(orbit) {
  const camera = new THREE.PerspectiveCamera(orbit.fovyDeg, 1, 0.01, 100);
  scaleToOrbit(camera, [], orbit);
  return camera;
}

/** Orbit controls on `element` for `camera` around `target` (a Vector3 the caller may share). */
export function orbitControls(camera, element, orbit, target) {
  const controls = new OrbitControls(camera, element);
  controls.target = target; // shared: every view's controls turn about the same point
  controls.enableDamping = false; // no momentum: a view moves only while it is dragged
  scaleToOrbit(camera, [controls], orbit);
  return controls;
}

/** The camera's clipping planes and the controls' zoom limits, in proportion to the orbit's radius. */
export function scaleToOrbit(camera, controls, orbit) {
  camera.near = orbit.radius / 100;
  camera.far = orbit.radius * 100;
  camera.updateProjectionMatrix();
  for (const control of controls) {
    control.minDistance = orbit.radius * 0.05;
    control.maxDistance = orbit.radius * 20;
  }
}

/** Puts `camera` where the job's view at `azimuthDeg` was rendered, looking at the orbit's centre. */
export function placeCamera(camera, target, orbit, azimuthDeg) {
  target.set(...orbit.center);
  camera.position.copy(orbitPosition(orbit, azimuthDeg));
  camera.up.set(0, 1, 0);
  camera.lookAt(target);
  camera.updateMatrixWorld();
}

/**
 * One canvas showing a scene of splat meshes through a camera it may share with other views. It draws
 * on demand (a camera move, a resize, Spark's sort finishing), not every animation frame: a software
 * WebGL renders two views at interactive rates only this way.
 */
export class SplatView {
  constructor(container, camera, { label = "3D view", background = "#ffffff" } = {}) {
    this.container = container;
    this.camera = camera;
    this.canvas = document.createElement("canvas");
    this.canvas.className = "tc-canvas";
    this.canvas.setAttribute("role", "img");
    this.canvas.setAttribute("aria-label", label);
    this.canvas.tabIndex = 0; // keyboard users can focus it (OrbitControls' own keys are not bound)
    container.append(this.canvas);
    this.renderer = new THREE.WebGLRenderer({ canvas: this.canvas, antialias: false, alpha: false });
    this.renderer.setPixelRatio(Math.min(window.devicePixelRatio || 1, 2));
    this.renderer.setClearColor(new THREE.Color(background), 1);
    this.scene = new THREE.Scene();
    // Spark draws every SplatMesh in the scene through this one object; without it nothing shows.
    this.spark = new SparkRenderer({ renderer: this.renderer, onDirty: () => this.redrawWhenSorted() });
    this.scene.add(this.spark);
    this.meshes = [];
    this.frame = 0; // pending animation frame, 0 when none
    this.drawnOnce = null;
    this.drawn = new Promise((resolve) => {
      this.drawnOnce = resolve;
    });
    this.resizeObserver = new ResizeObserver(() => this.resize());
    this.resizeObserver.observe(container);
    this.resize();
  }

  /** Adds meshes (one per time step); only the one `show` names is visible. */
  setMeshes(meshes) {
    this.meshes = meshes;
    for (const mesh of meshes) this.scene.add(mesh);
    this.show(0);
  }

  show(index) {
    this.meshes.forEach((mesh, i) => {
      mesh.visible = i === index;
    });
    this.jump();
  }

  resize() {
    const width = Math.max(1, Math.round(this.container.clientWidth));
    const height = Math.max(1, Math.round(this.container.clientHeight));
    // The CSS sizes the canvas; only the drawing buffer follows it here.
    this.renderer.setSize(width, height, false);
    this.camera.aspect = width / height;
    this.camera.updateProjectionMatrix();
    this.requestRender();
  }

  /**
   * Spark asks for a frame when its splats change and again when their depth order is ready. Only the
   * second is worth drawing: until then a frame shows the old order, and a software renderer takes as
   * long to draw it as the right one. (Spark asks once until a frame is drawn, so this waits for it.)
   */
  redrawWhenSorted() {
    if (this.disposed) return;
    if (this.spark.sorting || this.spark.sortDirty) setTimeout(() => this.redrawWhenSorted(), 10);
    else this.requestRender();
  }

  requestRender() {
    if (this.frame || this.disposed) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.render();
    });
  }

  /** Redraws after a jump (another azimuth, another time step) once Spark has sorted for it. */
  jump() {
    if (this.disposed) return;
    if (!this.hasDrawn) return this.requestRender(); // Spark learns the canvas's size from a first frame
    this.spark.update({ scene: this.scene, camera: this.camera }).catch(() => this.requestRender());
  }

  render() {
    if (this.disposed) return;
    this.renderer.render(this.scene, this.camera);
    // Spark shows splats once its first depth sort has come back; that frame is the asset drawn.
    if (this.meshes.length && this.spark.activeSplats > 0 && !this.spark.sorting) {
      this.hasDrawn = true;
      requestAnimationFrame(() => this.drawnOnce());
    }
  }

  /** True when nothing is left to draw: no frame pending and Spark's sort is done and shown. */
  get settled() {
    return !this.frame && !this.spark.sorting && !this.spark.sortDirty && !this.spark.dirty;
  }

  dispose() {
    if (this.disposed) return;
    this.disposed = true;
    if (this.frame) cancelAnimationFrame(this.frame);
    this.resizeObserver.disconnect();
    for (const mesh of this.meshes) {
      this.scene.remove(mesh);
      mesh.dispose();
    }
    this.meshes = [];
    this.spark.dispose();
    this.renderer.dispose();
    this.renderer.forceContextLoss(); // browsers keep few WebGL contexts; a re-mounted preview needs one
    this.canvas.remove();
  }
}

/** Resolves once every view has nothing left to draw (two checks in a row, a frame apart). */
export function whenSettled(views) {
  return new Promise((resolve) => {
    let calm = 0;
    const check = () => {
      calm = views.every((view) => view.disposed || view.settled) ? calm + 1 : 0;
      if (calm >= 2) resolve();
      else setTimeout(check, 50);
    };
    check();
  });
}

/** The element, with its class and attributes; text children as given. */
export function element(tag, className, attributes = {}, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

/** Shows `message` inside `root` (and in root.dataset.error, which tests and pages read). */
export function showFailure(root, message) {
  root.dataset.error = message;
  delete root.dataset.ready;
  const box = element("p", "tc-error", { role: "alert" }, message);
  root.append(box);
  return box;
}

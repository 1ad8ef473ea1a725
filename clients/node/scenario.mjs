#!/usr/bin/env node
// One whole TIRE job driven from Node.js, as an integrator would write it from the protos alone:
// no generated code, no Python, only tire/v1/coordinator.proto loaded at run time.
//
//   TIRE_TOKEN=... node scenario.mjs --target 127.0.0.1:42005 --out ./outputs [--check-unauthenticated]
//
// Steps:
//   1. Load the protos and connect (plaintext; loopback only). Every call carries the metadata
//      `authorization: Bearer $TIRE_TOKEN` (none when TIRE_TOKEN is empty).
//      Then, with no token and hand-written protobuf bytes (no generated code for these protos):
//      `grpc.health.v1.Health/Check` must answer SERVING, and `grpc.reflection.v1` list_services must
//      name the coordinator, health and reflection services.
//   2. Hash the two sample files (sha256, size), CreateUpload, and PUT the bytes of every upload that
//      needs it to its presigned URL.
//   3. SubmitJob: the monkey asset, its front reference, 64x64 views every 60 degrees.
//   4. WatchJob to the finished event, one line per event, resuming with `after_sequence` when the
//      stream breaks (the server cuts every connection at its max_connection_age, 5 minutes by
//      default). The first stream is cut on purpose after CUT_WATCH_AFTER events to resume once for
//      sure; no event may come twice or be skipped.
//   5. GetJob, CreateDownload for the repaired frames and the report, GET each URL, refuse bytes whose
//      sha256 is not the one the job's ObjectRef names, write them under the output folder.
//   6. A bad request (SubmitJob with resolution 7) must fail with INVALID_ARGUMENT (3) and carry the
//      rich error model's trailer, `grpc-status-details-bin` (a serialized google.rpc.Status).
//      With --check-unauthenticated (or TIRE_CHECK_UNAUTHENTICATED=1): a call without a token and one
//      with a wrong token must both fail with UNAUTHENTICATED (16), with that trailer too.
//      The trailer is decoded by hand: the bad request's must hold a google.rpc.ErrorInfo and a
//      google.rpc.BadRequest whose first field violation names spec.resolution.
//   7. Cancel: a second job (another seed), CancelJob at its first step_started, WatchJob to its
//      finished event, which must say JOB_STATE_CANCELLED.
//   8. Print one JSON line summarising the job and the files written; exit 0.
//
// Options (each also read from the environment variable named after it):
//   --target HOST:PORT         TIRE_TARGET      the coordinator (required)
//   --out DIR                  TIRE_OUT         where the outputs go (required)
//   --samples DIR              TIRE_SAMPLES     folder with monkey_lgm.ply and monkey_front.png
//                                               (default: the repository's samples/)
//   --check-unauthenticated    TIRE_CHECK_UNAUTHENTICATED=1
//   --watch-timeout-s N        TIRE_WATCH_TIMEOUT_S (default 600)
//
// Exit codes: 0 the job succeeded and every check held; 1 a check failed or the job did not succeed;
// 2 bad usage.

import { createHash } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PROTOS = path.resolve(HERE, "../../protos");
const UNARY_DEADLINE_MS = 30_000;
// Stream errors worth a reconnect: the server went away or the connection broke mid-stream.
const RESUMABLE = new Set([grpc.status.UNAVAILABLE, grpc.status.INTERNAL, grpc.status.DEADLINE_EXCEEDED]);
const MAX_RECONNECTS = 20; // in a row without an event
const CUT_WATCH_AFTER = 5;

class CheckFailed extends Error {}

function options() {
  const { values } = parseArgs({
    options: {
      target: { type: "string", default: process.env.TIRE_TARGET ?? "" },
      out: { type: "string", default: process.env.TIRE_OUT ?? "" },
      samples: { type: "string", default: process.env.TIRE_SAMPLES ?? path.resolve(HERE, "../../samples") },
      "check-unauthenticated": {
        type: "boolean",
        default: ["1", "true", "yes"].includes((process.env.TIRE_CHECK_UNAUTHENTICATED ?? "").toLowerCase()),
      },
      "watch-timeout-s": { type: "string", default: process.env.TIRE_WATCH_TIMEOUT_S ?? "600" },
    },
  });
  for (const name of ["target", "out"]) {
    if (!values[name]) {
      console.error(`scenario: --${name} (or TIRE_${name.toUpperCase()}) is required`);
      process.exit(2);
    }
  }
  const watchTimeoutS = Number(values["watch-timeout-s"]);
  if (!(watchTimeoutS > 0)) {
    console.error(`scenario: --watch-timeout-s must be a positive number of seconds, got ${values["watch-timeout-s"]}`);
    process.exit(2);
  }
  return { ...values, watchTimeoutS, token: (process.env.TIRE_TOKEN ?? "").trim() };
}

// ----- gRPC plumbing --------------------------------------------------------------------------------

function loadCoordinator(target) {
  const definition = protoLoader.loadSync(path.join(PROTOS, "tire/v1/coordinator.proto"), {
    includeDirs: [PROTOS],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const { CoordinatorService } = grpc.loadPackageDefinition(definition).tire.v1;
  return new CoordinatorService(target, grpc.credentials.createInsecure());
}

function bearer(token) {
  const metadata = new grpc.Metadata();
  if (token) metadata.set("authorization", `Bearer ${token}`);
  return metadata;
}

function deadline(ms = UNARY_DEADLINE_MS) {
  return new Date(Date.now() + ms);
}

/** A unary call as a promise; a failure rejects with the grpc-js error (`code`, `details`). */
function unary(client, method, request, metadata) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: deadline() }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

function statusName(code) {
  return Object.keys(grpc.status).find((name) => grpc.status[name] === code) ?? String(code);
}

function describeError(error) {
  return `${statusName(error.code)} (${error.code}): ${error.details}`;
}

/**
 * The `grpc-status-details-bin` trailer of a failed call: a serialized google.rpc.Status whose details
 * (ErrorInfo, BadRequest, RetryInfo) decode with google/rpc/status.proto and error_details.proto. This
 * client loads only the TIRE protos, so it returns the raw bytes (null if absent or empty) and
 * `decodeStatus` reads the few fields it checks with the wire-format reader below.
 */
function statusDetails(error) {
  const [value] = error.metadata?.get("grpc-status-details-bin") ?? [];
  return Buffer.isBuffer(value) && value.length > 0 ? value : null;
}

const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");

// ----- a minimal protobuf wire-format reader ----------------------------------------------------------

/** The fields of a serialized message, in order: {number, wire, value} (a BigInt or a Buffer). */
function protoFields(buffer) {
  const fields = [];
  let pos = 0;
  const varint = () => {
    let value = 0n;
    for (let shift = 0n; ; shift += 7n) {
      if (pos >= buffer.length || shift > 63n) throw new CheckFailed("malformed protobuf: bad varint");
      const byte = buffer[pos++];
      value |= BigInt(byte & 0x7f) << shift;
      if (!(byte & 0x80)) return value;
    }
  };
  const take = (n) => {
    if (pos + n > buffer.length) throw new CheckFailed("malformed protobuf: field runs past the end");
    pos += n;
    return buffer.subarray(pos - n, pos);
  };
  while (pos < buffer.length) {
    const key = varint();
    const number = Number(key >> 3n);
    const wire = Number(key & 7n);
    if (wire === 0) fields.push({ number, wire, value: varint() });
    else if (wire === 1) fields.push({ number, wire, value: take(8) });
    else if (wire === 2) fields.push({ number, wire, value: take(Number(varint())) });
    else if (wire === 5) fields.push({ number, wire, value: take(4) });
    else throw new CheckFailed(`malformed protobuf: unsupported wire type ${wire}`);
  }
  return fields;
}

/** Every value of field `number` (repeated fields), and the last one (singular fields; proto3 rules). */
const protoAll = (buffer, number) => protoFields(buffer).filter((f) => f.number === number).map((f) => f.value);
const protoOne = (buffer, number) => protoAll(buffer, number).at(-1);
const protoString = (buffer, number) => protoOne(buffer, number)?.toString("utf8") ?? "";

/**
 * google.rpc.Status {1 code, 2 message, 3 repeated Any details {1 type_url, 2 value}}, decoded as far
 * as this client checks: ErrorInfo {1 reason, 2 domain} and BadRequest {1 repeated FieldViolation
 * {1 field, 2 description}}; other details keep only their type URL.
 */
function decodeStatus(bytes) {
  const details = protoAll(bytes, 3).map((any) => {
    const type_url = protoString(any, 1);
    const value = protoOne(any, 2) ?? Buffer.alloc(0);
    const detail = { type_url };
    if (type_url.endsWith("/google.rpc.ErrorInfo")) {
      detail.reason = protoString(value, 1);
      detail.domain = protoString(value, 2);
    } else if (type_url.endsWith("/google.rpc.BadRequest")) {
      detail.field_violations = protoAll(value, 1).map((violation) => ({
        field: protoString(violation, 1),
        description: protoString(violation, 2),
      }));
    }
    return detail;
  });
  return { code: Number(protoOne(bytes, 1) ?? 0n), message: protoString(bytes, 2), details };
}

// ----- health and reflection, by hand -----------------------------------------------------------------

const identity = (bytes) => bytes;
const HEALTH_STATUS = ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"];

/** grpc.health.v1.Health/Check for the server as a whole (service ""), without a token. */
async function checkHealth(client) {
  const response = await new Promise((resolve, reject) =>
    client.makeUnaryRequest(
      "/grpc.health.v1.Health/Check",
      identity,
      identity,
      Buffer.alloc(0), // HealthCheckRequest{service: ""}: every field at its default, no bytes
      new grpc.Metadata(),
      { deadline: deadline() },
      (error, reply) => (error ? reject(error) : resolve(reply)),
    ),
  );
  const code = Number(protoOne(response, 1) ?? 0n); // HealthCheckResponse.status; absent = UNKNOWN (0)
  const status = HEALTH_STATUS[code] ?? String(code);
  console.log(`health: ${status} (${code}) [${response.toString("hex")}]`);
  if (code !== 1) throw new CheckFailed(`grpc.health.v1.Health/Check answered ${status} (${code}), not SERVING (1)`);
  return { status, code };
}

const EXPECTED_SERVICES = ["tire.v1.CoordinatorService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"];

/** grpc.reflection.v1 list_services, without a token: the names the server offers. */
async function checkReflection(client) {
  const names = await new Promise((resolve, reject) => {
    const call = client.makeBidiStreamRequest(
      "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
      identity,
      identity,
      new grpc.Metadata(),
      { deadline: deadline() },
    );
    let answer = null;
    call.on("data", (response) => {
      try {
        const error = protoOne(response, 7); // error_response {1 error_code, 2 error_message}
        if (error) throw new CheckFailed(`reflection answered error ${protoOne(error, 1)}: ${protoString(error, 2)}`);
        const list = protoOne(response, 6); // list_services_response {1 repeated ServiceResponse {1 name}}
        if (!list) throw new CheckFailed(`reflection answered no list_services_response: ${response.toString("hex")}`);
        answer = protoAll(list, 1).map((service) => protoString(service, 1));
      } catch (failure) {
        reject(failure);
        call.cancel();
      }
    });
    call.on("error", reject);
    call.on("end", () => (answer ? resolve(answer) : reject(new CheckFailed("reflection closed without an answer"))));
    call.write(Buffer.from([0x3a, 0x00])); // ServerReflectionRequest{list_services: ""}: field 7, length 0
    call.end();
  });
  console.log(`reflection: ${names.join(", ")}`);
  const missing = EXPECTED_SERVICES.filter((name) => !names.includes(name));
  if (missing.length) throw new CheckFailed(`reflection list_services lacks ${missing.join(", ")}: ${names.join(", ")}`);
  return { services: names };
}

// ----- the steps ------------------------------------------------------------------------------------

async function uploadSamples(client, metadata, samples) {
  const files = [
    { file: path.join(samples, "monkey_lgm.ply"), media_type: "application/x-ply" },
    { file: path.join(samples, "monkey_front.png"), media_type: "image/png" },
  ];
  for (const entry of files) entry.bytes = await readFile(entry.file);
  const { uploads } = await unary(
    client,
    "CreateUpload",
    {
      files: files.map(({ file, bytes, media_type }) => ({
        name: path.basename(file),
        size_bytes: String(bytes.length),
        sha256: sha256(bytes),
        media_type,
      })),
    },
    metadata,
  );
  if (uploads.length !== files.length) {
    throw new CheckFailed(`CreateUpload answered ${uploads.length} uploads for ${files.length} files`);
  }
  for (const [index, upload] of uploads.entries()) {
    const { bytes } = files[index];
    if (!upload.needs_upload) {
      console.log(`upload ${upload.name}: needs_upload false, already uploaded (${upload.object.uri})`);
      continue;
    }
    const reply = await fetch(upload.put_url, { method: "PUT", body: bytes });
    if (!reply.ok) {
      throw new CheckFailed(`PUT ${upload.name} answered HTTP ${reply.status}: ${(await reply.text()).slice(0, 500)}`);
    }
    console.log(`upload ${upload.name}: PUT ${bytes.length} bytes -> ${upload.object.uri}`);
  }
  return uploads.map((upload) => upload.object);
}

function eventLine(event) {
  const body = event[event.kind];
  switch (event.kind) {
    case "step_started":
      return `step_started ${body.step}${body.model ? ` (${body.model.stage}: ${body.model.backend})` : ""}`;
    case "step_finished":
      return `step_finished ${body.step} in ${body.seconds.toFixed(2)} s${body.resumed ? " (resumed)" : ""}`;
    case "ring_progress":
      return `ring_progress ring ${body.ring}/${body.rings_total} targets ${body.targets_done}/${body.targets_total}`;
    case "fit":
      return `fit step ${body.progress?.step}/${body.progress?.total_steps} loss ${body.progress?.loss}`;
    case "warning":
      return `warning ${body.message}`;
    case "finished":
      return `finished ${body.state}${body.error ? `: ${body.error}` : ""}`;
    default:
      return `${event.kind ?? "unknown event"}`;
  }
}

/** Follow the job's events to its finished event; resume with `after_sequence` when the stream breaks. */
async function watch(client, metadata, jobId, timeoutS, onEvent = null, cutAfter = 0) {
  const giveUp = Date.now() + timeoutS * 1000;
  let after = "0";
  let reconnects = 0;
  let fruitless = 0; // reconnects in a row that brought no event: only those are limited and backed off
  let count = 0;
  for (;;) {
    let finished = null;
    const countBefore = count;
    try {
      finished = await new Promise((resolve, reject) => {
        const call = client.WatchJob({ job_id: jobId, after_sequence: after }, metadata, {
          deadline: new Date(giveUp),
        });
        let last = null;
        call.on("data", ({ event }) => {
          if (BigInt(event.sequence) <= BigInt(after)) {
            reject(new CheckFailed(`WatchJob after_sequence=${after} sent event ${event.sequence} again`));
            call.cancel();
            return;
          }
          if (BigInt(event.sequence) !== BigInt(after) + 1n) {
            reject(new CheckFailed(`WatchJob skipped from sequence ${after} to ${event.sequence}`));
            call.cancel();
            return;
          }
          after = event.sequence;
          count += 1;
          console.log(`event ${event.sequence} ${eventLine(event)}`);
          if (event.kind === "finished") last = event.finished;
          onEvent?.(event);
          if (count === cutAfter && !last) {
            console.log(`watch: cutting the stream after event ${after} on purpose`);
            resolve(null);
            call.cancel();
          }
        });
        call.on("error", reject);
        // A clean end: the job's last event came, or the server closed the stream early (resume).
        call.on("end", () => resolve(last));
      });
    } catch (error) {
      if (error instanceof CheckFailed) throw error;
      if (!RESUMABLE.has(error.code) || Date.now() >= giveUp || fruitless >= MAX_RECONNECTS) {
        throw new CheckFailed(`WatchJob failed after ${reconnects} reconnects: ${describeError(error)}`);
      }
      console.log(`watch: stream broke (${describeError(error)}); resuming after sequence ${after}`);
    }
    if (finished) return { finished, events: count, reconnects };
    if (Date.now() >= giveUp) throw new CheckFailed(`job ${jobId} did not finish within ${timeoutS} s`);
    reconnects += 1;
    fruitless = count > countBefore ? 0 : fruitless + 1;
    await new Promise((resolve) => setTimeout(resolve, Math.min(5000, 100 * 2 ** Math.min(fruitless, 6))));
  }
}

function outputName(kind, index, total) {
  if (kind === "report") return "report.json";
  return total === 1 ? "repaired.ply" : `repaired_t${String(index).padStart(3, "0")}.ply`;
}

/** Download the repaired frames and the report, verify their sha256, write them under `out`. */
async function downloadOutputs(client, metadata, job, out) {
  const outputs = job.outputs;
  if (!outputs?.repaired?.frames?.length || !outputs.report?.uri) {
    throw new CheckFailed(`job ${job.id} succeeded without repaired frames or a report: ${JSON.stringify(outputs)}`);
  }
  const wanted = [
    ...outputs.repaired.frames.map((ref, index) => ({ ref, name: outputName("frame", index, outputs.repaired.frames.length) })),
    { ref: outputs.report, name: outputName("report") },
  ];
  const { downloads } = await unary(
    client,
    "CreateDownload",
    { job_id: job.id, uris: wanted.map(({ ref }) => ref.uri) },
    metadata,
  );
  if (downloads.length !== wanted.length) {
    throw new CheckFailed(`CreateDownload answered ${downloads.length} downloads for ${wanted.length} URIs`);
  }
  await mkdir(out, { recursive: true });
  const written = [];
  for (const [index, download] of downloads.entries()) {
    const { ref, name } = wanted[index];
    if (download.uri !== ref.uri) {
      throw new CheckFailed(`CreateDownload answered ${download.uri} in place of ${ref.uri} (request order)`);
    }
    const reply = await fetch(download.get_url);
    if (!reply.ok) {
      throw new CheckFailed(`GET ${ref.uri} answered HTTP ${reply.status}: ${(await reply.text()).slice(0, 500)}`);
    }
    const bytes = Buffer.from(await reply.arrayBuffer());
    const digest = sha256(bytes);
    if (digest !== ref.sha256) {
      throw new CheckFailed(`${ref.uri}: downloaded bytes hash to ${digest}, the job's reference says ${ref.sha256}`);
    }
    if (ref.size_bytes !== "0" && BigInt(ref.size_bytes) !== BigInt(bytes.length)) {
      throw new CheckFailed(`${ref.uri}: downloaded ${bytes.length} bytes, the job's reference says ${ref.size_bytes}`);
    }
    const file = path.join(out, name);
    await writeFile(file, bytes);
    console.log(`download ${ref.uri} -> ${file} (${bytes.length} bytes, sha256 ${digest})`);
    written.push({ path: file, uri: ref.uri, size_bytes: bytes.length, sha256: digest, media_type: ref.media_type });
  }
  return written;
}

/** Calls without a token, and with a wrong one, must fail with UNAUTHENTICATED. */
async function checkUnauthenticated(client, jobId) {
  const results = [];
  for (const [label, metadata] of [
    ["no token", new grpc.Metadata()],
    ["wrong token", bearer("not-a-token-of-this-coordinator")],
  ]) {
    try {
      await unary(client, "GetJob", { job_id: jobId }, metadata);
      console.log(`unauthenticated check (${label}): GetJob succeeded`);
      results.push({ label, code: 0, status: "OK", details: "" });
    } catch (error) {
      const detailsBytes = statusDetails(error)?.length ?? 0;
      console.log(`unauthenticated check (${label}): ${describeError(error)} [status details ${detailsBytes} bytes]`);
      results.push({
        label,
        code: error.code,
        status: statusName(error.code),
        details: error.details,
        details_bytes: detailsBytes,
        status_details: detailsBytes ? decodeStatus(statusDetails(error)) : null,
      });
    }
  }
  const wrong = results.filter(({ code }) => code !== grpc.status.UNAUTHENTICATED);
  if (wrong.length) {
    throw new CheckFailed(
      `calls without a valid token must fail with UNAUTHENTICATED (16): ${wrong
        .map(({ label, status, code }) => `${label} got ${status} (${code})`)
        .join(", ")}`,
    );
  }
  const bare = results.filter(({ details_bytes }) => !details_bytes);
  if (bare.length) {
    throw new CheckFailed(
      `UNAUTHENTICATED calls must carry a grpc-status-details-bin trailer: ${bare.map(({ label }) => label).join(", ")} did not`,
    );
  }
  return results;
}

/** A SubmitJob with a bad resolution must fail with INVALID_ARGUMENT, naming the field, with the trailer. */
async function checkBadRequest(client, metadata, asset, reference) {
  const spec = { asset: { frames: [asset] }, references: [reference], resolution: 7, orbit_step_deg: 60 };
  try {
    const { job } = await unary(client, "SubmitJob", { spec }, metadata);
    throw new CheckFailed(`SubmitJob with resolution 7 was accepted as job ${job.id}`);
  } catch (error) {
    if (error instanceof CheckFailed) throw error;
    const detailsBytes = statusDetails(error)?.length ?? 0;
    console.log(`bad request check: ${describeError(error)} [status details ${detailsBytes} bytes]`);
    if (error.code !== grpc.status.INVALID_ARGUMENT || !error.details?.includes("spec.resolution")) {
      throw new CheckFailed(
        `SubmitJob with resolution 7 must fail with INVALID_ARGUMENT (3) naming spec.resolution: ${describeError(error)}`,
      );
    }
    if (!detailsBytes) {
      throw new CheckFailed("the INVALID_ARGUMENT of SubmitJob carried no grpc-status-details-bin trailer");
    }
    const decoded = decodeStatus(statusDetails(error));
    console.log(`bad request check: status details ${JSON.stringify(decoded)}`);
    if (decoded.code !== error.code) {
      throw new CheckFailed(`grpc-status-details-bin says code ${decoded.code}, the call's status is ${error.code}`);
    }
    const types = decoded.details.map(({ type_url }) => type_url);
    for (const wanted of ["google.rpc.ErrorInfo", "google.rpc.BadRequest"]) {
      if (!types.some((type) => type.endsWith(`/${wanted}`))) {
        throw new CheckFailed(`the INVALID_ARGUMENT's status details lack a ${wanted}: ${types.join(", ")}`);
      }
    }
    const badRequest = decoded.details.find(({ type_url }) => type_url.endsWith("/google.rpc.BadRequest"));
    const firstField = badRequest.field_violations[0]?.field;
    if (firstField !== "spec.resolution") {
      throw new CheckFailed(`the BadRequest's first field violation names ${JSON.stringify(firstField)}, not spec.resolution`);
    }
    return {
      code: error.code,
      status: statusName(error.code),
      details: error.details,
      details_bytes: detailsBytes,
      status_details: decoded,
    };
  }
}

/** A second job, cancelled at its first step_started: its finished event must say CANCELLED. */
async function checkCancel(client, metadata, spec, timeoutS) {
  const { job: submitted } = await unary(client, "SubmitJob", { spec }, metadata);
  console.log(`cancel check: submitted ${submitted.id} (${submitted.state})`);
  let cancelled = null;
  const { finished, events } = await watch(client, metadata, submitted.id, timeoutS, (event) => {
    if (event.kind !== "step_started" || cancelled) return;
    cancelled = unary(client, "CancelJob", { job_id: submitted.id }, metadata).then(
      ({ job }) => {
        console.log(`cancel check: CancelJob at step_started ${event.step_started.step} answered ${job.state}`);
        return { step: event.step_started.step, state: job.state };
      },
      (error) => ({ error }),
    );
  });
  if (!cancelled) throw new CheckFailed(`job ${submitted.id} finished with no step_started event to cancel at`);
  const answer = await cancelled;
  if (answer.error) throw new CheckFailed(`CancelJob failed: ${describeError(answer.error)}`);
  if (!["JOB_STATE_RUNNING", "JOB_STATE_CANCELLED"].includes(answer.state)) {
    throw new CheckFailed(`CancelJob answered ${answer.state}, neither RUNNING nor CANCELLED`);
  }
  const { job } = await unary(client, "GetJob", { job_id: submitted.id }, metadata);
  if (finished.state !== "JOB_STATE_CANCELLED" || job.state !== "JOB_STATE_CANCELLED") {
    throw new CheckFailed(
      `job ${submitted.id} cancelled at ${answer.step} finished ${finished.state} (GetJob: ${job.state}), not JOB_STATE_CANCELLED`,
    );
  }
  return { job_id: submitted.id, cancelled_at: answer.step, cancel_answer: answer.state, state: job.state, events };
}

// ----- main -----------------------------------------------------------------------------------------

async function main() {
  const args = options();
  // 1. Connect.
  const client = loadCoordinator(args.target);
  await new Promise((resolve, reject) =>
    client.waitForReady(deadline(), (error) =>
      error
        ? reject(new CheckFailed(`could not connect to ${args.target} within ${UNARY_DEADLINE_MS / 1000} s: ${error.message}`))
        : resolve(),
    ),
  );
  const metadata = bearer(args.token);
  try {
    // Health and reflection, with no token and hand-written protobuf.
    const health = await checkHealth(client);
    const reflection = await checkReflection(client);
    // 2. Upload the inputs.
    const [asset, reference] = await uploadSamples(client, metadata, args.samples);
    // 3. Submit.
    const spec = { asset: { frames: [asset] }, references: [reference], resolution: 64, orbit_step_deg: 60 };
    const { job: submitted } = await unary(client, "SubmitJob", { spec }, metadata);
    console.log(`submitted ${submitted.id} (${submitted.state})`);
    // 4. Watch to the end.
    const { finished, events, reconnects } = await watch(
      client, metadata, submitted.id, args.watchTimeoutS, null, CUT_WATCH_AFTER,
    );
    // 5. Read the job and download its outputs.
    const { job } = await unary(client, "GetJob", { job_id: submitted.id }, metadata);
    if (job.state !== finished.state) {
      throw new CheckFailed(`GetJob says ${job.state}, the finished event said ${finished.state}`);
    }
    if (job.state !== "JOB_STATE_SUCCEEDED") {
      throw new CheckFailed(`job ${job.id} ended ${job.state}: ${job.error}`);
    }
    const files = await downloadOutputs(client, metadata, job, args.out);
    // 6. A bad request is refused with the rich error model; without a valid token, nothing.
    const badRequest = await checkBadRequest(client, metadata, asset, reference);
    const unauthenticated = args["check-unauthenticated"] ? await checkUnauthenticated(client, job.id) : null;
    // 7. A second job (another seed, so not the first one again), cancelled while it runs.
    const cancel = await checkCancel(client, metadata, { ...spec, seed: "11" }, args.watchTimeoutS);
    // 8. Summary, as the last line of stdout.
    console.log(
      JSON.stringify({
        job_id: job.id,
        state: job.state,
        events,
        reconnects,
        outputs: {
          repaired: job.outputs.repaired.frames.map(({ uri, sha256, size_bytes }) => ({ uri, sha256, size_bytes })),
          report: { uri: job.outputs.report.uri, sha256: job.outputs.report.sha256, size_bytes: job.outputs.report.size_bytes },
        },
        files,
        bad_request: badRequest,
        unauthenticated,
        health,
        reflection,
        cancel,
      }),
    );
  } finally {
    client.close();
  }
}

main().then(
  () => process.exit(0),
  (error) => {
    if (error instanceof CheckFailed) console.error(`scenario: ${error.message}`);
    else if (typeof error?.code === "number") console.error(`scenario: gRPC call failed: ${describeError(error)}`);
    else console.error(`scenario: ${error?.stack ?? error}`);
    process.exit(1);
  },
);

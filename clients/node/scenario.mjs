#!/usr/bin/env node
// One whole TIRE job driven from Node.js, as an integrator would write it from the protos alone:
// no generated code, no Python, only tire/v1/coordinator.proto loaded at run time.
//
//   TIRE_TOKEN=... node scenario.mjs --target 127.0.0.1:42005 --out ./outputs [--check-unauthenticated]
//
// Steps:
//   1. Load the protos and connect (plaintext; loopback only). Every call carries the metadata
//      `authorization: Bearer $TIRE_TOKEN` (none when TIRE_TOKEN is empty).
//   2. Hash the two sample files (sha256, size), CreateUpload, and PUT the bytes of every upload that
//      needs it to its presigned URL.
//   3. SubmitJob: the monkey asset, its front reference, 64x64 views every 60 degrees.
//   4. WatchJob to the finished event, one line per event, resuming with `after_sequence` when the
//      stream breaks.
//   5. GetJob, CreateDownload for the repaired frames and the report, GET each URL, refuse bytes whose
//      sha256 is not the one the job's ObjectRef names, write them under the output folder.
//   6. A bad request (SubmitJob with resolution 7) must fail with INVALID_ARGUMENT (3) and carry the
//      rich error model's trailer, `grpc-status-details-bin` (a serialized google.rpc.Status).
//      With --check-unauthenticated (or TIRE_CHECK_UNAUTHENTICATED=1): a call without a token and one
//      with a wrong token must both fail with UNAUTHENTICATED (16), with that trailer too.
//   7. Print one JSON line summarising the job and the files written; exit 0.
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
const MAX_RECONNECTS = 20;

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
 * client loads only the TIRE protos, so it checks that the trailer is there and not empty; null if not.
 */
function statusDetails(error) {
  const [value] = error.metadata?.get("grpc-status-details-bin") ?? [];
  return Buffer.isBuffer(value) && value.length > 0 ? value : null;
}

const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");

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
async function watch(client, metadata, jobId, timeoutS) {
  const giveUp = Date.now() + timeoutS * 1000;
  let after = "0";
  let reconnects = 0;
  let count = 0;
  for (;;) {
    let finished = null;
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
        });
        call.on("error", reject);
        // A clean end: the job's last event came, or the server closed the stream early (resume).
        call.on("end", () => resolve(last));
      });
    } catch (error) {
      if (error instanceof CheckFailed) throw error;
      if (!RESUMABLE.has(error.code) || Date.now() >= giveUp || reconnects >= MAX_RECONNECTS) {
        throw new CheckFailed(`WatchJob failed after ${reconnects} reconnects: ${describeError(error)}`);
      }
      console.log(`watch: stream broke (${describeError(error)}); resuming after sequence ${after}`);
    }
    if (finished) return { finished, events: count, reconnects };
    if (Date.now() >= giveUp) throw new CheckFailed(`job ${jobId} did not finish within ${timeoutS} s`);
    reconnects += 1;
    await new Promise((resolve) => setTimeout(resolve, Math.min(5000, 250 * 2 ** Math.min(reconnects, 5))));
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
    return { code: error.code, status: statusName(error.code), details: error.details, details_bytes: detailsBytes };
  }
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
    // 2. Upload the inputs.
    const [asset, reference] = await uploadSamples(client, metadata, args.samples);
    // 3. Submit.
    const { job: submitted } = await unary(
      client,
      "SubmitJob",
      { spec: { asset: { frames: [asset] }, references: [reference], resolution: 64, orbit_step_deg: 60 } },
      metadata,
    );
    console.log(`submitted ${submitted.id} (${submitted.state})`);
    // 4. Watch to the end.
    const { finished, events, reconnects } = await watch(client, metadata, submitted.id, args.watchTimeoutS);
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
    // 7. Summary, as the last line of stdout.
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

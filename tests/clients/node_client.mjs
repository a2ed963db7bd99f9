#!/usr/bin/env node
// A Node 20 backend calling Gantry with nothing but the built-in `fetch`,
// `FormData` and `Blob`: it posts the file it holds as it is.
//
//   node tests/clients/node_client.mjs http://127.0.0.1:8080 tests/fixtures/media
//
// Runs against a live server with the `spheroid-seg` and `night-calls` demo
// models and checks the answers; exits non-zero on the first surprise.

import { readFile } from "node:fs/promises";
import { join } from "node:path";

const [baseUrl, fixtures] = process.argv.slice(2);

/** Posts one file (a Buffer) with optional form fields; resolves to the JSON answer. */
async function predictFile(model, filename, data, params = {}) {
  const form = new FormData();
  form.append("model", model);
  for (const [key, value] of Object.entries(params)) form.append(key, String(value));
  form.append("file", new Blob([data]), filename);
  const response = await fetch(`${baseUrl}/api/optimized/predict`, { method: "POST", body: form });
  const body = await response.json();
  if (!response.ok) {
    const error = new Error(`${response.status} ${body.code}: ${body.error}`);
    Object.assign(error, { status: response.status, code: body.code });
    throw error;
  }
  return body;
}

/** Posts several files at once; one entry per file, each with its own status. */
async function predictFiles(model, files) {
  const form = new FormData();
  form.append("model", model);
  for (const [filename, data] of files) form.append("file", new Blob([data]), filename);
  const response = await fetch(`${baseUrl}/api/optimized/predict/batch`, { method: "POST", body: form });
  if (!response.ok) throw new Error(`batch failed: ${response.status} ${await response.text()}`);
  return (await response.json()).results;
}

function check(condition, what) {
  if (!condition) {
    console.error(`FAILED: ${what}`);
    process.exit(1);
  }
  console.log(`ok   ${what}`);
}

const fixture = (name) => readFile(join(fixtures, name));

const wav = await predictFile("night-calls", "owl.wav", await fixture("call-owl-hoot.wav"));
check(wav.classes[0].label === "owl-hoot", `WAV top label ${wav.classes[0].label}`);
const mp3 = await predictFile("night-calls", "owl.mp3", await fixture("call-owl-hoot.mp3"));
check(mp3.classes[0].label === wav.classes[0].label, "the MP3 of the same clip gives the same label");
check(wav.file.sample_rate === 16000 && wav.file.type === "wav", "the answer says what was uploaded");

const seg = await predictFile("spheroid-seg", "spheroids.tiff", await fixture("spheroids.tiff"), { threshold: 0.5 });
check(seg.mask.width === 192 && seg.mask.height === 160, "the mask has the upload's size");
check(Buffer.from(seg.mask.png_base64, "base64").subarray(1, 4).toString() === "PNG", "the mask is a PNG");
check(seg.mask.contours.length >= 1, `${seg.mask.contours.length} contours`);

const results = await predictFiles("night-calls", [
  ["cricket.wav", await fixture("call-cricket-trill.wav")],
  ["image.png", await fixture("spheroids.png")],
]);
check(results[0].status === 200 && results[0].classes[0].label === "cricket-trill", "batch: the clip is classified");
check(results[1].status === 415 && results[1].code === "unsupported_media_type", "batch: the image fails alone");

try {
  await predictFile("night-calls", "empty.wav", Buffer.alloc(0));
  check(false, "an empty file is refused");
} catch (e) {
  check(e.status === 422 && e.code === "invalid_file", `an empty file is refused: ${e.message}`);
}
console.log("node_client: all checks passed");

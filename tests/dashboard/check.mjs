// Drives Gantry's /dashboard in headless Chromium (Debian's `chromium`,
// or GANTRY_TEST_CHROMIUM) with playwright-core, while the caller sends the
// server traffic. Checks: the page loads without console errors, failed
// requests or uncaught exceptions; it shows every model given; under load
// each model's numbers move (requests and request rate rise, latency and
// batch fill appear, replicas read ready; a model with a latency target
// shows its attainment); on a phone-sized viewport
// nothing overflows sideways. With SCREENSHOT it saves a picture of the
// page under load.
//
// Usage: node check.mjs BASE_URL MODEL[,MODEL...] [SCREENSHOT.png]
// Prints one line per check and exits non-zero on the first failure. Run
// by tests/it/dashboard.rs.
import { chromium } from "playwright-core";

const [base, modelList, screenshot] = process.argv.slice(2);
if (!base || !modelList) {
  console.error("usage: node check.mjs BASE_URL MODEL[,MODEL...] [SCREENSHOT.png]");
  process.exit(2);
}
const models = modelList.split(",");
const problems = [];

function check(label, ok, detail = "") {
  if (!ok) {
    console.log(`FAIL ${label}: ${detail}`);
    process.exit(1);
  }
  console.log(`ok   ${label}`);
}

function watch(page) {
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning") problems.push(`console ${m.type()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`uncaught: ${e.message}`));
  page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  page.on("response", (r) => {
    if (r.status() >= 400) problems.push(`${r.status()} for ${r.url()}`);
  });
}

async function field(page, model, name) {
  return page.locator(`[data-model="${model}"] [data-field="${name}"]`).first().textContent();
}

const toNumber = (text) => Number(String(text).replace(/,/g, ""));

const browser = await chromium.launch({
  executablePath: process.env.GANTRY_TEST_CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  watch(page);
  const response = await page.goto(`${base}/dashboard`);
  check("GET /dashboard answers 200 HTML", response.status() === 200
    && (response.headers()["content-type"] || "").startsWith("text/html"), `${response.status()}`);
  check("the page has a Content-Security-Policy", (response.headers()["content-security-policy"] || "").includes("script-src 'self'"));
  for (const model of models) {
    await page.waitForSelector(`[data-model="${model}"]`, { timeout: 10_000 });
  }
  check("every model has a card", true);
  const shown = await page.locator("[data-model]").evaluateAll((cards) => cards.map((c) => c.dataset.model));
  check("only the served models are shown", JSON.stringify([...shown].sort()) === JSON.stringify([...models].sort()),
    `${shown}`);
  check("the memory budget shows the CPU", await page.locator('[data-device="cpu"] [data-field="budget"]').count() === 1);
  const before = {};
  for (const model of models) before[model] = toNumber(await field(page, model, "requests"));

  // The caller is sending traffic: every model's numbers must move.
  const deadline = Date.now() + 20_000;
  const moved = new Set();
  while (moved.size < models.length && Date.now() < deadline) {
    await page.waitForTimeout(500);
    for (const model of models) {
      const requests = toNumber(await field(page, model, "requests"));
      const rate = toNumber(await field(page, model, "rate"));
      const p50 = toNumber(await field(page, model, "p50"));
      if (requests > before[model] && rate > 0 && p50 > 0) moved.add(model);
    }
  }
  check("under load every model's requests, rate and p50 move", moved.size === models.length,
    `moved: ${[...moved]}; before ${JSON.stringify(before)}`);
  for (const model of models) {
    const bars = await page.locator(`[data-model="${model}"] [data-field="batch-fill"] div`)
      .evaluateAll((divs) => divs.filter((d) => parseFloat(d.style.height) > 0).length);
    check(`${model}: the batch fill histogram has bars`, bars > 0, `${bars}`);
    const replicas = await field(page, model, "replicas");
    check(`${model}: replicas are listed ready, with their device`, /ready · cpu/.test(replicas), replicas);
    check(`${model}: ready badge`, (await field(page, model, "ready")) === "ready");
    const slo = page.locator(`[data-model="${model}"] [data-field="attainment"]`);
    if (await slo.count()) {
      const shown = await slo.first().textContent();
      check(`${model}: its latency target's attainment shows as a share`, /^\d+(\.\d)?%$/.test(shown), shown);
    }
  }
  check("a model with a latency target shows its attainment",
    await page.locator('[data-field="attainment"]').count() > 0);
  const status = await page.locator('[data-field="status"]').textContent();
  check("the header says every model is ready", status === "all models ready", status);
  if (screenshot) {
    // Twenty seconds of history for the sparklines in the picture.
    await page.waitForTimeout(20_000);
    await page.screenshot({ path: screenshot, fullPage: true });
    check(`screenshot saved to ${screenshot}`, true);
  }

  // A phone: nothing wider than the screen.
  const phone = await browser.newPage({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  watch(phone);
  await phone.goto(`${base}/dashboard`);
  await phone.waitForSelector(`[data-model="${models[0]}"]`, { timeout: 10_000 });
  const widths = await phone.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
  check("on a 390 px phone nothing overflows sideways", widths[0] <= widths[1], `${widths}`);
  check("no console errors, failed requests or uncaught exceptions", problems.length === 0, problems.join("; "));
} finally {
  await browser.close();
}
console.log("all dashboard checks passed");

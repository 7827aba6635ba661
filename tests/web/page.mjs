// Drives the docqa web page in headless Chromium: ask a question and watch the
// answer stream in, click a source to read its passage, upload a document and
// see it indexed. Usage: node tests/web/page.mjs <server-url> <screenshot.png>
import { chromium } from "playwright-core";
import { execFileSync } from "node:child_process";
import { writeFileSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [url, shot] = process.argv.slice(2);
if (!url || !shot) {
  console.error("usage: node tests/web/page.mjs <server-url> <screenshot.png>");
  process.exit(2);
}

function check(cond, what) {
  if (!cond) throw new Error("check failed: " + what);
  console.log("ok: " + what);
}

// Debian's chromium from PATH (scripts/setup_test_tools.sh installs it), or $CHROMIUM.
const executablePath = process.env.CHROMIUM ||
  execFileSync("sh", ["-c", "command -v chromium"], { encoding: "utf8" }).trim();
const browser = await chromium.launch({
  executablePath,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  await page.goto(url + "/");
  check((await page.title()) === "docqa", "the page loads");
  await page.waitForFunction(() => document.querySelectorAll("#documents li").length > 0);
  const before = await page.locator("#documents li").count();
  check(before >= 5, `the documents list shows the index (${before})`);

  // Ask: tokens arrive one by one, then the sources.
  await page.fill("#question", "What does error E42 mean?");
  const seen = page.evaluate(() => new Promise((resolve) => {
    const lengths = [];
    const obs = new MutationObserver(() => {
      const n = document.getElementById("answer").textContent.length;
      if (n > 0 && lengths[lengths.length - 1] !== n) lengths.push(n);
    });
    obs.observe(document.getElementById("answer"), {childList: true, subtree: true, characterData: true});
    const done = setInterval(() => {
      if (!document.getElementById("ask").disabled && lengths.length > 0) {
        clearInterval(done); obs.disconnect(); resolve(lengths);
      }
    }, 50);
  }));
  await page.click("#ask");
  const lengths = await seen;
  check(lengths.length >= 3, `the answer streamed in (${lengths.length} updates)`);
  const answer = await page.textContent("#answer");
  check(answer.trim().length > 0, `an answer: ${JSON.stringify(answer)}`);
  check((await page.getAttribute("#status", "class")) !== "error", "no error shown");
  const sources = page.locator("#sources li");
  check((await sources.count()) > 0, "the sources are listed");
  const faq = page.locator("#sources li", { hasText: "faq.txt" }).first();
  await faq.click();
  await page.waitForSelector("#passage:not([hidden])");
  const passage = await page.textContent("#passage");
  check(passage.includes("faq.txt") && passage.includes("observer code"),
        "clicking a source shows its passage");
  const cites = page.locator("#answer a.cite");
  if ((await cites.count()) > 0) {
    const n = await cites.first().getAttribute("data-number");
    await cites.first().click();
    check((await page.getAttribute("#passage", "data-number")) === n, "a citation in the answer opens its passage");
  }

  // Upload a file; it appears in the list once indexed, and answers can use it.
  const dir = mkdtempSync(join(tmpdir(), "docqa-page-"));
  const file = join(dir, "otters.md");
  writeFileSync(file, "# Otters\n\nSea otters hold hands while they sleep so they do not drift apart.\n");
  await page.setInputFiles("#file", file);
  await page.click("#upload");
  await page.waitForFunction(() => /Indexed otters\.md/.test(document.getElementById("upload-status").textContent),
                             null, { timeout: 60000 });
  await page.waitForFunction((n) => document.querySelectorAll("#documents li").length === n + 1, before);
  check(await page.locator("#documents li", { hasText: "Otters" }).count() === 1, "the upload is listed by its title");

  check(errors.length === 0, "no errors in the page: " + errors.join("; "));

  // A bad upload says why, and nothing is lost.
  const bad = join(dir, "scan.pdf");
  writeFileSync(bad, "not a pdf");
  await page.setInputFiles("#file", bad);
  await page.click("#upload");
  await page.waitForFunction(() => document.getElementById("upload-status").className === "error");
  check((await page.textContent("#upload-status")).includes("not a valid PDF"), "a bad upload is refused with the reason");
  check(await page.locator("#documents li").count() === before + 1, "the list is unchanged");

  // A conversation: the follow-up is asked with the turn before it, which
  // moves into the thread above with its own sources.
  await page.click("#new-chat");
  check(await page.locator("#thread .turn").count() === 0, "a new conversation starts empty");
  const askAndWait = async (q) => {
    await page.fill("#question", q);
    await page.click("#ask");
    await page.waitForFunction(() => !document.getElementById("ask").disabled &&
      document.querySelectorAll("#sources li").length > 0, null, { timeout: 120000 });
  };
  await askAndWait("What colour is the Eurasian magpie's tail?");
  await askAndWait("What does it sound like?");
  check(await page.locator("#thread .turn").count() === 1, "the first turn is in the thread");
  check((await page.textContent("#thread .turn .q")).includes("Eurasian magpie"), "the thread shows the first question");
  check((await page.textContent("#current-q")) === "What does it sound like?", "the follow-up is the current question");
  const firstSource = await page.textContent("#sources li >> nth=0");
  check(firstSource.includes("species-notes.html"), `the follow-up found the magpie's notes first: ${firstSource}`);
  const threadSource = page.locator("#thread li", { hasText: "species-notes.html" }).first();
  check(await threadSource.count() === 1, "the first turn keeps its sources in the thread");
  await threadSource.click();
  check((await page.textContent("#passage")).includes("species-notes.html"), "a source in the thread opens its passage");
  const font = await page.evaluate(() => getComputedStyle(document.body).fontFamily);
  check(font.includes("Noto Sans CJK SC") && font.includes("PingFang SC"), "the font stack covers CJK");

  await page.screenshot({ path: shot, fullPage: true });
  const scriptErrors = errors.filter((e) => !e.includes("422"));
  check(scriptErrors.length === 0, "nothing but the refused upload went wrong: " + scriptErrors.join("; "));
} finally {
  await browser.close();
}

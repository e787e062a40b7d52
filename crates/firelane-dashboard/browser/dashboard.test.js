// Browser tests of the Firelane dashboard: playwright-core driving Debian's chromium headless
// against the `browser_fixture` example (a server and the dashboard mounted under /admin/jobs,
// and a read-only copy under /readonly/jobs, on a fresh SQLite file seeded with one job in every
// interesting state: see the table at the top of examples/browser_fixture.rs).
//
// Builds nothing: run `.ci/browser-tests.sh`, or build the fixture and run
//   node --test --test-concurrency=1 dashboard.test.js
// in this folder. Environment:
//   FIRELANE_BROWSER_FIXTURE    the fixture binary
//                               (default ${CARGO_TARGET_DIR:-<repo>/target}/debug/examples/browser_fixture)
//   CHROMIUM_PATH               the browser (default /usr/bin/chromium)
//   FIRELANE_BROWSER_ARTIFACTS  where screenshots go (default <repo>/target/browser-artifacts)
//
// The tests run in order and share one fixture: later ones see what earlier ones did (the failed
// job is requeued by the third test, for example).

'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('playwright-core');

const REPO = path.resolve(__dirname, '..', '..', '..');
const TARGET_DIR = path.resolve(REPO, process.env.CARGO_TARGET_DIR || 'target');
const FIXTURE =
  process.env.FIRELANE_BROWSER_FIXTURE || path.join(TARGET_DIR, 'debug', 'examples', 'browser_fixture');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ARTIFACTS =
  process.env.FIRELANE_BROWSER_ARTIFACTS || path.join(REPO, 'target', 'browser-artifacts');

const STATES = ['enqueued', 'scheduled', 'processing', 'succeeded', 'failed', 'deleted', 'awaiting'];
const NAV = ['overview', ...STATES, 'retries', 'recurring', 'servers', 'queues'];
const SCRIPT_ARG = '<script>alert(1)</script>';
const POLL_MS = 10_000;
const TEST_TIMEOUT = 90_000;

let fixture; // { child, base, origin, log() }
let browser;
let storeDir;

// ---------------------------------------------------------------------------------------------
// The fixture process

function startFixture() {
  return new Promise((resolve, reject) => {
    if (!fs.existsSync(FIXTURE)) {
      reject(
        new Error(
          `the fixture binary ${FIXTURE} does not exist: build it with ` +
            '`cargo build -p firelane-dashboard --example browser_fixture` ' +
            'or set FIRELANE_BROWSER_FIXTURE',
        ),
      );
      return;
    }
    storeDir = fs.mkdtempSync(path.join(os.tmpdir(), 'firelane-browser-'));
    const child = spawn(FIXTURE, ['0', path.join(storeDir, 'firelane.db')], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, RUST_BACKTRACE: '1' },
    });
    let out = '';
    let err = '';
    let settled = false;
    const log = () => `--- fixture stdout ---\n${out}--- fixture stderr ---\n${err.slice(-4000)}`;
    const timer = setTimeout(() => {
      if (!settled) {
        settled = true;
        reject(new Error(`the fixture printed no "listening on" line within 60 s\n${log()}`));
      }
    }, 60_000);
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (chunk) => {
      out += chunk;
      const m = /listening on (http:\/\/\S+)/.exec(out);
      if (m && !settled) {
        settled = true;
        clearTimeout(timer);
        const base = m[1].replace(/\/$/, '');
        resolve({ child, base, origin: new URL(base).origin, log });
      }
    });
    child.stderr.on('data', (chunk) => {
      err += chunk;
    });
    child.on('error', (e) => {
      if (!settled) {
        settled = true;
        clearTimeout(timer);
        reject(new Error(`cannot start the fixture ${FIXTURE}: ${e.message}`));
      }
    });
    child.on('exit', (code, signal) => {
      if (!settled) {
        settled = true;
        clearTimeout(timer);
        reject(new Error(`the fixture exited (code ${code}, signal ${signal}) before listening\n${log()}`));
      }
    });
  });
}

async function stopFixture() {
  if (!fixture) return;
  const { child } = fixture;
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  // Whether it exits within `ms`; the timer is unref'd so that it does not keep node running.
  const within = (ms) =>
    Promise.race([
      exited.then(() => true),
      new Promise((resolve) => setTimeout(resolve, ms, false).unref()),
    ]);
  child.stdin.end(); // the fixture stops when its standard input closes
  if (await within(10_000)) return;
  console.error('the fixture did not stop within 10 s of its standard input closing: SIGTERM');
  child.kill('SIGTERM');
  if (await within(5_000)) return;
  console.error('the fixture did not stop within 5 s of SIGTERM: SIGKILL');
  child.kill('SIGKILL');
  await within(5_000);
}

// Whatever happens, do not leave the fixture running.
process.on('exit', () => {
  if (fixture && fixture.child.exitCode === null && fixture.child.signalCode === null) {
    fixture.child.kill('SIGKILL');
  }
});

// ---------------------------------------------------------------------------------------------
// Helpers

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// A dashboard path ('/' is the overview, at the mount itself: /admin/jobs) as a full URL.
function url(p) {
  return p === '/' ? fixture.base : fixture.base + p;
}

function shot(page, name) {
  return page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });
}

// Opens a page in a fresh browser context and watches it: a JavaScript alert or prompt (the
// sign of an injected script), an uncaught page error, or a failed request for one of the
// dashboard's own URLs makes the test fail at its end. Confirmations are accepted and noted.
async function openPage(t, options = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, ...options });
  const page = await context.newPage();
  page.setDefaultTimeout(POLL_MS);
  const problems = [];
  page.on('dialog', async (dialog) => {
    if (dialog.type() === 'confirm' || dialog.type() === 'beforeunload') {
      t.diagnostic(`accepted a ${dialog.type()} dialog: ${JSON.stringify(dialog.message())}`);
      await dialog.accept().catch(() => {});
    } else {
      problems.push(`a ${dialog.type()} dialog fired on ${page.url()}: ${JSON.stringify(dialog.message())}`);
      await dialog.dismiss().catch(() => {});
    }
  });
  page.on('pageerror', (error) => {
    problems.push(`uncaught JavaScript error on ${page.url()}: ${error.message}`);
  });
  page.on('response', (response) => {
    const u = response.url();
    if (u.startsWith(fixture.origin) && response.status() >= 400) {
      problems.push(`${response.request().method()} ${u} answered ${response.status()}`);
    }
  });
  page.on('requestfailed', (request) => {
    const u = request.url();
    const failure = request.failure();
    const why = failure ? failure.errorText : 'failed';
    // Event streams and polls cut short by a navigation are not failures.
    if (u.startsWith(fixture.origin) && !/ERR_ABORTED/.test(why)) {
      problems.push(`${request.method()} ${u} failed: ${why}`);
    }
  });
  t.after(() => context.close().catch(() => {}));
  page.checkProblems = () => {
    assert.deepEqual(problems, [], `the browser saw problems:\n  ${problems.join('\n  ')}`);
  };
  return page;
}

// Runs a test body with a page; on failure, saves a screenshot and says where the page was.
function browserTest(name, body, options = {}) {
  test(name, { timeout: TEST_TIMEOUT }, async (t) => {
    const page = await openPage(t, options.context);
    try {
      await body(page, t);
      page.checkProblems();
    } catch (error) {
      const file = `failure-${name.replace(/[^a-z0-9]+/gi, '-').replace(/^-|-$/g, '').toLowerCase()}`;
      let where = `(page at ${page.url()}`;
      try {
        await shot(page, file);
        where += `, screenshot ${path.join(ARTIFACTS, file + '.png')}`;
      } catch {
        // the page may be gone
      }
      where += ')';
      error.message = `${error.message}\n${where}`;
      throw error;
    }
  });
}

async function visit(page, p) {
  let response;
  try {
    response = await page.goto(url(p), { waitUntil: 'load' });
  } catch (error) {
    assert.fail(`GET ${url(p)} did not load: ${error.message.split('\n')[0]}`);
  }
  assert.ok(response, `no response for ${url(p)}`);
  if (response.status() !== 200) {
    const body = (await response.text().catch(() => '')).slice(0, 500);
    assert.fail(`GET ${url(p)} answered ${response.status()}, expected 200: ${body}`);
  }
  return response;
}

function byTestId(scope, id) {
  return scope.locator(`[data-testid="${id}"]`);
}

async function text(locator) {
  return ((await locator.textContent()) || '').replace(/\s+/g, ' ').trim();
}

// The first whole number in an element's text ("1,234" reads as 1234).
async function countIn(locator) {
  const t = await text(locator);
  const m = /\d[\d,\u00a0\u202f ]*/.exec(t);
  assert.ok(m, `expected a number in ${JSON.stringify(t)}`);
  return Number(m[0].replace(/[^\d]/g, ''));
}

async function jobIdsOn(page) {
  return byTestId(page, 'job-row').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-job-id')));
}

// Clicks an action button (a POST form) and waits for the flash message it leads to.
async function act(page, button, what) {
  assert.equal(await button.count(), 1, `expected one ${what} button, found ${await button.count()}`);
  await button.click();
  const flash = byTestId(page, 'flash').first();
  await flash.waitFor({ state: 'visible' }).catch(() => {
    assert.fail(`no flash message appeared after ${what}`);
  });
  return text(flash);
}

// Re-opens `p` until `check(page)` returns a truthy value, for up to POLL_MS.
async function pollPage(page, p, check, what) {
  const deadline = Date.now() + POLL_MS;
  let last;
  for (;;) {
    await visit(page, p);
    last = await check(page);
    if (last && last.ok) return last;
    if (Date.now() > deadline) {
      assert.fail(`${what}: still not so after ${POLL_MS / 1000} s (last seen: ${JSON.stringify(last && last.seen)})`);
    }
    await sleep(250);
  }
}

async function jobState(page) {
  const state = byTestId(page, 'job-state');
  assert.equal(await state.count(), 1, 'the job page has no single data-testid="job-state"');
  return (await text(state)).toLowerCase();
}

// Elements sticking out to the right of the viewport, for overflow messages.
async function overflow(page) {
  return page.evaluate(() => {
    const width = document.documentElement.clientWidth;
    const scroll = Math.max(document.documentElement.scrollWidth, document.body.scrollWidth);
    const culprits = [];
    if (scroll > width) {
      for (const el of document.body.querySelectorAll('*')) {
        const r = el.getBoundingClientRect();
        if (r.right > width + 1 && r.width > 0) {
          const id = el.getAttribute('data-testid');
          const cls = el.className && typeof el.className === 'string' ? '.' + el.className.trim().split(/\s+/).join('.') : '';
          culprits.push(`${el.tagName.toLowerCase()}${id ? `[data-testid=${id}]` : ''}${cls} (right edge ${Math.round(r.right)})`);
          if (culprits.length >= 8) break;
        }
      }
    }
    return { width, scroll, culprits };
  });
}

// The relative luminance (0 black .. 1 white) of the colour behind the page.
async function backgroundLuminance(page) {
  return page.evaluate(() => {
    const parse = (c) => {
      const m = /rgba?\(([^)]+)\)/.exec(c);
      if (!m) return null;
      const parts = m[1].split(/[ ,/]+/).filter(Boolean).map(Number);
      if (parts.length === 4 && parts[3] === 0) return null; // transparent
      return parts.slice(0, 3);
    };
    let rgb = parse(getComputedStyle(document.body).backgroundColor);
    if (!rgb) rgb = parse(getComputedStyle(document.documentElement).backgroundColor);
    if (!rgb) rgb = [255, 255, 255]; // nothing painted: the browser's white canvas
    const [r, g, b] = rgb.map((v) => {
      const s = v / 255;
      return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
    });
    return { luminance: 0.2126 * r + 0.7152 * g + 0.0722 * b, rgb };
  });
}

// ---------------------------------------------------------------------------------------------
// Set-up

before(async () => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  for (const old of fs.readdirSync(ARTIFACTS)) {
    if (old.endsWith('.png') || old === 'fixture.log') fs.rmSync(path.join(ARTIFACTS, old));
  }
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} does not exist: install Debian's chromium (apt-get install chromium) or set CHROMIUM_PATH`);
  }
  fixture = await startFixture();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // The machine's network is closed: keep chromium from calling home.
    args: [
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  await stopFixture();
  if (fixture) {
    fs.writeFileSync(path.join(ARTIFACTS, 'fixture.log'), fixture.log());
  }
  if (storeDir) fs.rmSync(storeDir, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------
// Scenarios, in order

browserTest('overview shows the counts, the navigation, the graphs and the access note', async (page) => {
  await visit(page, '/');
  const expected = { failed: 1, processing: 1, enqueued: 3, awaiting: 1, deleted: 1 };
  for (const state of STATES) {
    const count = byTestId(page, `state-count-${state}`);
    assert.equal(await count.count(), 1, `expected one data-testid="state-count-${state}" on the overview`);
    await count.waitFor({ state: 'visible' });
    const n = await countIn(count);
    if (state in expected) {
      assert.equal(n, expected[state], `the overview counts ${n} ${state} jobs, the fixture has ${expected[state]}`);
    }
  }
  assert.ok((await countIn(byTestId(page, 'state-count-succeeded'))) >= 6, 'the fixture has at least 6 succeeded jobs');
  // The delayed job and the retry waiting out its back-off.
  assert.ok((await countIn(byTestId(page, 'state-count-scheduled'))) >= 2, 'the fixture has 2 scheduled jobs');

  for (const nav of NAV) {
    const link = byTestId(page, `nav-${nav}`);
    assert.ok((await link.count()) >= 1, `the overview has no data-testid="nav-${nav}"`);
  }

  const live = byTestId(page, 'live-graph');
  assert.equal(await live.count(), 1, 'the overview has no data-testid="live-graph"');
  await live
    .locator('canvas')
    .first()
    .waitFor({ state: 'attached' })
    .catch(() => assert.fail('the live graph drew no <canvas> within 10 s'));
  assert.equal(await byTestId(page, 'history-graph').count(), 1, 'the overview has no data-testid="history-graph"');
  await byTestId(page, 'history-graph')
    .locator('canvas')
    .first()
    .waitFor({ state: 'attached' })
    .catch(() => assert.fail('the history graph drew no <canvas> within 10 s'));

  // No authorize hook: only the local machine is served, and the page says so.
  const note = byTestId(page, 'access-note');
  assert.equal(await note.count(), 1, 'the overview has no data-testid="access-note" (no authorize hook is given)');
  assert.ok((await text(note)).length > 0, 'the access note is empty');

  await sleep(1500); // let the live graph receive a few points for the screenshot
  const liveError = await live.getAttribute('data-error');
  assert.equal(liveError, null, `the live graph could not read its data: ${liveError}`);
  await shot(page, 'overview');
});

browserTest('every navigation link works under the /admin/jobs prefix', async (page) => {
  for (const nav of NAV) {
    await visit(page, '/');
    const link = byTestId(page, `nav-${nav}`).first();
    const href = await link.getAttribute('href');
    assert.ok(href, `nav-${nav} has no href`);
    const target = new URL(href, page.url());
    assert.ok(
      target.pathname.startsWith('/admin/jobs'),
      `nav-${nav} points at ${target.pathname}, outside the mount /admin/jobs`,
    );
    const [response] = await Promise.all([page.waitForNavigation(), link.click()]);
    assert.ok(response, `following nav-${nav} loaded nothing`);
    assert.equal(response.status(), 200, `following nav-${nav} to ${page.url()} answered ${response.status()}`);
  }
});

// The names of the jobs listed on a page, sorted.
async function namesOn(page) {
  const rows = byTestId(page, 'job-row');
  const names = [];
  for (let i = 0; i < (await rows.count()); i++) {
    const t = await text(rows.nth(i));
    const m = /\b(monthly_report|echo|sync_crm|long_export|send_newsletter|cleanup)\b/.exec(t);
    names.push(m ? m[1] : `?${t}`);
  }
  return names.sort();
}

browserTest('the lists by state show the seeded jobs, with queue and name filters', async (page) => {
  const cases = [
    ['/jobs/enqueued?queue=emails', ['send_newsletter', 'send_newsletter', 'send_newsletter']],
    ['/jobs/enqueued?queue=default', []],
    ['/jobs/scheduled', ['echo', 'sync_crm']],
    ['/jobs/retries', ['sync_crm']],
    ['/jobs/processing', ['long_export']],
    ['/jobs/awaiting', ['echo']],
    ['/jobs/deleted', ['echo']],
    ['/jobs/failed', ['monthly_report']],
    ['/jobs/succeeded?name=echo', ['echo', 'echo', 'echo', 'echo', 'echo', 'echo']],
  ];
  for (const [p, expected] of cases) {
    await visit(page, p);
    assert.deepEqual(await namesOn(page), expected, `the jobs listed on ${p}`);
  }
});

let failedJobId;

browserTest('a failed job: from the failed list to its page, its error shown as text', async (page) => {
  await visit(page, '/jobs/failed');
  const rows = byTestId(page, 'job-row');
  assert.equal(await rows.count(), 1, `the failed list shows ${await rows.count()} jobs, the fixture has 1`);
  const row = rows.first();
  assert.match(await text(row), /monthly_report/, 'the failed row does not name its job monthly_report');
  failedJobId = await row.getAttribute('data-job-id');
  assert.ok(failedJobId, 'the failed job row has no data-job-id');
  await shot(page, 'failed-list');

  const link = byTestId(row, 'job-link').first();
  assert.equal(await byTestId(row, 'job-link').count(), 1, 'the failed job row has no data-testid="job-link"');
  await Promise.all([page.waitForNavigation(), link.click()]);
  assert.ok(
    page.url().startsWith(url(`/job/${failedJobId}`)),
    `the job link led to ${page.url()}, expected ${url(`/job/${failedJobId}`)}`,
  );
  assert.equal(await jobState(page), 'failed');
  assert.match(await text(byTestId(page, 'job-args')), /2026-10/, 'job-args does not show the argument "2026-10"');
  assert.ok((await byTestId(page, 'history-row').count()) >= 3, 'expected at least 3 history rows (enqueued, processing, failed)');

  // The error holds HTML: it must be shown as text, not become an element.
  const body = await page.locator('body').innerText();
  assert.ok(
    body.includes('<img src=x onerror=alert(2)>'),
    'the error text "report generator crashed ...: <img src=x onerror=alert(2)>" is not shown as text',
  );
  assert.equal(await page.locator('img[src="x"]').count(), 0, 'the error text became an <img> element');
  assert.ok((await byTestId(page, 'action-requeue').count()) >= 1, 'the failed job page has no action-requeue');
  await shot(page, 'job');
});

browserTest('requeue the failed job and see it succeed', async (page) => {
  assert.ok(failedJobId, 'the previous test found no failed job');
  await visit(page, `/job/${failedJobId}`);
  const message = await act(page, byTestId(page, 'action-requeue'), 'requeue');
  assert.ok(message.length > 0, 'the flash message after requeue is empty');
  await pollPage(
    page,
    `/job/${failedJobId}`,
    async (p) => {
      const state = await jobState(p);
      return { ok: state === 'succeeded', seen: state };
    },
    'the requeued job succeeded',
  );
  const history = await byTestId(page, 'history-row').count();
  assert.ok(history >= 5, `the requeued job shows ${history} history rows, expected its first run and its second`);
  await visit(page, '/jobs/failed');
  assert.equal(await byTestId(page, 'job-row').count(), 0, 'the failed list still shows a job after the requeue');
});

browserTest('trigger the recurring job and see its new job succeed', async (page) => {
  await visit(page, '/jobs/succeeded?name=cleanup');
  const known = new Set(await jobIdsOn(page));

  await visit(page, '/recurring');
  const row = page.locator('[data-testid="recurring-row"][data-recurring-id="nightly-cleanup"]');
  assert.equal(await row.count(), 1, 'the recurring page has no recurring-row with data-recurring-id="nightly-cleanup"');
  assert.match(await text(row), /0 \* \* \* \*/, 'the nightly-cleanup row does not show its cron "0 * * * *"');

  await act(page, byTestId(row, 'action-trigger'), 'trigger of nightly-cleanup');
  const found = await pollPage(
    page,
    '/jobs/succeeded?name=cleanup',
    async (p) => {
      const ids = await jobIdsOn(p);
      const fresh = ids.filter((id) => !known.has(id));
      return { ok: fresh.length > 0, seen: ids, fresh };
    },
    'a new cleanup job is listed as succeeded',
  );
  const id = found.fresh[0];
  const row2 = page.locator(`[data-testid="job-row"][data-job-id="${id}"]`);
  assert.match(await text(row2), /cleanup/, `the new job ${id} is not a cleanup job`);
  await visit(page, `/job/${id}`);
  assert.equal(await jobState(page), 'succeeded');
  await visit(page, '/recurring');
  await shot(page, 'recurring');
});

browserTest('pause and resume the recurring job', async (page) => {
  const row = () => page.locator('[data-testid="recurring-row"][data-recurring-id="nightly-cleanup"]');
  await visit(page, '/recurring');
  assert.equal(await byTestId(row(), 'action-resume-recurring').count(), 0, 'a running recurring job offers resume');
  await act(page, byTestId(row(), 'action-pause-recurring'), 'pause of nightly-cleanup');
  await visit(page, '/recurring');
  assert.equal(await byTestId(row(), 'action-pause-recurring').count(), 0, 'a paused recurring job still offers pause');
  assert.match(await text(row()), /paused/i, 'the paused recurring job is not shown as paused');
  await act(page, byTestId(row(), 'action-resume-recurring'), 'resume of nightly-cleanup');
  await visit(page, '/recurring');
  assert.equal(await byTestId(row(), 'action-resume-recurring').count(), 0, 'a resumed recurring job still offers resume');
  assert.equal(await byTestId(row(), 'action-pause-recurring').count(), 1, 'a resumed recurring job offers no pause');
});

browserTest('pause and resume the emails queue', async (page) => {
  const row = () => page.locator('[data-testid="queue-row"][data-queue="emails"]');
  const paused = async () => (await text(byTestId(row(), 'queue-paused'))).toLowerCase();

  await visit(page, '/queues');
  assert.equal(await row().count(), 1, 'the queues page has no queue-row with data-queue="emails"');
  assert.match(await text(row()), /\b3\b/, 'the emails queue row does not show its 3 enqueued jobs');
  assert.equal(await paused(), 'no', 'the emails queue starts unpaused');

  await act(page, byTestId(row(), 'action-pause-queue'), 'pause of the emails queue');
  await visit(page, '/queues');
  assert.equal(await paused(), 'yes', 'the emails queue is not shown paused after pausing it');
  assert.equal(await byTestId(row(), 'action-resume-queue').count(), 1, 'a paused queue offers no action-resume-queue');
  await shot(page, 'queues');

  await act(page, byTestId(row(), 'action-resume-queue'), 'resume of the emails queue');
  await visit(page, '/queues');
  assert.equal(await paused(), 'no', 'the emails queue is still shown paused after resuming it');
});

browserTest('delete one job of the emails queue', async (page) => {
  await visit(page, '/jobs/enqueued?queue=emails');
  const before = await jobIdsOn(page);
  assert.equal(before.length, 3, `the emails queue lists ${before.length} jobs, expected 3`);
  const id = before[0];
  await visit(page, `/job/${id}`);
  await act(page, byTestId(page, 'action-delete'), 'delete');
  await visit(page, `/job/${id}`);
  assert.equal(await jobState(page), 'deleted');
  await visit(page, '/jobs/enqueued?queue=emails');
  assert.deepEqual((await jobIdsOn(page)).sort(), before.slice(1).sort(), 'the emails queue after the delete');
});

browserTest('search by an argument text finds the job', async (page) => {
  await visit(page, '/');
  const input = byTestId(page, 'search-input');
  assert.equal(await input.count(), 1, 'the overview has no data-testid="search-input"');
  await input.fill('invoice-4711');
  await Promise.all([page.waitForNavigation(), byTestId(page, 'search-submit').click()]);
  assert.ok(
    new URL(page.url()).pathname === '/admin/jobs/search',
    `the search form led to ${page.url()}, expected /admin/jobs/search`,
  );
  const rows = byTestId(page, 'job-row');
  assert.equal(await rows.count(), 1, `searching "invoice-4711" lists ${await rows.count()} jobs, expected 1`);
  await Promise.all([page.waitForNavigation(), byTestId(rows.first(), 'job-link').first().click()]);
  assert.match(await text(byTestId(page, 'job-args')), /invoice-4711 for ACME/);
  assert.equal(await jobState(page), 'succeeded');
});

browserTest('an argument holding <script> is shown as text and runs nothing', async (page) => {
  // The query is echoed back on the search page too: one more place that must escape.
  await visit(page, `/search?q=${encodeURIComponent(SCRIPT_ARG)}`);
  const rows = byTestId(page, 'job-row');
  assert.equal(await rows.count(), 1, `searching ${SCRIPT_ARG} lists ${await rows.count()} jobs, expected 1`);
  const id = await rows.first().getAttribute('data-job-id');
  await visit(page, `/job/${id}`);
  const args = byTestId(page, 'job-args');
  assert.ok((await text(args)).includes(SCRIPT_ARG), `job-args does not show ${SCRIPT_ARG} as text`);
  assert.equal(await args.locator('script').count(), 0, 'the argument became a <script> element');
  await visit(page, '/jobs/succeeded');
  await sleep(500); // give anything injected time to fire
  // page.checkProblems() (after this body) fails the test if any alert fired.
});

browserTest('bulk: enqueue the scheduled job now; its continuation follows', async (page) => {
  await visit(page, '/jobs/awaiting');
  const [continuation] = await jobIdsOn(page);
  assert.ok(continuation, 'no awaiting job listed');

  await visit(page, '/jobs/scheduled');
  const row = byTestId(page, 'job-row').filter({ hasText: 'in an hour' });
  assert.equal(await row.count(), 1, 'the scheduled list has no row for the "in an hour" job');
  const id = await row.getAttribute('data-job-id');
  const box = byTestId(row, 'select-job');
  assert.equal(await box.count(), 1, 'the scheduled job row has no select-job checkbox');
  await box.check();
  // The list refreshes itself every few seconds: a selection must survive that.
  await sleep(5000);
  assert.ok(await byTestId(page, 'job-row').filter({ hasText: 'in an hour' }).getByTestId('select-job').isChecked(),
    'the selection was lost while waiting on the list page');
  await act(page, byTestId(page, 'bulk-enqueue'), 'bulk enqueue');
  for (const [job, what] of [[id, 'the enqueued scheduled job'], [continuation, 'its continuation']]) {
    await pollPage(
      page,
      `/job/${job}`,
      async (p) => {
        const state = await jobState(p);
        return { ok: state === 'succeeded', seen: state };
      },
      `${what} succeeded`,
    );
  }
  await visit(page, '/jobs/scheduled');
  assert.deepEqual(await namesOn(page), ['sync_crm'], 'the scheduled list after the bulk enqueue');
});

browserTest('cancel the processing job', async (page) => {
  await visit(page, '/jobs/processing');
  const rows = byTestId(page, 'job-row');
  assert.equal(await rows.count(), 1, `the processing list shows ${await rows.count()} jobs, the fixture has 1`);
  assert.match(await text(rows.first()), /long_export/);
  const id = await rows.first().getAttribute('data-job-id');
  await visit(page, `/job/${id}`);
  assert.equal(await jobState(page), 'processing');
  await act(page, byTestId(page, 'action-cancel'), 'cancel');
  await pollPage(
    page,
    `/job/${id}`,
    async (p) => {
      const state = await jobState(p);
      return { ok: state === 'deleted', seen: state };
    },
    'the cancelled job is deleted',
  );
});

browserTest('the servers page lists the fixture server', async (page) => {
  await visit(page, '/servers');
  const body = await page.locator('main, body').first().innerText();
  assert.match(body, /default/, 'the servers page does not show the queue "default" the server serves');
  await shot(page, 'servers');
});

browserTest('the JSON API answers under the prefix', async (page) => {
  assert.ok(failedJobId, 'an earlier test found no failed job');
  for (const p of [
    '/api/stats',
    '/api/history?range=24h',
    '/api/history?range=7d',
    '/api/jobs?state=succeeded',
    `/api/job/${failedJobId}`,
    '/api/recurring',
    '/api/servers',
    '/api/queues',
  ]) {
    const response = await page.request.get(url(p));
    assert.equal(response.status(), 200, `GET ${url(p)} answered ${response.status()}`);
    const type = response.headers()['content-type'] || '';
    assert.match(type, /application\/json/, `GET ${url(p)} is ${type}, not JSON`);
    await response.json().catch((e) => assert.fail(`GET ${url(p)} is not valid JSON: ${e.message}`));
  }
});

browserTest('the read-only dashboard offers no action', async (page) => {
  assert.ok(failedJobId, 'an earlier test found no failed job');
  const ro = (p) => fixture.origin + '/readonly/jobs' + p;
  const check = async (p, ids) => {
    const response = await page.goto(ro(p)).catch((e) => assert.fail(`GET ${ro(p)} did not load: ${e.message}`));
    assert.equal(response.status(), 200, `GET ${ro(p)} answered ${response.status()}`);
    for (const id of ids) {
      assert.equal(await byTestId(page, id).count(), 0, `the read-only ${p} page shows ${id}`);
    }
  };
  await check(`/job/${failedJobId}`, ['action-requeue', 'action-delete', 'action-cancel']);
  await check('/jobs/enqueued', ['select-job', 'bulk-requeue', 'bulk-delete', 'bulk-enqueue']);
  await check('/recurring', ['action-trigger', 'action-pause-recurring', 'action-resume-recurring']);
  await check('/queues', ['action-pause-queue', 'action-resume-queue']);
});

browserTest(
  'phone width: the overview does not overflow sideways',
  async (page, t) => {
    await visit(page, '/');
    await byTestId(page, 'state-count-failed').waitFor({ state: 'visible' });
    const o = await overflow(page);
    assert.ok(
      o.width <= 375,
      `at a 375 px phone the overview lays out ${o.width} px wide: it needs <meta name="viewport" content="width=device-width, initial-scale=1">`,
    );
    assert.ok(
      o.scroll <= o.width,
      `at 375 px the overview is ${o.scroll} px wide; sticking out: ${o.culprits.join(', ')}`,
    );
    await shot(page, 'phone-overview');
    // The other main pages: reported, not failed.
    for (const p of ['/jobs/succeeded', '/recurring', '/queues', '/servers']) {
      await visit(page, p);
      const other = await overflow(page);
      if (other.scroll > other.width) {
        t.diagnostic(`at 375 px ${p} is ${other.scroll} px wide; sticking out: ${other.culprits.join(', ')}`);
      }
    }
  },
  { context: { viewport: { width: 375, height: 812 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 } },
);

browserTest('dark colour scheme renders the overview dark', async (page) => {
  await page.emulateMedia({ colorScheme: 'light' });
  await visit(page, '/');
  const light = await backgroundLuminance(page);
  await page.emulateMedia({ colorScheme: 'dark' });
  await visit(page, '/');
  await byTestId(page, 'state-count-failed').waitFor({ state: 'visible' });
  const dark = await backgroundLuminance(page);
  assert.ok(
    dark.luminance < 0.2,
    `with a dark colour scheme the page background is rgb(${dark.rgb}) (luminance ${dark.luminance.toFixed(2)}), not dark`,
  );
  assert.ok(
    light.luminance > dark.luminance,
    `the light scheme's background rgb(${light.rgb}) is not lighter than the dark one's rgb(${dark.rgb})`,
  );
  await sleep(1000);
  await shot(page, 'dark-overview');
});

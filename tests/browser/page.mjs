// The operator page in a real browser (Debian's Chromium, headless, driven by playwright-core):
// sign in with an approver's token, watch an agent go triaging → escalating-human live as an
// alert arrives, approve the plan from the page, see it run and the agent return to idle; an
// approve without a session is refused. Run by tests/e2e/browser.rs against a live
// `themis serve`; THEMIS_SCREENSHOTS=DIR saves the main views there.
import { chromium } from 'playwright-core';

const url = process.env.THEMIS_URL;
const approver = process.env.THEMIS_TOKEN;
const intake = process.env.THEMIS_INTAKE_TOKEN;
const shots = process.env.THEMIS_SCREENSHOTS;
const step = (what) => console.log(`browser: ${what}`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  page.setDefaultTimeout(30000);
  await page.goto(`${url}/`);
  await page.getByLabel('Token').fill(approver);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('td[data-agent="kafka"]', { hasText: 'idle' }).waitFor();
  step('signed in; kafka is idle');

  const alert = {
    version: '4', groupKey: '{}:{alertname="KafkaConsumerLag"}', truncatedAlerts: 0,
    status: 'firing', receiver: 'themis', groupLabels: {}, commonLabels: {},
    commonAnnotations: {}, externalURL: 'http://alertmanager',
    alerts: [{
      status: 'firing',
      labels: { alertname: 'KafkaConsumerLag', topic: 'orders', group: 'orders-consumer', severity: 'critical' },
      annotations: { summary: 'consumer lag above 1h on orders' },
      startsAt: '2026-11-30T10:00:00.000Z', endsAt: '0001-01-01T00:00:00Z',
      generatorURL: 'http://prometheus/graph', fingerprint: 'fp-browser',
    }],
  };
  const sent = await fetch(`${url}/api/v1/alerts/alertmanager`, {
    method: 'POST',
    headers: { authorization: `Bearer ${intake}`, 'content-type': 'application/json' },
    body: JSON.stringify(alert),
  });
  if (sent.status !== 200) throw new Error(`the alert was not taken: ${sent.status}`);

  // Live, without a reload: the transitions arrive over the event stream.
  await page.waitForFunction(() => [...document.querySelectorAll('#live li')]
    .some((li) => li.textContent.includes('kafka: idle → triaging')));
  await page.waitForFunction(() => [...document.querySelectorAll('#live li')]
    .some((li) => li.textContent.includes('→ escalating-human')));
  step('saw kafka go triaging → escalating-human live');

  const approve = page.getByRole('button', { name: 'Approve exactly this plan' });
  await approve.waitFor();
  if (shots) await page.screenshot({ path: `${shots}/operator-page.png`, fullPage: true });
  const action = await page.locator('form[action$="/approve"]').getAttribute('action');

  // Without a session the same answer is refused.
  const anonymous = await browser.newContext();
  const refused = await anonymous.request.post(`${url}${action}`, {
    form: { plan_digest: 'sha256:0', form_token: '0'.repeat(64) },
  });
  if (refused.status() !== 401) throw new Error(`an approve without a session got ${refused.status()}`);
  await anonymous.close();
  step('an approve without a session is refused (401)');

  await approve.click();
  await page.waitForURL(/\/incidents\/inc-/);
  await page.getByText('approved by oncall').first().waitFor();
  await page.getByText('run adjust-broker-gc').first().waitFor();
  if (shots) await page.screenshot({ path: `${shots}/operator-incident.jpg`, type: 'jpeg', quality: 70 });
  step('approved from the page; the plan ran');

  await page.goto(`${url}/`);
  await page.locator('td[data-agent="kafka"]', { hasText: 'idle' }).waitFor();
  const waiting = await page.getByRole('heading', { name: /Waiting for a human/ }).textContent();
  if (!waiting.includes('(0)')) throw new Error(`still waiting: ${waiting}`);
  step('kafka is idle again and nothing waits');

  // A phone's width: everything still reachable.
  await page.setViewportSize({ width: 390, height: 844 });
  if (shots) await page.screenshot({ path: `${shots}/operator-phone.png`, fullPage: true });
  // Keyboard: the sign-out button is reachable by Tab.
  let reached = false;
  for (let i = 0; i < 40 && !reached; i += 1) {
    await page.keyboard.press('Tab');
    reached = await page.evaluate(() => document.activeElement?.textContent === 'Sign out');
  }
  if (!reached) throw new Error('Sign out is not reachable with the keyboard');
  step('usable at a phone width and by keyboard');
} finally {
  await browser.close();
}

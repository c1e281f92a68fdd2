// Takes the README's screenshot (docs/screenshot.png) of a running Tasklane:
//   TASKLANE_BASE_URL=http://127.0.0.1:5000 node e2e/screenshot.mjs docs/screenshot.png
import { chromium } from 'playwright-core';

const base = process.env.TASKLANE_BASE_URL;
const out = process.argv[2] ?? 'docs/screenshot.png';
if (!base) {
  console.error('set TASKLANE_BASE_URL');
  process.exit(2);
}
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync'],
});
const page = await browser.newPage({ viewport: { width: 760, height: 900 }, deviceScaleFactor: 1 });
await page.goto(base);
await page.getByTestId('task-item').first().waitFor();
await page.screenshot({ path: out, fullPage: true });
await browser.close();
console.log(`wrote ${out}`);

// Runs the Mercure project's own conformance suite (dunglas/mercure, conformance-tests/, not
// in this repository) unchanged against Sluice, in Debian's Chromium. The suite's own
// configuration also asks for Firefox and WebKit and for browsers Playwright downloads,
// which this machine does not have; everything else is as the suite sets it.
import { defineConfig, devices } from '@playwright/test';

export default defineConfig({
  testDir: process.env.MERCURE_CONFORMANCE_DIR,
  timeout: 10_000,
  expect: { timeout: 5_000 },
  retries: 0,
  workers: 1,
  reporter: [['list']],
  use: {
    baseURL: process.env.BASE_URL,
    ignoreHTTPSErrors: true,
  },
  projects: [
    {
      name: 'chromium',
      use: {
        ...devices['Desktop Chrome'],
        launchOptions: {
          executablePath: process.env.CHROMIUM_BIN ?? '/usr/bin/chromium',
          args: ['--no-sandbox'],
        },
      },
    },
  ],
});

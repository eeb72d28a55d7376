import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/global-setup.ts'],
    testTimeout: 120_000,
    hookTimeout: 300_000,
    // The boot and registry tests are heavy; two cores, so keep files to two at a time.
    maxWorkers: 2,
  },
});

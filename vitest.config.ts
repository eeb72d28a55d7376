import { defineConfig } from 'vitest/config';

// Two projects: `unit` runs without the global setup (no apt, no kernels, no QEMU; a unit file that uses an
// oracle such as GNU cpio installs just that tool itself), `e2e` with it. `npm run test:unit` runs the first.
export default defineConfig({
  test: {
    testTimeout: 120_000,
    hookTimeout: 300_000,
    // The boot and registry tests are heavy; two cores, so keep files to two at a time.
    maxWorkers: 2,
    projects: [
      { extends: true, test: { name: 'unit', include: ['test/unit/**/*.test.ts'] } },
      { extends: true, test: { name: 'e2e', include: ['test/e2e/**/*.test.ts'], globalSetup: ['test/global-setup.ts'] } },
    ],
  },
});

import { defineConfig } from 'vitest/config';

// One file at a time: each starts its own servers, and the machine may have two cores.
export default defineConfig({
  test: {
    include: ['*.test.mjs'],
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
});

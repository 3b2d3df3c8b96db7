import { resolve } from 'node:path';
import { defineConfig } from 'vitest/config';

// Two pages, each its own entry: the chat at `/` and the hub console at `/console`. The
// server embeds dist/ in the binary; hashed assets under /assets/ are cached for good.
export default defineConfig({
  base: '/',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    assetsDir: 'assets',
    sourcemap: false,
    rollupOptions: {
      input: {
        index: resolve(import.meta.dirname, 'index.html'),
        console: resolve(import.meta.dirname, 'console.html'),
      },
    },
  },
  // `npm run dev`: the pages with hot reload, the API proxied to a running `sluice serve`.
  server: {
    proxy: Object.fromEntries(
      ['/v1', '/api', '/.well-known', '/metrics'].map((path) => [
        path,
        { target: process.env.SLUICE_URL ?? 'http://127.0.0.1:8080', changeOrigin: true },
      ]),
    ),
  },
  test: {
    include: ['src/**/*.test.ts'],
    environment: 'node',
  },
});

import { defineConfig } from 'vite';

// Relative asset paths, so dist/ can be served from any origin and path. swr (used by
// @ai-sdk/react) starts with a 'use client' directive, meaningless outside a server-components
// bundler: its warning is dropped.
export default defineConfig({
  base: './',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    rolldownOptions: {
      onwarn(warning, warn) {
        if (warning.code !== 'MODULE_LEVEL_DIRECTIVE') warn(warning);
      },
    },
  },
});

import { defineConfig } from "vite";

// Relative asset URLs: the server serves the console under a configurable path
// (`[console] path`) and writes a <base href> into index.html for it.
export default defineConfig({
  base: "./",
  oxc: { jsx: { runtime: "automatic", importSource: "preact" } },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    // Hashed names under assets/: the server caches them as immutable.
    assetsDir: "assets",
    // No inline modulepreload polyfill script: the CSP allows scripts from 'self' only.
    modulePreload: { polyfill: false },
    sourcemap: false,
    target: "es2022",
  },
});

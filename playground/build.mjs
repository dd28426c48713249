// Bundles src/ with esbuild into tidings/playground/static/ (playground.js, playground.css),
// minified and without sourcemaps. The output is committed, so `pip install tidings`
// needs no node; run ./build after changing src/ or package.json.
import { build } from 'esbuild';
import { readFileSync, writeFileSync, mkdirSync, rmSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const outdir = join(here, '..', 'tidings', 'playground', 'static');
rmSync(outdir, { recursive: true, force: true });
mkdirSync(outdir, { recursive: true });

await build({
  entryPoints: { playground: join(here, 'src', 'main.jsx') },
  outdir,
  bundle: true,
  minify: true,
  sourcemap: false,
  format: 'iife',
  target: ['es2020'],
  jsx: 'automatic',
  define: { 'process.env.NODE_ENV': '"production"' },
  legalComments: 'eof',
  logLevel: 'warning',
});

// GraphiQL's CSS inlines Roboto and Fira Code for seven scripts each; keep the faces for
// Latin (and any without a unicode-range): the others add ~250 KB for glyphs the page
// falls back to system fonts for.
const cssPath = join(outdir, 'playground.css');
const css = readFileSync(cssPath, 'utf8').replace(/@font-face\{[^}]*\}/g, (face) =>
  !face.includes('unicode-range') || face.includes('unicode-range:U+0000-00FF') ? face : '',
);
if (/url\((?!data:)/.test(css)) throw new Error('playground.css refers to a file or URL: inline it or drop it');
writeFileSync(cssPath, css);

for (const name of ['playground.js', 'playground.css']) {
  console.log(`${name}: ${(statSync(join(outdir, name)).size / 1024).toFixed(0)} KiB`);
}

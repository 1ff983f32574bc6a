// Bundles the anywidget front ends to ESM and copies their stylesheet.
//   node build-widgets.mjs [outdir]     (default: ../arrakis_jupyter/widgets/static)
// The output is committed; tests/test_widgets_frontend.py rebuilds into a temp dir and compares bytes.
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const src = join(here, "src", "widgets");
const outdir = resolve(process.argv[2] ?? join(here, "..", "arrakis_jupyter", "widgets", "static"));
const widgets = ["head_explorer", "residual_view", "logit_lens", "patching_view"];

mkdirSync(outdir, { recursive: true });
await build({
  entryPoints: widgets.map((name) => join(src, `${name}.ts`)),
  outdir,
  bundle: true,
  format: "esm",
  target: "es2020",
  minify: true,
  sourcemap: false,
  charset: "utf8",
  legalComments: "none",
  logLevel: "warning",
});
copyFileSync(join(src, "widgets.css"), join(outdir, "widgets.css"));
console.log(`built ${widgets.length} widgets and widgets.css into ${outdir}`);
